"""The `conversations` collection: conversations and their participants."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pymongo import DESCENDING
from pymongo.errors import DuplicateKeyError

from chat4all.adapters.mongo.connection import translated
from chat4all.adapters.mongo.documents import to_conversation
from chat4all.domain.models import Conversation, ConversationType, Participant
from chat4all.ports import ConversationStore

if TYPE_CHECKING:
    from datetime import datetime

    from pymongo.database import Database


class MongoConversationStore(ConversationStore):
    def __init__(self, db: Database[dict[str, Any]]) -> None:
        self.collection = db.conversations

    def add_conversation(self, conversation: Conversation) -> None:
        with translated():
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
        with translated():
            doc = self.collection.find_one({"_id": conversation_id})
        return to_conversation(doc) if doc else None

    def share_conversation(self, user_id: str, other_user_id: str) -> bool:
        # the other user's conversations through the index, checked here: SecantusDB scans the whole
        # collection for a filter on two values of one field
        with translated():
            docs = self.collection.find({"participants.user_id": other_user_id}, projection={"participants.user_id": 1})
            return any(any(p["user_id"] == user_id for p in doc["participants"]) for doc in docs)

    def add_participant(self, conversation_id: str, participant: Participant, capacity: int) -> Conversation | None:
        # one conditional update, so concurrent additions can neither exceed the capacity nor add anyone twice
        # (update_one: SecantusDB finds {_id, ...} by its _id there, but scans the collection in findAndModify)
        with translated():
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
        with translated():
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
        with translated():
            while len(found) < limit:
                batch = list(
                    self.collection.find(query)
                    .sort([("last_activity_at", DESCENDING), ("_id", DESCENDING)])
                    .skip(skip)
                    .limit(limit + 1)
                )
                conversations = [to_conversation(d) for d in batch]
                found += [
                    c for c in conversations if before is None or (c.last_activity_at, c.conversation_id) < before
                ]
                if len(batch) <= limit:
                    break
                skip += len(batch)
        return found[:limit]

    def open_on_channel(self, user_id: str, channel_id: str) -> Conversation | None:
        with translated():
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
        return to_conversation(doc) if doc else None

    def record_inbound(self, conversation_id: str, at: datetime) -> None:
        with translated():
            # by `_id` alone, `$max` keeps the later time: a late or replayed webhook never moves it back
            self.collection.update_one({"_id": conversation_id}, {"$max": {"last_inbound_at": at}})

    def add_conversation_once(self, conversation: Conversation) -> bool:
        try:
            self.add_conversation(conversation)
        except DuplicateKeyError:
            return False
        return True
