"""The `deliveries` collection (a GROUP message's copy per recipient, with its own attempts, platform id, status
history and kept events) and the `lanes` collection (one document per conversation and recipient: its route-job
mark and the last sequence fanned into it; chat4all.services.route_jobs steps 7-10).

A delivery's attempts and statuses are written as a message's are (adapters/mongo/attempts.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pymongo import ASCENDING, UpdateOne
from pymongo.errors import BulkWriteError

from chat4all.adapters.mongo.attempts import MongoAttemptJournal
from chat4all.adapters.mongo.connection import DURABLE, translated
from chat4all.adapters.mongo.documents import delivery_doc, to_delivery
from chat4all.domain.models import Delivery, MessageStatus
from chat4all.ports import DeliveryStore, PendingJob

if TYPE_CHECKING:
    from collections.abc import Sequence
    from datetime import datetime

    from pymongo.collection import Collection
    from pymongo.database import Database


DUPLICATE_KEY = 11000


def lane_id(conversation_id: str, user_id: str) -> str:
    return f"{conversation_id}:{user_id}"


class MongoDeliveryStore(MongoAttemptJournal[Delivery], DeliveryStore):
    def __init__(self, db: Database[dict[str, Any]]) -> None:
        super().__init__(db.deliveries)
        self.lanes: Collection[dict[str, Any]] = db.lanes.with_options(write_concern=DURABLE)

    # ------------------------------------------------------------------ deliveries

    def identify(self, sent: Delivery) -> tuple[str, int]:
        return sent.delivery_id, sent.attempts

    def add_deliveries(self, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        with translated():
            try:
                self.durable.insert_many([delivery_doc(d) for d in deliveries], ordered=False)
            except BulkWriteError as exc:
                # a fan-out done again finds its deliveries stored: those stay as they are (maybe sent since)
                others = [e for e in exc.details.get("writeErrors", []) if e.get("code") != DUPLICATE_KEY]
                if others or exc.details.get("writeConcernErrors"):
                    raise

    def deliveries_of(self, message_id: str) -> list[Delivery]:
        with translated():
            docs = list(self.collection.find({"message_id": message_id}).sort("user_id", ASCENDING))
        return [to_delivery(doc) for doc in docs]

    def get_delivery(self, delivery_id: str) -> Delivery | None:
        with translated():
            doc = self.collection.find_one({"_id": delivery_id})
        return to_delivery(doc) if doc else None

    def lane_pending(self, conversation_id: str, user_id: str, limit: int) -> list[Delivery]:
        query = {"conversation_id": conversation_id, "user_id": user_id, "status": MessageStatus.PENDING.value}
        with translated():
            docs = list(self.collection.find(query).sort("sequence", ASCENDING).limit(limit))
        return [to_delivery(doc) for doc in docs]

    def find_by_platform_id(self, channel_id: str, platform_message_id: str) -> Delivery | None:
        with translated():
            doc = self.collection.find_one({"channel_id": channel_id, "platform_message_id": platform_message_id})
        return to_delivery(doc) if doc else None

    def status_counts(self, message_id: str) -> dict[MessageStatus, int]:
        pipeline: list[dict[str, Any]] = [
            {"$match": {"message_id": message_id}},
            {"$group": {"_id": "$status", "count": {"$sum": 1}}},
        ]
        with translated():
            rows = list(self.collection.aggregate(pipeline))
        return {MessageStatus(row["_id"]): int(row["count"]) for row in rows}

    def stale_pending(self, created_before: datetime, limit: int) -> list[PendingJob]:
        query = {"status": MessageStatus.PENDING.value, "created_at": {"$lt": created_before}}
        projection = {"message_id": 1, "conversation_id": 1, "user_id": 1, "sequence": 1}
        with translated():
            docs = list(self.collection.find(query, projection).sort("created_at", ASCENDING).limit(limit))
        lanes: dict[tuple[str, str], PendingJob] = {}
        for doc in docs:
            job = PendingJob(doc["message_id"], doc["conversation_id"], int(doc["sequence"]), doc["user_id"])
            key = (job.conversation_id, doc["user_id"])
            if key not in lanes or job.sequence < lanes[key].sequence:
                lanes[key] = job
        return [lanes[key] for key in sorted(lanes)]

    # ------------------------------------------------------------------ lanes

    def fan_into_lanes(self, conversation_id: str, user_ids: Sequence[str], sequence: int) -> None:
        if not user_ids:
            return
        writes = [
            UpdateOne(
                {"_id": lane_id(conversation_id, user_id)},
                {
                    "$max": {"fanned_sequence": sequence},
                    "$setOnInsert": {"conversation_id": conversation_id, "user_id": user_id},
                },
                upsert=True,
            )
            for user_id in user_ids
        ]
        with translated():
            self.lanes.bulk_write(writes, ordered=False)

    def lanes_to_mark(self, conversation_id: str, user_ids: Sequence[str], stale_before: datetime) -> list[str]:
        ids = [lane_id(conversation_id, user_id) for user_id in user_ids]
        with translated():
            docs = {d["_id"]: d for d in self.lanes.find({"_id": {"$in": ids}}, projection={"marked_at": 1})}
        return [
            user_id
            for user_id, key in zip(user_ids, ids, strict=True)
            if (marked := docs.get(key, {}).get("marked_at")) is None or marked < stale_before
        ]

    def mark_lanes(self, conversation_id: str, user_ids: Sequence[str], at: datetime) -> None:
        if not user_ids:
            return
        marked_at = at.replace(microsecond=at.microsecond // 1000 * 1000)
        with translated():
            self.lanes.update_many(
                {"_id": {"$in": [lane_id(conversation_id, u) for u in user_ids]}}, {"$set": {"marked_at": marked_at}}
            )

    def release_lanes(self, conversation_id: str, user_ids: Sequence[str]) -> None:
        if not user_ids:
            return
        with translated():
            self.lanes.update_many(
                {"_id": {"$in": [lane_id(conversation_id, u) for u in user_ids]}}, {"$unset": {"marked_at": ""}}
            )

    def lane_counter(self, conversation_id: str, user_id: str) -> int | None:
        with translated():
            doc = self.lanes.find_one({"_id": lane_id(conversation_id, user_id)}, projection={"fanned_sequence": 1})
        return int(doc["fanned_sequence"]) if doc and doc.get("fanned_sequence") is not None else None

    def finish_lane(self, conversation_id: str, user_id: str, fanned_sequence: int) -> bool:
        with translated():
            # the fan-out raises the counter before it reads the marks, so this update is ordered before that
            # raise (the fan-out then finds the lane unmarked, and enqueues) or after it (no match: look again)
            done = self.lanes.update_one(
                {"_id": lane_id(conversation_id, user_id), "fanned_sequence": fanned_sequence},
                {"$unset": {"marked_at": ""}},
            )
        return bool(done.matched_count)
