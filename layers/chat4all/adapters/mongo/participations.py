"""The `participations` collection: one document per (user, conversation), what a user's conversation list reads.

A conversation keeps its participants in an array (what the sender check and GET /v1/conversations/{id} read with
the conversation), and a shard key cannot be an array field: "conversations by user" on a sharded cluster needs a
collection of its own, sharded by user_id (docs/MONGODB.md, "Scale-ready layout"). Each participation is written
in the same transaction as the change of the conversation it mirrors (created, joined, left), and its
`last_activity_at` moves with the conversation's in the transaction that stores each message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pymongo import UpdateOne

from chat4all.domain.models import utcnow

if TYPE_CHECKING:
    from collections.abc import Iterable
    from datetime import datetime

    from pymongo.database import Database

    from chat4all.domain.models import Conversation

# written once the participations of every conversation stored before them exist (prepare_databases)
MARKER = {"_id": "participations_backfilled"}
BACKFILL_BATCH = 500


def participation_id(conversation_id: str, user_id: str) -> str:
    return f"{conversation_id}:{user_id}"


def participation_doc(
    conversation_id: str, user_id: str, joined_at: datetime, last_activity_at: datetime
) -> dict[str, Any]:
    return {
        "_id": participation_id(conversation_id, user_id),
        "user_id": user_id,
        "conversation_id": conversation_id,
        "joined_at": joined_at,
        "last_activity_at": last_activity_at,
    }


def participation_docs(conversation: Conversation) -> list[dict[str, Any]]:
    return [
        participation_doc(conversation.conversation_id, p.user_id, p.joined_at, conversation.last_activity_at)
        for p in conversation.participants
    ]


def activity_update(
    conversation_id: str, user_ids: Iterable[str], at: datetime
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The (filter, update) that moves the participations of a conversation to `at` (never back)."""
    ids = [participation_id(conversation_id, user_id) for user_id in user_ids]
    return {"_id": {"$in": ids}}, {"$max": {"last_activity_at": at}}


def backfill_participations(db: Database[dict[str, Any]], *, force: bool = False) -> int:
    """Write the participations of conversations stored before this collection existed; once (a marker in
    `layout` says it was done), or again with `force`. Idempotent: an upsert per participant, the activity only
    moved forward. Reads the conversations in batches. Returns how many participations were inserted."""
    if not force and db.layout.find_one(MARKER) is not None:
        return 0
    inserted = 0
    batch: list[UpdateOne] = []
    projection = {"participants": 1, "last_activity_at": 1}
    for doc in db.conversations.find({}, projection=projection, batch_size=BACKFILL_BATCH):
        for participant in doc.get("participants") or ():
            fresh = participation_doc(
                doc["_id"], participant["user_id"], participant["joined_at"], doc["last_activity_at"]
            )
            activity = fresh.pop("last_activity_at")
            batch.append(
                UpdateOne(
                    {"_id": fresh.pop("_id")},
                    {"$setOnInsert": fresh, "$max": {"last_activity_at": activity}},
                    upsert=True,
                )
            )
        if len(batch) >= BACKFILL_BATCH:
            inserted += db.participations.bulk_write(batch, ordered=False).upserted_count
            batch = []
    if batch:
        inserted += db.participations.bulk_write(batch, ordered=False).upserted_count
    db.layout.update_one(MARKER, {"$set": {"at": utcnow()}}, upsert=True)
    return inserted
