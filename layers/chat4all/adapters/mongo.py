"""MongoDB adapters: messages with their status history, and conversations."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import random
import time
import uuid
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from pymongo import ASCENDING, DESCENDING, MongoClient, ReturnDocument, WriteConcern
from pymongo.errors import ConnectionFailure, DuplicateKeyError, PyMongoError

from chat4all.domain.errors import DependencyUnavailableError, NotFoundError
from chat4all.domain.models import (
    Conversation,
    ConversationType,
    DeliveryAttempt,
    Direction,
    DomainEvent,
    Message,
    MessageStatus,
    Participant,
    Platform,
    StatusEntry,
    utcnow,
)
from chat4all.ports import ConversationStore, DependencyCheck, EventOutbox, MessageStore, PendingJob, StoredOutbound

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from datetime import datetime

    from pymongo.client_session import ClientSession
    from pymongo.collection import Collection
    from pymongo.database import Database

    from chat4all.ports import OutboundDraft

DEFAULT_DATABASE = "chat4all"
# A server that is down is found out within a second, so the API answers 503 then, not after a long wait.
# pymongo re-checks an unknown server at most every 500 ms (minHeartbeatFrequencyMS), so an operation fails
# up to ~0.5 s after its selection timeout (measured against a closed port: 300 ms took 0.37 to 0.74 s; the
# old 5,000 ms took 5 s). A URI that sets its own timeouts keeps them (an Atlas URI over a slow link, say).
# A server that answers but stalls is given a few seconds.
DEFAULT_TIMEOUTS_MS = {"serverSelectionTimeoutMS": 300, "connectTimeoutMS": 1000, "socketTimeoutMS": 5000}
# Writes a re-run relies on (the message with its sequence, an attempt before its platform call, the receipt
# after it) are acknowledged only once they are in the journal of a majority.
DURABLE = WriteConcern(w="majority", j=True)
# an event kept on its message is the live path's to publish for this long; then the relay takes it up
RELAY_AFTER = timedelta(seconds=30)
MESSAGE_EVENT = "message:"
# concurrent senders in one conversation conflict on its sequence counter; each retries its transaction, after
# a jittered pause that doubles from 2 ms up to 50 ms, for up to 5 s (16 clients on one conversation: 50 tries
# with pauses under 2 ms * try left 3 of 1,559 sends without a sequence)
SEQUENCE_TRANSACTION_SECONDS = 5.0
SEQUENCE_RETRY_PAUSE_SECONDS = (0.002, 0.05)
# messages whose published events one update forgets (MongoEventOutbox._pull)
PULL_CHUNK = 10
OLD_CHANNEL_INDEX = "participants.user_id_1_channel_id_1_last_activity_at_-1"
# the sweeper's: messages by status and age
PENDING_INDEX = "status_created_at"


def connect(uri: str) -> Database[dict[str, Any]]:
    given = uri.lower()
    timeouts: dict[str, Any] = {name: ms for name, ms in DEFAULT_TIMEOUTS_MS.items() if name.lower() not in given}
    client: MongoClient[dict[str, Any]] = MongoClient(uri, tz_aware=True, **timeouts)
    return client.get_default_database(default=DEFAULT_DATABASE)


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except DuplicateKeyError:
        raise
    except PyMongoError as exc:
        raise DependencyUnavailableError("MongoDB is unavailable") from exc


def ensure_indexes(db: Database[dict[str, Any]]) -> None:
    """Create the collections' indexes; safe to run on every start."""
    with _translated():
        db.messages.create_index([("conversation_id", ASCENDING), ("sequence", ASCENDING)], unique=True)
        # route's "what does this conversation send next": its lowest PENDING sequence
        db.messages.create_index([("conversation_id", ASCENDING), ("status", ASCENDING), ("sequence", ASCENDING)])
        # A sparse single-field index: the server plans a query on a partial compound index as a collection
        # scan (40 ms per status webhook at 3,000 messages), and uses this one. Platform message ids are
        # unique across platforms by their format (wamid..., Instagram mids, Telegram chat-qualified ids).
        if "platform_message_id_unique" in db.messages.index_information():
            db.messages.drop_index("platform_message_id_unique")
        db.messages.create_index("platform_message_id", unique=True, sparse=True, name="platform_message_id_sparse")
        db.conversations.create_index([("participants.user_id", ASCENDING), ("last_activity_at", DESCENDING)])
        db.outbox.create_index([("kept_at", ASCENDING)])
        # events kept on their message until published: the relay finds the old ones through this index
        db.messages.create_index([("pending_events.kept_at", ASCENDING)], sparse=True)
        db.conversations.create_index([("last_activity_at", DESCENDING), ("_id", DESCENDING)])
        # an index of earlier versions, for the open conversation on a channel (now read through the one above)
        if OLD_CHANNEL_INDEX in db.conversations.index_information():
            db.conversations.drop_index(OLD_CHANNEL_INDEX)
        # the sweeper's, so a sweep reads the PENDING messages it re-enqueues only. A plain compound index:
        # SecantusDB answers a partial index's query by scanning the collection (docs/MONGODB.md).
        db.messages.create_index([("status", ASCENDING), ("created_at", ASCENDING)], name=PENDING_INDEX)


