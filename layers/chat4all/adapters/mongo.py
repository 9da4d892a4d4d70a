"""MongoDB adapters: messages with their status history, and conversations."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from pymongo import ASCENDING, DESCENDING, MongoClient, ReturnDocument
from pymongo.errors import DuplicateKeyError, PyMongoError

from chat4all.domain.errors import DependencyUnavailableError
from chat4all.domain.models import (
    Conversation,
    ConversationType,
    Direction,
    Message,
    MessageStatus,
    Participant,
    Platform,
    StatusEntry,
)
from chat4all.ports import ConversationStore, DependencyCheck, MessageStore

if TYPE_CHECKING:
    from collections.abc import Iterator
    from datetime import datetime

    from pymongo.database import Database

DEFAULT_DATABASE = "chat4all"


def connect(uri: str) -> Database[dict[str, Any]]:
    client: MongoClient[dict[str, Any]] = MongoClient(
        uri, tz_aware=True, serverSelectionTimeoutMS=5000, connectTimeoutMS=5000, socketTimeoutMS=15000
    )
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
        # A sparse single-field index: the server plans a query on a partial compound index as a collection
        # scan (40 ms per status webhook at 3,000 messages), and uses this one. Platform message ids are
        # unique across platforms by their format (wamid..., Instagram mids, Telegram chat-qualified ids).
        if "platform_message_id_unique" in db.messages.index_information():
            db.messages.drop_index("platform_message_id_unique")
        db.messages.create_index("platform_message_id", unique=True, sparse=True, name="platform_message_id_sparse")
        db.conversations.create_index([("participants.user_id", ASCENDING), ("last_activity_at", DESCENDING)])
        db.conversations.create_index([("last_activity_at", DESCENDING), ("_id", DESCENDING)])
        db.conversations.create_index(
            [("participants.user_id", ASCENDING), ("channel_id", ASCENDING), ("last_activity_at", DESCENDING)]
        )


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


def _message(doc: dict[str, Any]) -> Message:
    history = [StatusEntry(MessageStatus(e["status"]), e["at"], e.get("detail")) for e in doc.get("history", [])]
    failure = next((e.detail for e in reversed(history) if e.status is MessageStatus.FAILED), None)
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
        message_type=doc.get("message_type", "text"),
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
    )


class MongoMessageStore(MessageStore):
    def __init__(self, db: Database[dict[str, Any]]) -> None:
        self.collection = db.messages
        self.conversations = db.conversations

    def add_message(self, message: Message) -> bool:
        with _translated():
            try:
                self.collection.insert_one(_message_doc(message))
            except DuplicateKeyError:
                if self.collection.count_documents({"_id": message.message_id}, limit=1):
                    return False
                raise
        return True

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

    def begin_attempt(self, message_id: str) -> int:
        with _translated():
            doc = self.collection.find_one_and_update(
                {"_id": message_id},
                {"$inc": {"delivery_attempts": 1}},
                projection={"delivery_attempts": 1},
                return_document=ReturnDocument.AFTER,
            )
        if doc is None:
            raise DependencyUnavailableError(f"message {message_id} vanished while counting an attempt")
        return int(doc["delivery_attempts"])

    def append_status(
        self,
        message_id: str,
        entry: StatusEntry,
        *,
        platform_message_id: str | None = None,
        dedupe_key: str | None = None,
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
            moved = self.collection.update_one({**base, "status": {"$in": predecessors}}, {**push, "$set": forward_set})
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

    def next_sequence(self, conversation_id: str, at: datetime) -> int:
        with _translated():
            doc = self.collection.find_one_and_update(
                {"_id": conversation_id},
                {"$inc": {"last_sequence": 1, "message_count": 1}, "$max": {"last_activity_at": at}},
                projection={"last_sequence": 1},
                return_document=ReturnDocument.AFTER,
            )
        if doc is None:
            raise DependencyUnavailableError(f"conversation {conversation_id} vanished while allocating a sequence")
        return int(doc["last_sequence"])

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
            # the type is checked here: a field outside the index makes SecantusDB scan the collection
            docs = self.collection.find({"participants.user_id": user_id, "channel_id": channel_id}).sort(
                "last_activity_at", DESCENDING
            )
            doc = next((d for d in docs if d["conversation_type"] == ConversationType.ONE_TO_ONE.value), None)
        return _conversation(doc) if doc else None

    def add_conversation_once(self, conversation: Conversation) -> bool:
        try:
            self.add_conversation(conversation)
        except DuplicateKeyError:
            return False
        return True


class MongoCheck(DependencyCheck):
    name = "mongodb"

    def __init__(self, db: Database[dict[str, Any]]) -> None:
        self.db = db

    def check(self) -> None:
        self.db.command("ping")
