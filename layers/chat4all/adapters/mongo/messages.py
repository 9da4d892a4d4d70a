"""The `messages` collection: messages with their status history, their delivery attempts and their kept events,
stored with the conversation's counter (and route-job mark) in one transaction."""

from __future__ import annotations

import dataclasses
import itertools
import random
import time
from typing import TYPE_CHECKING, Any, ClassVar

from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.errors import ConnectionFailure, DuplicateKeyError, PyMongoError

from chat4all.adapters.mongo.attempts import MongoAttemptJournal
from chat4all.adapters.mongo.connection import DURABLE, translated
from chat4all.adapters.mongo.documents import event_docs, message_doc, pushes, to_conversation, to_message
from chat4all.adapters.mongo.participations import activity_update
from chat4all.adapters.mongo.status_history import StatusHistoryLog
from chat4all.domain.errors import DependencyUnavailableError, NotFoundError
from chat4all.domain.models import Direction, Message, MessageStatus, Platform, StatusEntry
from chat4all.ports import MessageStore, PendingJob, StoredOutbound

if TYPE_CHECKING:
    from collections.abc import Sequence
    from datetime import datetime

    from pymongo.client_session import ClientSession
    from pymongo.database import Database

    from chat4all.ports import Events, OutboundDraft

# concurrent senders in one conversation conflict on its sequence counter; each retries its transaction, after
# a jittered pause that doubles from 2 ms up to 50 ms, for up to 5 s (why these: docs/BENCHMARKS.md, "MongoDB
# (SecantusDB)")
SEQUENCE_TRANSACTION_SECONDS = 5.0
SEQUENCE_RETRY_PAUSE_SECONDS = (0.002, 0.05)


class _Drafted(Exception):
    """The insert met a duplicate key: the message id (known once drafted) tells a repeat from a stale counter."""

    def __init__(self, message_id: str) -> None:
        super().__init__(message_id)
        self.message_id = message_id