def _message_doc(message: Message) -> dict[str, Any]:
    return {
        "_id": message.message_id,
        "conversation_id": message.conversation_id,
        "sender_id": message.sender_id,
        "content": message.content,
        "file_id": message.file_id,
        "channel": message.channel.value,
        "direction": message.direction.value,
        "sequence": message.sequence,
        "status": message.status.value,
        "history": [_entry_doc(e) for e in message.history],
        "created_at": message.created_at,
        "request_fingerprint": message.request_fingerprint,
        "applied_reports": [],
        "message_type": message.message_type,
        **({"platform_message_id": message.platform_message_id} if message.platform_message_id else {}),
    }


def _entry_doc(entry: StatusEntry) -> dict[str, Any]:
    doc: dict[str, Any] = {"status": entry.status.value, "at": entry.at}
    if entry.detail:
        doc["detail"] = entry.detail
    return doc


def _event_docs(events: Sequence[DomainEvent]) -> list[dict[str, Any]]:
    now = utcnow()
    return [
        {"id": e.event_id, "source": e.source, "detail_type": e.detail_type, "detail": e.detail, "kept_at": now}
        for e in events
    ]


def _pushes(entry: StatusEntry, events: Sequence[DomainEvent]) -> dict[str, Any]:
    """The history entry, and the events that report it, in one update."""
    push: dict[str, Any] = {"history": _entry_doc(entry)}
    if events:
        push["pending_events"] = {"$each": _event_docs(events)}
    return push


def _message(doc: dict[str, Any]) -> Message:
    history = [StatusEntry(MessageStatus(e["status"]), e["at"], e.get("detail")) for e in doc.get("history", [])]
    failure = next((e.detail for e in reversed(history) if e.status is MessageStatus.FAILED), None)
    attempt = doc.get("attempt")
    return Message(
        message_id=doc["_id"],
        conversation_id=doc["conversation_id"],
        sender_id=doc["sender_id"],
        content=doc.get("content"),
        file_id=doc.get("file_id"),
        channel=Platform(doc["channel"]),
        direction=Direction(doc["direction"]),
        sequence=doc["sequence"],
        status=MessageStatus(doc["status"]),
        history=history,
        created_at=doc["created_at"],
        request_fingerprint=doc.get("request_fingerprint", ""),
        platform_message_id=doc.get("platform_message_id"),
        error=failure,
        attempts=int(doc.get("delivery_attempts", 0)),
        in_flight=(
            DeliveryAttempt(int(doc["delivery_attempts"]), attempt["started_at"], attempt["lease_until"])
            if attempt
            else None
        ),
        retry_at=doc.get("retry_at"),
        troubled_since=doc.get("troubled_since"),
        troubles=int(doc.get("troubles", 0)),
        message_type=doc.get("message_type", "text"),
        unpublished_events=tuple(
            DomainEvent(e["detail_type"], e["detail"], e["source"], e["id"], doc["_id"])
            for e in doc.get("pending_events", ())
        ),
    )


def _conversation(doc: dict[str, Any]) -> Conversation:
    return Conversation(
        conversation_id=doc["_id"],
        conversation_type=ConversationType(doc["conversation_type"]),
        participants=[Participant(p["user_id"], p["joined_at"]) for p in doc["participants"]],
        primary_channel=Platform(doc["primary_channel"]),
        message_count=doc.get("message_count", 0),
        last_activity_at=doc["last_activity_at"],
        created_at=doc["created_at"],
        channel_id=doc.get("channel_id"),
        last_sequence=doc.get("last_sequence"),
    )


