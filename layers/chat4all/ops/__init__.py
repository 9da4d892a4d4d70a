"""Operator tools: backup and restore of both databases (`backup`, `restore`), the cross-database consistency
check (`consistency`). Each is a CLI (`python -m chat4all.ops.<name>`); none runs in a request's path."""
