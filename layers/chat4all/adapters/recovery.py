"""Adapters of recovery (chat4all.services.recovery): PENDING messages in MongoDB, re-enqueueing to SQS."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pymongo import ASCENDING

from chat4all.adapters.aws import _translated as _aws_translated
from chat4all.adapters.mongo import DURABLE, _entry_doc, _message, _translated
from chat4all.domain.errors import DependencyUnavailableError
from chat4all.domain.models import Direction, MessageStatus
from chat4all.domain.wire import RouteJob
from chat4all.observability import logger
from chat4all.ports import PendingJob, PendingMessages, RouteRequeue

if TYPE_CHECKING:
    from datetime import datetime

    from pymongo.database import Database

    from chat4all.adapters.aws_api import AwsJsonApi
    from chat4all.domain.models import Message, StatusEntry

PENDING_INDEX = "status_created_at"
SQS_BATCH = 10  # SendMessageBatch's own limit


def ensure_recovery_indexes(db: Database[dict[str, Any]]) -> None:
    """The sweeper's index: messages by status and age, so a sweep reads the PENDING ones it re-enqueues only.

    A plain compound index: SecantusDB answers a partial index's query by scanning the collection
    (docs/MONGODB.md).
    """
    with _translated():
        db.messages.create_index([("status", ASCENDING), ("created_at", ASCENDING)], name=PENDING_INDEX)


class MongoPendingMessages(PendingMessages):
    """Queries as docs/MONGODB.md asks: each filter on the fields of one index; a conditional change of one
    document by `_id` is an update_one, then a read by `_id`."""

    def __init__(self, db: Database[dict[str, Any]]) -> None:
        self.collection = db.messages
        self.durable = db.messages.with_options(write_concern=DURABLE)

    def stale_pending(self, created_before: datetime, limit: int) -> list[PendingJob]:
        query = {"status": MessageStatus.PENDING.value, "created_at": {"$lt": created_before}}
        projection = {"_id": 1, "conversation_id": 1, "sequence": 1, "direction": 1}
        with _translated():
            docs = list(self.collection.find(query, projection).sort("created_at", ASCENDING).limit(limit))
        jobs = [
            PendingJob(doc["_id"], doc["conversation_id"], int(doc["sequence"]))
            for doc in docs
            if doc.get("direction") == Direction.OUTBOUND.value
        ]
        return sorted(jobs, key=lambda job: (job.conversation_id, job.sequence))

    def fail_if_pending(self, message_id: str, entry: StatusEntry) -> Message | None:
        with _translated():
            changed = self.durable.update_one(
                {
                    "_id": message_id,
                    "direction": Direction.OUTBOUND.value,
                    "status": MessageStatus.PENDING.value,
                    "platform_message_id": {"$exists": False},
                    # an open attempt is the route function's to settle (it may be calling the platform now)
                    "attempt": {"$exists": False},
                },
                {
                    "$set": {"status": entry.status.value},
                    "$push": {"history": _entry_doc(entry)},
                    "$unset": {"retry_at": ""},
                },
            )
            if not changed.modified_count:
                return None
            doc = self.collection.find_one({"_id": message_id})
        return _message(doc) if doc else None


class SqsRouteRequeue(RouteRequeue):
    """The route queue's records as ingest writes them, one group per conversation, deduplicated per round."""

    def __init__(self, sqs: AwsJsonApi, queue_url: str) -> None:
        self.sqs = sqs
        self.queue_url = queue_url

    def requeue(self, jobs: list[PendingJob], round_id: str) -> int:
        taken = 0
        failures: list[str] = []
        for start in range(0, len(jobs), SQS_BATCH):
            chunk = jobs[start : start + SQS_BATCH]
            records = [RouteJob(message_id=job.message_id, conversation_id=job.conversation_id) for job in chunk]
            entries = [
                {
                    "Id": str(i),
                    "MessageBody": record.body(),
                    "MessageGroupId": record.group_id,
                    "MessageDeduplicationId": f"{record.message_id}:sweep:{round_id}",
                }
                for i, record in enumerate(records)
            ]
            with _aws_translated("SQS"):
                result = self.sqs.call("SendMessageBatch", {"QueueUrl": self.queue_url, "Entries": entries})
            taken += len(result.get("Successful", []))
            failures += [f"{chunk[int(f['Id'])].message_id}: {f.get('Code')}" for f in result.get("Failed", [])]
        if failures:
            # a later sweep takes them up again; a dependency that refuses them all is worth a retry now
            logger.warning("re-enqueue refused", extra={"refused": failures[:20], "count": len(failures)})
            if not taken:
                raise DependencyUnavailableError(f"SQS refused all {len(failures)} re-enqueued messages")
        return taken
