"""Adapters: the ports implemented over PostgreSQL, MongoDB, SQS, EventBridge, KMS and Redis."""
