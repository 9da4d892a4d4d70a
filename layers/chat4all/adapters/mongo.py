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
        db.messages.create_index(
            [("channel", ASCENDING), ("platform_message_id", ASCENDING)],
            unique=True,
            partialFilterExpression={"platform_message_id": {"$type": "string"}},
            name="platform_message_id_unique",
        )
        db.conversations.create_index([("participants.user_id", ASCENDING), ("last_activity_at", DESCENDING)])
        db.conversations.create_index(
            [("participants.user_id", ASCENDING), ("primary_channel", ASCENDING), ("last_activity_at", DESCENDING)]
        )
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
            doc = self.collection.find_one({"channel": platform.value, "platform_message_id": platform_message_id})
        return _message(doc) if doc else None

    def conversation_page(
        self, conversation_id: str, *, limit: int, before_sequence: int | None, since: datetime | None
    ) -> list[Message]:
        query: dict[str, Any] = {"conversation_id": conversation_id}
        if before_sequence is not None:
            query["sequence"] = {"$lt": before_sequence}
        if since is not None:
            query["created_at"] = {"$gte": since}
        with _translated():
            docs = list(self.collection.find(query).sort("sequence", DESCENDING).limit(limit))
        return [_message(d) for d in docs]

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

    def latest_for(self, user_id: str, platform: Platform) -> Conversation | None:
        with _translated():
            doc = self.collection.find_one(
                {"participants.user_id": user_id, "primary_channel": platform.value},
                sort=[("last_activity_at", DESCENDING)],
            )
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
        with _translated():
            found = self.collection.find_one(
                {"$and": [{"participants.user_id": user_id}, {"participants.user_id": other_user_id}]},
                projection={"_id": 1},
            )
        return found is not None

    def open_on_channel(self, user_id: str, channel_id: str) -> Conversation | None:
        with _translated():
            doc = self.collection.find_one(
                {
                    "participants.user_id": user_id,
                    "channel_id": channel_id,
                    "conversation_type": ConversationType.ONE_TO_ONE.value,
                },
                sort=[("last_activity_at", DESCENDING)],
            )
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
