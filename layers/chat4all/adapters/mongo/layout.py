"""The database's layout as the server allows it (docs/MONGODB.md, "Scale-ready layout"): detected from the server,
nothing to configure.

- A sharded cluster (`hello` through mongos answers `msg: "isdbgrid"`): each large collection is sharded on the key
  its message-path queries start with, its unique indexes made legal for that key first, idempotently (a
  collection `config.collections` lists already is left as it is).
- Time-series collections (`create` with a `timeseries` option accepted): status moves are also appended to
  `status_history`; where refused, they are kept only in each message's `history` (the API reads that anyway).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pymongo import ASCENDING, IndexModel
from pymongo.errors import CollectionInvalid, OperationFailure

from chat4all.adapters.mongo.connection import INDEXES, ensure_indexes, translated
from chat4all.adapters.mongo.participations import backfill_participations

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from pymongo.database import Database

log = logging.getLogger(__name__)

STATUS_HISTORY = "status_history"
TIMESERIES = {"timeField": "at", "metaField": "meta", "granularity": "seconds"}
# a message's moves by its id (mongod >= 6.3 also makes one on metaField and timeField itself; SecantusDB does not)
STATUS_HISTORY_INDEXES = [IndexModel([("meta.message_id", ASCENDING), ("at", ASCENDING)], name="message_at")]

# The shard key of each large collection; the small ones (outbox, lanes, files) stay on the database's primary shard.
# messages: every message-path query starts with conversation_id (history windows, route's PENDING read) and
#   sequence orders a conversation as the seed's `timestamp` would, keeping (conversation_id, sequence) unique;
# conversations: read by `_id` only (the lists read participations); a range key on `_id` and not a hashed one: the
#   ids are random UUIDs, so inserts spread over the chunks as a hash would, and the `_id` index serves it (a
#   hashed index is one more index, and one SecantusDB cannot build);
# participations: a user's conversation list is a range of one user_id, on one shard;
# deliveries: a lane's PENDING read is {conversation_id, user_id, ...}.
SHARD_KEYS: dict[str, dict[str, Any]] = {
    "messages": {"conversation_id": 1, "sequence": 1},
    "conversations": {"_id": 1},
    "participations": {"user_id": 1, "conversation_id": 1},
    "deliveries": {"conversation_id": 1, "user_id": 1},
}

# A sharded collection's unique index must start with its shard key. On a sharded cluster these unique indexes of
# the single server's layout become non-unique (the same keys serve the same queries), and what their uniqueness
# guaranteed is kept by the index after them, if any:
# - deliveries (message_id, user_id): (conversation_id, user_id, message_id) is the same constraint, a message
#   belonging to one conversation;
# - messages platform_message_id: none (a platform's ids are unique by their format, and the status path finds the
#   message by the id before its conditional update; a repeated inbound webhook is caught by the message `_id`,
#   derived from the platform's id, within the conversation's chunk).
SHARDED_REPLACEMENTS: dict[str, dict[str, IndexModel | None]] = {
    "messages": {"platform_message_id_sparse": None},
    "deliveries": {
        "message_id_1_user_id_1": IndexModel(
            [("conversation_id", ASCENDING), ("user_id", ASCENDING), ("message_id", ASCENDING)],
            unique=True,
            name="conversation_user_message_unique",
        )
    },
}


@dataclass
class LayoutReport:
    sharded: bool
    timeseries: bool
    newly_sharded: list[str] = field(default_factory=list)
    participations_backfilled: int = 0


def is_sharded_cluster(admin: Callable[[dict[str, Any]], Mapping[str, Any]]) -> bool:
    return admin({"hello": 1}).get("msg") == "isdbgrid"


def sharded_indexes() -> dict[str, list[IndexModel]]:
    """INDEXES as a sharded cluster takes them: the unique indexes not prefixed by the shard key made non-unique
    (same name and keys; the unique one is dropped first), their replacements, and each shard key's."""
    result: dict[str, list[IndexModel]] = {}
    for collection, indexes in INDEXES.items():
        replacements = SHARDED_REPLACEMENTS.get(collection, {})
        adjusted: list[IndexModel] = []
        for index in indexes:
            spec = index.document
            if spec["name"] in replacements:
                keys = list(spec["key"].items())
                adjusted.append(IndexModel(keys, sparse=bool(spec.get("sparse")), name=spec["name"]))
                replacement = replacements[spec["name"]]
                if replacement is not None:
                    adjusted.append(replacement)
            else:
                adjusted.append(index)
        key = list(SHARD_KEYS.get(collection, {}).items())
        served = (
            not key or key[0][0] == "_id" or any(list(i.document["key"].items())[: len(key)] == key for i in adjusted)
        )
        if not served:  # sharding a collection that holds documents needs an index that starts with the key
            adjusted.append(IndexModel(key, name="shard_key"))
        result[collection] = adjusted
    return result


def apply_shard_keys(db: Database[dict[str, Any]], admin: Callable[[dict[str, Any]], Mapping[str, Any]]) -> list[str]:
    """Shard what is not sharded yet, each collection on its key; the collections sharded now."""
    prefix = f"{db.name}."
    listed = db.client["config"]["collections"].find({"_id": {"$regex": f"^{db.name}\\."}, "dropped": {"$ne": True}})
    already = {str(doc["_id"])[len(prefix) :] for doc in listed}
    missing = [name for name in SHARD_KEYS if name not in already]
    if not missing:
        return []
    admin({"enableSharding": db.name})
    for name in missing:
        admin({"shardCollection": f"{prefix}{name}", "key": SHARD_KEYS[name]})
    return missing


def _drop_replaced_unique_indexes(db: Database[dict[str, Any]]) -> None:
    for collection, replaced in SHARDED_REPLACEMENTS.items():
        info = db[collection].index_information()
        for name in replaced:
            if info.get(name, {}).get("unique"):
                db[collection].drop_index(name)


def ensure_status_history(db: Database[dict[str, Any]]) -> bool:
    """Create the time-series `status_history` where the server takes one; False (logged) where it does not."""
    try:
        db.create_collection(STATUS_HISTORY, timeseries=TIMESERIES)
    except CollectionInvalid:
        pass  # exists already
    except OperationFailure as exc:
        log.warning("no time-series collections on this server (%s): status history stays in each message", exc)
        return False
    if not has_status_history(db):
        log.warning("%s exists but is not a time-series collection: left as it is, not written", STATUS_HISTORY)
        return False
    db[STATUS_HISTORY].create_indexes(STATUS_HISTORY_INDEXES)
    return True


def has_status_history(db: Database[dict[str, Any]]) -> bool:
    """True when `status_history` is a time-series collection (what the writers check once per process)."""
    found = list(db.list_collections(filter={"name": STATUS_HISTORY}))
    return bool(found) and "timeseries" in found[0].get("options", {})


def ensure_layout(
    db: Database[dict[str, Any]], admin: Callable[[dict[str, Any]], Mapping[str, Any]] | None = None
) -> LayoutReport:
    """Indexes, shard keys and the time-series collection, as the server allows; safe to run on every start.
    `admin` runs an admin command (the client's admin database by default)."""
    run = admin or db.client.admin.command
    with translated():
        sharded = is_sharded_cluster(run)
        if sharded:
            _drop_replaced_unique_indexes(db)  # an index's options cannot change in place
            ensure_indexes(db, sharded_indexes())
        else:
            ensure_indexes(db)
        report = LayoutReport(sharded=sharded, timeseries=ensure_status_history(db))
        if sharded:
            report.newly_sharded = apply_shard_keys(db, run)
        report.participations_backfilled = backfill_participations(db)
    return report