class _Drafted(Exception):
    """The insert met a duplicate key: the message id (known once drafted) tells a repeat from a stale counter."""

    def __init__(self, message_id: str) -> None:
        super().__init__(message_id)
        self.message_id = message_id


class MongoMessageStore(MessageStore):
    def __init__(self, db: Database[dict[str, Any]]) -> None:
        self.db = db
        self.collection = db.messages
        self.conversations = db.conversations
        self.durable: Collection[dict[str, Any]] = db.messages.with_options(write_concern=DURABLE)

    def add_message(self, message: Message, *, events: Sequence[DomainEvent] = ()) -> Message | None:
        stored = self._add(message.conversation_id, message.created_at, lambda _: (message, events), route_job=False)
        return stored.message if stored else None

    def add_outbound(self, conversation_id: str, at: datetime, draft: OutboundDraft) -> StoredOutbound | None:
        return self._add(conversation_id, at, draft, route_job=True)

    def release_route_job(self, conversation_id: str) -> bool:
        with _translated():
            # by `_id` alone: the server plans `_id` plus a condition on another field as a collection scan
            done = self.conversations.update_one({"_id": conversation_id}, {"$unset": {"route_job_at": ""}})
        return bool(done.modified_count)

    def finish_route_job(self, conversation_id: str, last_sequence: int) -> bool:
        with _translated():
            # the sequence transaction moves the counter and reads the mark in one write to this document, so
            # this update is ordered before it (that sender sees no mark, and enqueues) or after it (no match)
            done = self.conversations.update_one(
                {"_id": conversation_id, "last_sequence": last_sequence}, {"$unset": {"route_job_at": ""}}
            )
        return bool(done.matched_count)

    def _add(
        self, conversation_id: str, at: datetime, draft: OutboundDraft, *, route_job: bool
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
                        stored = self._insert_next(conversation_id, at, draft, session, route_job=route_job)
                return stored
            except _Drafted as drafted:
                with _translated():
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
        self, conversation_id: str, at: datetime, draft: OutboundDraft, session: ClientSession, *, route_job: bool
    ) -> StoredOutbound:
        change: dict[str, Any] = {"$inc": {"last_sequence": 1, "message_count": 1}, "$max": {"last_activity_at": at}}
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
        message, events = draft(_conversation(doc))
        stored = dataclasses.replace(message, sequence=int(doc.get("last_sequence") or 0) + 1)
        record = _message_doc(stored)
        if events:
            record["pending_events"] = _event_docs(events)
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
        with _translated():
            doc = self.collection.find_one({"_id": message_id})
        return _message(doc) if doc else None

    def find_by_platform_id(self, platform: Platform, platform_message_id: str) -> Message | None:
        with _translated():
            # by the id alone: SecantusDB plans {channel, platform_message_id} as a collection scan
            doc = self.collection.find_one({"platform_message_id": platform_message_id})
        return _message(doc) if doc and doc.get("channel") == platform.value else None

    def conversation_page(
        self, conversation_id: str, *, limit: int, before_sequence: int | None, since: datetime | None
    ) -> list[Message]:
        # The server reads every index entry a query matches before it applies the limit, so a page of the
        # newest 50 in a conversation of 10,000 would read 10,000: ask for a window of sequences instead,
        # widening it only where gaps or the `since` filter leave the page short. (See docs/MONGODB.md.)
        upper = before_sequence if before_sequence is not None else self._sequence_bound(conversation_id)
        query: dict[str, Any] = {"conversation_id": conversation_id}
        window = limit
        with _translated():
            while True:
                if upper is None:
                    query.pop("sequence", None)
                    lower = 0
                else:
                    lower = max(upper - window, 0)
                    query["sequence"] = {"$gte": lower, "$lt": upper}
                docs = list(
                    self.collection.find(query).sort("sequence", DESCENDING).limit(limit if since is None else 0)
                )
                reached_join = False
                if since is not None:  # filtered here: with created_at in the query SecantusDB scans the collection
                    reached_join = any(d["created_at"] < since for d in docs)
                    docs = [d for d in docs if d["created_at"] >= since][:limit]
                if len(docs) >= limit or lower <= 0 or reached_join:
                    return [_message(d) for d in docs]
                window *= 4

    def _sequence_bound(self, conversation_id: str) -> int | None:
        """One past the conversation's highest sequence, or None when it does not say."""
        with _translated():
            doc = self.conversations.find_one({"_id": conversation_id}, projection={"last_sequence": 1})
        last = doc.get("last_sequence") if doc else None
        return last + 1 if isinstance(last, int) else None

    def unsettled(self, conversation_id: str, limit: int) -> list[Message]:
        with _translated():
            docs = list(
                self.collection.find({"conversation_id": conversation_id, "status": MessageStatus.PENDING.value})
                .sort("sequence", ASCENDING)
                .limit(limit)
            )
        outbound = itertools.takewhile(lambda doc: doc["direction"] == Direction.OUTBOUND.value, docs)
        return [_message(doc) for doc in outbound]

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

    def begin_attempt(self, message: Message, started_at: datetime, lease_until: datetime) -> int | None:
        # update_one on the count as it was read (no findAndModify: SecantusDB plans one on `_id` plus other
        # fields as a collection scan, docs/MONGODB.md), so the new number is known without reading it back
        counted: dict[str, Any] = (
            {"delivery_attempts": message.attempts} if message.attempts else {"delivery_attempts": {"$exists": False}}
        )
        with _translated():
            claimed = self.durable.update_one(
                {"_id": message.message_id, "status": MessageStatus.PENDING.value, "attempt": {"$exists": False}}
                | counted,
                {
                    "$set": {
                        "attempt": {"started_at": started_at, "lease_until": lease_until},
                        "delivery_attempts": message.attempts + 1,
                    }
                },
            )
        return message.attempts + 1 if claimed.modified_count else None

    def record_sent(
        self,
        message_id: str,
        attempt: int,
        entry: StatusEntry,
        platform_message_id: str,
        *,
        events: Sequence[DomainEvent] = (),
    ) -> bool:
        with _translated():
            done = self.durable.update_one(
                {
                    "_id": message_id,
                    "status": MessageStatus.PENDING.value,
                    "attempt": {"$exists": True},
                    "delivery_attempts": attempt,
                },
                {
                    "$set": {"status": entry.status.value, "platform_message_id": platform_message_id},
                    "$push": _pushes(entry, events),
                    "$unset": {"attempt": "", "retry_at": "", "troubled_since": "", "troubles": ""},
                },
            )
        if done.modified_count:
            return True
        # settled meanwhile (the attempt outlived its lease): keep the id so that status reports still match
        self.append_status(message_id, entry, platform_message_id=platform_message_id)
        return False

    def end_attempt(self, message_id: str, attempt: int, retry_at: datetime, error: str) -> bool:
        with _translated():
            done = self.durable.update_one(
                {
                    "_id": message_id,
                    "status": MessageStatus.PENDING.value,
                    "attempt": {"$exists": True},
                    "delivery_attempts": attempt,
                },
                {"$set": {"retry_at": retry_at, "last_error": error}, "$unset": {"attempt": ""}},
            )
        return bool(done.modified_count)

    def postpone(self, message_id: str, retry_at: datetime, troubled_since: datetime, error: str) -> None:
        with _translated():
            self.collection.update_one(
                {"_id": message_id, "status": MessageStatus.PENDING.value, "attempt": {"$exists": False}},
                {
                    "$set": {"retry_at": retry_at, "last_error": error},
                    "$min": {"troubled_since": troubled_since},
                    "$inc": {"troubles": 1},
                },
            )

    def settle_failed(
        self,
        message_id: str,
        entry: StatusEntry,
        *,
        attempt: int | None = None,
        events: Sequence[DomainEvent] = (),
    ) -> bool:
        query: dict[str, Any] = {"_id": message_id, "status": MessageStatus.PENDING.value}
        query["attempt"] = {"$exists": attempt is not None}
        if attempt is not None:
            query["delivery_attempts"] = attempt
        with _translated():
            done = self.durable.update_one(
                query,
                {
                    "$set": {"status": MessageStatus.FAILED.value},
                    "$push": _pushes(entry, events),
                    "$unset": {"attempt": "", "retry_at": ""},
                },
            )
        return bool(done.modified_count)

    def append_status(
        self,
        message_id: str,
        entry: StatusEntry,
        *,
        platform_message_id: str | None = None,
        dedupe_key: str | None = None,
        events: Sequence[DomainEvent] = (),
    ) -> bool:
        base: dict[str, Any] = {"_id": message_id}
        if dedupe_key is not None:
            base["applied_reports"] = {"$ne": dedupe_key}
        push: dict[str, Any] = {"$push": {"history": _entry_doc(entry)}}
        if dedupe_key is not None:
            push["$addToSet"] = {"applied_reports": dedupe_key}
        forward_set: dict[str, Any] = {"status": entry.status.value}
        if platform_message_id is not None:
            forward_set["platform_message_id"] = platform_message_id
        predecessors = [s.value for s in MessageStatus.predecessors_of(entry.status)]
        with _translated():
            forward = {**push, "$push": _pushes(entry, events), "$set": forward_set}
            moved = self.collection.update_one({**base, "status": {"$in": predecessors}}, forward)
            if moved.modified_count:
                return True
            # not a forward move (late or repeated): keep it in the history only, unless it is a replay
            late: dict[str, Any] = dict(push)
            if platform_message_id is not None:
                late["$set"] = {"platform_message_id": platform_message_id}
            self.collection.update_one(base, late)
        return False


