"""MongoDB adapters, one module per collection: `messages` (MongoMessageStore), `conversations`
(MongoConversationStore), `deliveries` (MongoDeliveryStore: GROUP deliveries and their lanes), `events`
(MongoEventOutbox: events on their messages and deliveries, and the `outbox` collection);
`participations` (a user's conversations, one document per user and conversation), `status_history` (the
time-series copy of status moves); `connection` (connecting, errors, the durable write concern, every index, the
health check), `layout` (shard keys and time-series, as the server allows: prepare_databases) and `documents`
(how the domain is stored)."""

from chat4all.adapters.mongo.connection import (
    DEFAULT_DATABASE,
    DEFAULT_TIMEOUTS_MS,
    DURABLE,
    OLD_CHANNEL_INDEX,
    MongoCheck,
    connect,
    ensure_indexes,
)
from chat4all.adapters.mongo.conversations import MongoConversationStore
from chat4all.adapters.mongo.deliveries import MongoDeliveryStore
from chat4all.adapters.mongo.events import MongoEventOutbox
from chat4all.adapters.mongo.messages import MongoMessageStore

__all__ = [
    "DEFAULT_DATABASE",
    "DEFAULT_TIMEOUTS_MS",
    "DURABLE",
    "OLD_CHANNEL_INDEX",
    "MongoCheck",
    "MongoConversationStore",
    "MongoDeliveryStore",
    "MongoEventOutbox",
    "MongoMessageStore",
    "connect",
    "ensure_indexes",
]
