"""The MongoDB database: connecting, translating driver errors, the write concern re-runs rely on, the indexes
of every collection, and the health check."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from pymongo import ASCENDING, DESCENDING, IndexModel, MongoClient, WriteConcern
from pymongo.errors import DuplicateKeyError, PyMongoError

from chat4all.domain.errors import DependencyUnavailableError
from chat4all.ports import DependencyCheck

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from pymongo.collection import Collection
    from pymongo.database import Database

DEFAULT_DATABASE = "chat4all"
# A server that is down is found out within a second, so the API answers 503 then, not after a long wait.
# pymongo re-checks an unknown server at most every 500 ms (minHeartbeatFrequencyMS), so an operation fails
# up to ~0.5 s after its selection timeout (measured: docs/BENCHMARKS.md, "MongoDB (SecantusDB)"). A URI that
# sets its own timeouts keeps them (an Atlas URI over a slow link, say).
# A server that answers but stalls is given a few seconds.
DEFAULT_TIMEOUTS_MS = {"serverSelectionTimeoutMS": 300, "connectTimeoutMS": 1000, "socketTimeoutMS": 5000}
# Writes a re-run relies on (the message with its sequence, an attempt before its platform call, the receipt
# after it) are acknowledged only once they are in the journal of a majority.
DURABLE = WriteConcern(w="majority", j=True)
OLD_CHANNEL_INDEX = "participants.user_id_1_channel_id_1_last_activity_at_-1"
# the conversation lists' index before they read `participations` (docs/MONGODB.md, "Scale-ready layout")
OLD_PARTICIPANT_INDEX = "participants.user_id_1_last_activity_at_-1"
# the sweeper's: messages by status and age
PENDING_INDEX = "status_created_at"


def connect(uri: str) -> Database[dict[str, Any]]:
    given = uri.lower()
    timeouts: dict[str, Any] = {name: ms for name, ms in DEFAULT_TIMEOUTS_MS.items() if name.lower() not in given}
    client: MongoClient[dict[str, Any]] = MongoClient(uri, tz_aware=True, **timeouts)
    return client.get_default_database(default=DEFAULT_DATABASE)


@contextlib.contextmanager
def translated() -> Iterator[None]:
    try:
        yield
    except DuplicateKeyError:
        raise
    except PyMongoError as exc:
        raise DependencyUnavailableError("MongoDB is unavailable") from exc


def inserted(insert: Callable[[], object]) -> bool:
    """Whether `insert` wrote: False when a document with the same unique key was there (an insert done again)."""
    try:
        insert()
    except DuplicateKeyError:
        return False
    return True


def ensure_indexes(db: Database[dict[str, Any]], indexes: dict[str, list[IndexModel]] | None = None) -> None:
    """Create the collections' indexes; safe to run on every start, and after a restore: an index that exists with
    the same name, keys and options (in whatever order a restore wrote them) is left as it is."""
    with translated():
        # an index of earlier versions, for the open conversation on a channel (now read through another)
        for old in (OLD_CHANNEL_INDEX, OLD_PARTICIPANT_INDEX):
            if old in db.conversations.index_information():
                db.conversations.drop_index(old)
        if "platform_message_id_unique" in db.messages.index_information():
            db.messages.drop_index("platform_message_id_unique")
        for collection, wanted in (INDEXES if indexes is None else indexes).items():
            _ensure(db[collection], wanted)


INDEXES: dict[str, list[IndexModel]] = {
    "messages": [
        IndexModel([("conversation_id", ASCENDING), ("sequence", ASCENDING)], unique=True),
        # route's "what does this conversation send next": its lowest PENDING sequence
        IndexModel([("conversation_id", ASCENDING), ("status", ASCENDING), ("sequence", ASCENDING)]),
        # A sparse single-field index: the server plans a query on a partial compound index as a collection
        # scan (docs/BENCHMARKS.md, "MongoDB (SecantusDB)"), and uses this one. Platform message ids are
        # unique across platforms by their format (wamid..., Instagram mids, Telegram chat-qualified ids).
        IndexModel("platform_message_id", unique=True, sparse=True, name="platform_message_id_sparse"),
        # events kept on their message until published: the relay finds the old ones through this index
        IndexModel([("pending_events.kept_at", ASCENDING)], sparse=True),
        # the sweeper's, so a sweep reads the PENDING messages it re-enqueues only. A plain compound index:
        # SecantusDB answers a partial index's query by scanning the collection (docs/MONGODB.md).
        IndexModel([("status", ASCENDING), ("created_at", ASCENDING)], name=PENDING_INDEX),
    ],
    # an admin's list of all conversations; a user's reads `participations`
    "conversations": [IndexModel([("last_activity_at", DESCENDING), ("_id", DESCENDING)])],
    # a user's conversations, newest activity first (the list, the open one on a channel, a shared one)
    "participations": [
        IndexModel(
            [("user_id", ASCENDING), ("last_activity_at", DESCENDING), ("conversation_id", DESCENDING)],
            name="user_activity",
        )
    ],
    "outbox": [IndexModel([("kept_at", ASCENDING)])],
    # GROUP deliveries (adapters/mongo/deliveries.py): a lane's PENDING ones in sequence order; the one a channel's
    # status webhook names; a message's, by recipient (the API, the aggregate's count); the sweeper's stale
    # PENDING ones; the relay's kept events
    "deliveries": [
        IndexModel(
            [("conversation_id", ASCENDING), ("user_id", ASCENDING), ("status", ASCENDING), ("sequence", ASCENDING)]
        ),
        IndexModel([("channel_id", ASCENDING), ("platform_message_id", ASCENDING)]),
        IndexModel([("message_id", ASCENDING), ("user_id", ASCENDING)], unique=True),
        IndexModel([("status", ASCENDING), ("created_at", ASCENDING)], name=PENDING_INDEX),
        IndexModel([("pending_events.kept_at", ASCENDING)], sparse=True),
    ],
}


def _ensure(collection: Collection[dict[str, Any]], indexes: list[IndexModel]) -> None:
    existing = {
        name: (list(info["key"]), bool(info.get("unique")), bool(info.get("sparse")))
        for name, info in collection.index_information().items()
    }
    missing = []
    for index in indexes:
        spec = index.document
        wanted = (list(spec["key"].items()), bool(spec.get("unique")), bool(spec.get("sparse")))
        if existing.get(spec["name"]) != wanted:
            missing.append(index)
    if missing:
        collection.create_indexes(missing)


class MongoCheck(DependencyCheck):
    name = "mongodb"

    def __init__(self, db: Database[dict[str, Any]]) -> None:
        self.db = db

    def check(self) -> None:
        self.db.command("ping")