class MongoConversationStore(ConversationStore):
    def __init__(self, db: Database[dict[str, Any]]) -> None:
        self.collection = db.conversations

    def add_conversation(self, conversation: Conversation) -> None:
        with _translated():
            self.collection.insert_one(
                {
                    "_id": conversation.conversation_id,
                    "conversation_type": conversation.conversation_type.value,
                    "participants": [
                        {"user_id": p.user_id, "joined_at": p.joined_at} for p in conversation.participants
                    ],
                    "primary_channel": conversation.primary_channel.value,
                    "channel_id": conversation.channel_id,
                    "message_count": conversation.message_count,
                    "last_sequence": 0,
                    "last_activity_at": conversation.last_activity_at,
                    "created_at": conversation.created_at,
                }
            )

    def get_conversation(self, conversation_id: str) -> Conversation | None:
        with _translated():
            doc = self.collection.find_one({"_id": conversation_id})
        return _conversation(doc) if doc else None

    def share_conversation(self, user_id: str, other_user_id: str) -> bool:
        # the other user's conversations through the index, checked here: SecantusDB scans the whole
        # collection for a filter on two values of one field
        with _translated():
            docs = self.collection.find({"participants.user_id": other_user_id}, projection={"participants.user_id": 1})
            return any(any(p["user_id"] == user_id for p in doc["participants"]) for doc in docs)

    def add_participant(self, conversation_id: str, participant: Participant, capacity: int) -> Conversation | None:
        # one conditional update, so concurrent additions can neither exceed the capacity nor add anyone twice
        # (update_one: SecantusDB finds {_id, ...} by its _id there, but scans the collection in findAndModify)
        with _translated():
            added = self.collection.update_one(
                {
                    "_id": conversation_id,
                    "participants.user_id": {"$ne": participant.user_id},
                    f"participants.{capacity - 1}": {"$exists": False},
                },
                {"$push": {"participants": {"user_id": participant.user_id, "joined_at": participant.joined_at}}},
            )
        return self.get_conversation(conversation_id) if added.modified_count else None

    def remove_participant(self, conversation_id: str, user_id: str) -> Conversation | None:
        with _translated():
            removed = self.collection.update_one(
                {"_id": conversation_id, "participants.user_id": user_id, "participants.1": {"$exists": True}},
                {"$pull": {"participants": {"user_id": user_id}}},
            )
        return self.get_conversation(conversation_id) if removed.modified_count else None

    def conversations_page(
        self, participant: str | None, *, limit: int, before: tuple[datetime, str] | None
    ) -> list[Conversation]:
        query: dict[str, Any] = {} if participant is None else {"participants.user_id": participant}
        if before is not None:
            # `$lte` on the time and the id compared here: SecantusDB plans an `$or` as a collection scan
            query["last_activity_at"] = {"$lte": before[0]}
        found: list[Conversation] = []
        skip = 0
        with _translated():
            while len(found) < limit:
                batch = list(
                    self.collection.find(query)
                    .sort([("last_activity_at", DESCENDING), ("_id", DESCENDING)])
                    .skip(skip)
                    .limit(limit + 1)
                )
                conversations = [_conversation(d) for d in batch]
                found += [
                    c for c in conversations if before is None or (c.last_activity_at, c.conversation_id) < before
                ]
                if len(batch) <= limit:
                    break
                skip += len(batch)
        return found[:limit]

    def open_on_channel(self, user_id: str, channel_id: str) -> Conversation | None:
        with _translated():
            # a customer is in few conversations: the channel and type are checked here, so the index on
            # (participant, activity) serves this as well as a listing, and each send's write to a conversation
            # maintains one index fewer (SecantusDB rewrites every index entry of a document it updates)
            docs = self.collection.find({"participants.user_id": user_id}).sort("last_activity_at", DESCENDING)
            doc = next(
                (
                    d
                    for d in docs
                    if d.get("channel_id") == channel_id and d["conversation_type"] == ConversationType.ONE_TO_ONE.value
                ),
                None,
            )
        return _conversation(doc) if doc else None

    def add_conversation_once(self, conversation: Conversation) -> bool:
        try:
            self.add_conversation(conversation)
        except DuplicateKeyError:
            return False
        return True