class MongoMessageStore(MongoAttemptJournal[Message], MessageStore):
    # a fanned-out GROUP message is settled by its deliveries' aggregate, never as a whole
    settles_only: ClassVar[dict[str, Any]] = {"fanned_out": {"$exists": False}}

    def __init__(self, db: Database[dict[str, Any]]) -> None:
        super().__init__(db.messages)
        self.db = db
        self.conversations = db.conversations
        self.status_history = StatusHistoryLog(db)

    def identify(self, sent: Message) -> tuple[str, int]:
        return sent.message_id, sent.attempts

    def recorded(self, sent_id: str, entry: StatusEntry) -> None:
        self.status_history.append(sent_id, [entry])

    def add_message(
        self, message: Message, *, events: Events = (), inbound_at: datetime | None = None
    ) -> Message | None:
        stored = self._add(
            message.conversation_id,
            message.created_at,
            lambda _: (message, events),
            route_job=False,
            inbound_at=inbound_at,
        )
        return stored.message if stored else None

    def add_outbound(self, conversation_id: str, at: datetime, draft: OutboundDraft) -> StoredOutbound | None:
        return self._add(conversation_id, at, draft, route_job=True)

    def release_route_job(self, conversation_id: str) -> bool:
        with translated():
            # by `_id` alone: the server plans `_id` plus a condition on another field as a collection scan
            done = self.conversations.update_one({"_id": conversation_id}, {"$unset": {"route_job_at": ""}})
        return bool(done.modified_count)

    def finish_route_job(self, conversation_id: str, last_sequence: int) -> bool:
        with translated():
            # the sequence transaction moves the counter and reads the mark in one write to this document, so
            # this update is ordered before it (that sender sees no mark, and enqueues) or after it (no match)
            done = self.conversations.update_one(
                {"_id": conversation_id, "last_sequence": last_sequence}, {"$unset": {"route_job_at": ""}}
            )
        return bool(done.matched_count)

    def _add(
        self,
        conversation_id: str,
        at: datetime,
        draft: OutboundDraft,
        *,
        route_job: bool,
        inbound_at: datetime | None = None,
    ) -> StoredOutbound | None:
        """One transaction: the conversation's counter moves and the message is inserted with it, or neither."""
        client = self.db.client
        deadline = time.monotonic() + SEQUENCE_TRANSACTION_SECONDS
        attempt = 0
        while time.monotonic() < deadline:
            attempt += 1
            try:
                with client.start_session() as session:
                    with session.start_transaction(write_concern=DURABLE):
                        stored = self._insert_next(
                            conversation_id, at, draft, session, route_job=route_job, inbound_at=inbound_at
                        )
                self.status_history.append(stored.message.message_id, stored.message.history, conversation_id)
                return stored
            except _Drafted as drafted:
                with translated():
                    if self.collection.count_documents({"_id": drafted.message_id}, limit=1):
                        return None
                    self._repair_counter(conversation_id)
            except ConnectionFailure as exc:
                raise DependencyUnavailableError("MongoDB is unavailable") from exc
            except PyMongoError as exc:
                if not exc.has_error_label("TransientTransactionError"):
                    raise DependencyUnavailableError("MongoDB is unavailable") from exc
                # a concurrent sender moved the counter first: start again after a short, jittered pause
                first, longest = SEQUENCE_RETRY_PAUSE_SECONDS
                time.sleep(random.uniform(0, min(longest, first * 2 ** min(attempt, 10))))  # noqa: S311 - jitter
        raise DependencyUnavailableError(f"conversation {conversation_id} is too busy to take a message")

    def _insert_next(
        self,
        conversation_id: str,
        at: datetime,
        draft: OutboundDraft,
        session: ClientSession,
        *,
        route_job: bool,
        inbound_at: datetime | None,
    ) -> StoredOutbound:
        change: dict[str, Any] = {"$inc": {"last_sequence": 1, "message_count": 1}, "$max": {"last_activity_at": at}}
        if inbound_at is not None:  # $max: a late or replayed webhook never moves it back
            change["$max"]["last_inbound_at"] = inbound_at
        # the mark keeps the time of the job it stands for ($min: set when absent, else left as it is)
        marked_at = at.replace(microsecond=at.microsecond // 1000 * 1000)
        if route_job:
            change["$min"] = {"route_job_at": marked_at}
        # the whole conversation as it was before this transaction's change: the draft checks the sender on it,
        # and the mark read here tells whether this send is the one that set it (the transactions on one
        # conversation are serialised by this write, so exactly one of concurrent senders finds it absent)
        doc = self.db.conversations.find_one_and_update(
            {"_id": conversation_id}, change, return_document=ReturnDocument.BEFORE, session=session
        )
        if doc is None:
            raise NotFoundError(f"conversation {conversation_id} not found")
        # the participants' conversation lists move with it (adapters/mongo/participations.py)
        participants = [p["user_id"] for p in doc.get("participants") or ()]
        if participants:
            self.db.participations.update_many(*activity_update(conversation_id, participants, at), session=session)
        message, events = draft(to_conversation(doc))
        stored = dataclasses.replace(message, sequence=int(doc.get("last_sequence") or 0) + 1)
        record = message_doc(stored)
        if events:
            record["pending_events"] = event_docs(events)
        try:
            self.collection.insert_one(record, session=session)
        except DuplicateKeyError as exc:
            raise _Drafted(message.message_id) from exc
        return StoredOutbound(stored, doc.get("route_job_at"))

    def _repair_counter(self, conversation_id: str) -> None:
        """A sequence taken without the counter (data from before the counter moved with the insert)."""
        top = self.collection.find_one(
            {"conversation_id": conversation_id}, sort=[("sequence", DESCENDING)], projection={"sequence": 1}
        )
        if top is not None:
            count = self.collection.count_documents({"conversation_id": conversation_id})
            self.db.conversations.update_one(
                {"_id": conversation_id}, {"$max": {"last_sequence": top["sequence"], "message_count": count}}
            )

    def get_message(self, message_id: str) -> Message | None:
        with translated():
            doc = self.collection.find_one({"_id": message_id})
        self.status_history.remember([doc] if doc else [])
        return to_message(doc) if doc else None

    def get_messages(self, message_ids: Sequence[str]) -> dict[str, Message]:
        if not message_ids:
            return {}
        with translated():
            docs = list(self.collection.find({"_id": {"$in": list(message_ids)}}))
        self.status_history.remember(docs)
        return {doc["_id"]: to_message(doc) for doc in docs}

    def mark_fanned_out(self, message_id: str) -> bool:
        with translated():
            done = self.durable.update_one(
                {"_id": message_id, "status": MessageStatus.PENDING.value}, {"$set": {"fanned_out": True}}
            )
        return bool(done.matched_count)

    def advance_aggregate(self, message_id: str, entry: StatusEntry, *, events: Events = ()) -> bool:
        predecessors = [s.value for s in MessageStatus.predecessors_of(entry.status)]
        with translated():
            done = self.durable.update_one(
                {"_id": message_id, "status": {"$in": predecessors}},
                {"$set": {"status": entry.status.value}, "$push": pushes(entry, events)},
            )
        if done.modified_count:
            self.status_history.append(message_id, [entry])
        return bool(done.modified_count)

    def find_by_platform_id(self, platform: Platform, platform_message_id: str) -> Message | None:
        with translated():
            # by the id alone: SecantusDB plans {channel, platform_message_id} as a collection scan
            doc = self.collection.find_one({"platform_message_id": platform_message_id})
        self.status_history.remember([doc] if doc else [])
        return to_message(doc) if doc and doc.get("channel") == platform.value else None

    def conversation_page(
        self, conversation_id: str, *, limit: int, before_sequence: int | None, since: datetime | None
    ) -> list[Message]:
        # The server reads every index entry a query matches before it applies the limit, so a page of the
        # newest 50 in a conversation of 10,000 would read 10,000: ask for a window of sequences instead,
        # widening it only where gaps or the `since` filter leave the page short. (See docs/MONGODB.md.)
        upper = before_sequence if before_sequence is not None else self._sequence_bound(conversation_id)
        query: dict[str, Any] = {"conversation_id": conversation_id}
        window = limit
        with translated():
            while True:
                if upper is None:
                    query.pop("sequence", None)
                    lower = 0
                else:
                    lower = max(upper - window, 0)
                    query["sequence"] = {"$gte": lower, "$lt": upper}
                # the whole page in the find's reply: without batchSize the server sends 101 documents and the
                # rest on a getMore (a second round trip for every page over 101); a window holds at most
                # upper - lower documents (one per sequence)
                batch = limit if since is None else (upper - lower if upper is not None else 0)
                docs = list(
                    self.collection.find(query)
                    .sort("sequence", DESCENDING)
                    .limit(limit if since is None else 0)
                    .batch_size(batch)
                )
                reached_join = False
                if since is not None:  # filtered here: with created_at in the query SecantusDB scans the collection
                    reached_join = any(d["created_at"] < since for d in docs)
                    docs = [d for d in docs if d["created_at"] >= since][:limit]
                if len(docs) >= limit or lower <= 0 or reached_join:
                    return [to_message(d) for d in docs]
                window *= 4

    def _sequence_bound(self, conversation_id: str) -> int | None:
        """One past the conversation's highest sequence, or None when it does not say."""
        with translated():
            doc = self.conversations.find_one({"_id": conversation_id}, projection={"last_sequence": 1})
        last = doc.get("last_sequence") if doc else None
        return last + 1 if isinstance(last, int) else None

    def unsettled(self, conversation_id: str, limit: int) -> list[Message]:
        # fanned-out GROUP messages stay PENDING until their deliveries' aggregate moves; they are skipped here
        # (a filter on `fanned_out` is a field the index does not hold: SecantusDB would scan the collection)
        query: dict[str, Any] = {"conversation_id": conversation_id, "status": MessageStatus.PENDING.value}
        found: list[dict[str, Any]] = []
        with translated():
            while True:
                docs = list(self.collection.find(query).sort("sequence", ASCENDING).limit(limit))
                found += [doc for doc in docs if not doc.get("fanned_out")]
                if len(found) >= limit or len(docs) < limit:
                    break
                query["sequence"] = {"$gt": docs[-1]["sequence"]}
        self.status_history.remember(found)
        outbound = itertools.takewhile(lambda doc: doc["direction"] == Direction.OUTBOUND.value, found[:limit])
        return [to_message(doc) for doc in outbound]

    def stale_pending(self, created_before: datetime, limit: int) -> list[PendingJob]:
        query = {"status": MessageStatus.PENDING.value, "created_at": {"$lt": created_before}}
        projection = {"_id": 1, "conversation_id": 1, "sequence": 1, "direction": 1, "fanned_out": 1}
        with translated():
            docs = list(self.collection.find(query, projection).sort("created_at", ASCENDING).limit(limit))
        jobs = [
            PendingJob(doc["_id"], doc["conversation_id"], int(doc["sequence"]))
            for doc in docs
            if doc.get("direction") == Direction.OUTBOUND.value and not doc.get("fanned_out")
        ]
        return sorted(jobs, key=lambda job: (job.conversation_id, job.sequence))