class MongoEventOutbox(EventOutbox):
    """Events about a message live on the message (written with their change); any other in `outbox`."""

    def __init__(self, db: Database[dict[str, Any]], *, relay_after: timedelta = RELAY_AFTER) -> None:
        self.collection = db.outbox.with_options(write_concern=DURABLE)
        self.messages = db.messages
        self.relay_after = relay_after

    def keep(self, events: Sequence[DomainEvent]) -> None:
        homeless = [e for e in events if e.message_id is None]
        if not homeless:
            return
        now = utcnow()
        docs = [
            {
                "_id": str(uuid.uuid4()),
                "kept_at": now,
                "source": e.source,
                "detail_type": e.detail_type,
                "detail": e.detail,
            }
            for e in homeless
        ]
        with _translated():
            self.collection.insert_many(docs, ordered=False)

    def published(self, events: Sequence[DomainEvent]) -> None:
        self._pull([(e.message_id, e.event_id) for e in events if e.message_id is not None])

    def pending(self, limit: int) -> list[tuple[str, DomainEvent]]:
        found: list[tuple[str, DomainEvent]] = []
        cutoff = utcnow() - self.relay_after
        with _translated():
            for doc in self.collection.find().sort("kept_at", ASCENDING).limit(limit):
                found.append((doc["_id"], DomainEvent(doc["detail_type"], doc["detail"], doc["source"])))
            if len(found) < limit:
                query = {"pending_events.kept_at": {"$lte": cutoff}}
                for doc in self.messages.find(query, projection={"pending_events": 1}).limit(limit - len(found)):
                    for e in doc.get("pending_events", []):
                        if e["kept_at"] <= cutoff and len(found) < limit:
                            event = DomainEvent(e["detail_type"], e["detail"], e["source"], e["id"], doc["_id"])
                            found.append((f"{MESSAGE_EVENT}{doc['_id']}/{e['id']}", event))
        return found

    def remove(self, outbox_ids: Sequence[str]) -> None:
        on_messages = [i.removeprefix(MESSAGE_EVENT).split("/", 1) for i in outbox_ids if i.startswith(MESSAGE_EVENT)]
        self._pull([(message_id, event_id) for message_id, event_id in on_messages])
        own = [i for i in outbox_ids if not i.startswith(MESSAGE_EVENT)]
        if own:
            with _translated():
                self.collection.delete_many({"_id": {"$in": own}})

    def _pull(self, events: list[tuple[str, str]]) -> None:
        """Forget published events on their messages, PULL_CHUNK messages per update.

        SecantusDB matches each message's events against the update's whole `$in` list while it holds the
        collection's write lock (server CPU per update: 10 messages 7 ms, 100 64 ms, 400 0.49 s); a route run
        through a busy conversation forgets hundreds at once, and every send's insert waited 4-5 s behind it.
        """
        by_message: dict[str, list[str]] = {}
        for message_id, event_id in events:
            by_message.setdefault(message_id, []).append(event_id)
        message_ids = list(by_message)
        for start in range(0, len(message_ids), PULL_CHUNK):
            chunk = message_ids[start : start + PULL_CHUNK]
            with _translated():
                self.messages.update_many(
                    {"_id": {"$in": chunk}},
                    {"$pull": {"pending_events": {"id": {"$in": [e for m in chunk for e in by_message[m]]}}}},
                )


class MongoCheck(DependencyCheck):
    name = "mongodb"

    def __init__(self, db: Database[dict[str, Any]]) -> None:
        self.db = db

    def check(self) -> None:
        self.db.command("ping")
