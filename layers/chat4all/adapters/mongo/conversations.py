"""The `conversations` collection: conversations and their participants, each participant also in
`participations` (what a user's conversations are read from), written in the same transaction."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pymongo import DESCENDING

from chat4all.adapters.mongo.connection import inserted, translated
from chat4all.adapters.mongo.documents import to_conversation
from chat4all.adapters.mongo.participations import participation_doc, participation_docs, participation_id
from chat4all.domain.models import Conversation, ConversationType, Participant
from chat4all.ports import ConversationStore

if TYPE_CHECKING:
    from collections.abc import Callable
    from datetime import datetime

    from pymongo.client_session import ClientSession
    from pymongo.database import Database


class MongoConversationStore(ConversationStore):
    def __init__(self, db: Database[dict[str, Any]]) -> None:
        self.db = db
        self.collection = db.conversations
        self.participations = db.participations

    def _transaction[T](self, work: Callable[[ClientSession], T]) -> T:
        # with_transaction runs `work` again on a transient conflict (a send to the same conversation)
        with translated(), self.db.client.start_session() as session:
            return session.with_transaction(work)

    def add_conversation(self, conversation: Conversation) -> None:
        def add(session: ClientSession) -> None:
            self.collection.insert_one(conversation_doc(conversation), session=session)
            if conversation.participants:
                self.participations.insert_many(participation_docs(conversation), session=session)

        self._transaction(add)

    def get_conversation(self, conversation_id: str) -> Conversation | None:
        with translated():
            doc = self.collection.find_one({"_id": conversation_id})
        return to_conversation(doc) if doc else None

    def share_conversation(self, user_id: str, other_user_id: str) -> bool:
        with translated():
            theirs = self.participations.find({"user_id": other_user_id}, projection={"conversation_id": 1})
            mine = [participation_id(doc["conversation_id"], user_id) for doc in theirs]
            return bool(mine) and self.participations.find_one({"_id": {"$in": mine}}, {"_id": 1}) is not None

    def add_participant(self, conversation_id: str, participant: Participant, capacity: int) -> Conversation | None:
        # one conditional update, so concurrent additions can neither exceed the capacity nor add anyone twice
        # (update_one: SecantusDB finds {_id, ...} by its _id there, but scans the collection in findAndModify)
        def add(session: ClientSession) -> Conversation | None:
            added = self.collection.update_one(
                {
                    "_id": conversation_id,
                    "participants.user_id": {"$ne": participant.user_id},
                    f"participants.{capacity - 1}": {"$exists": False},
                },
                {"$push": {"participants": {"user_id": participant.user_id, "joined_at": participant.joined_at}}},
                session=session,
            )
            if not added.modified_count:
                return None
            doc = self.collection.find_one({"_id": conversation_id}, session=session)
            assert doc is not None  # updated in this transaction
            joined = participation_doc(
                conversation_id, participant.user_id, participant.joined_at, doc["last_activity_at"]
            )
            # replaced whole: one left behind by an earlier stay (there is none unless written before this code)
            self.participations.replace_one({"_id": joined["_id"]}, joined, upsert=True, session=session)
            return to_conversation(doc)

        return self._transaction(add)

    def remove_participant(self, conversation_id: str, user_id: str) -> Conversation | None:
        def remove(session: ClientSession) -> Conversation | None:
            removed = self.collection.update_one(
                {"_id": conversation_id, "participants.user_id": user_id, "participants.1": {"$exists": True}},
                {"$pull": {"participants": {"user_id": user_id}}},
                session=session,
            )
            if not removed.modified_count:
                return None
            self.participations.delete_one({"_id": participation_id(conversation_id, user_id)}, session=session)
            doc = self.collection.find_one({"_id": conversation_id}, session=session)
            return to_conversation(doc) if doc else None

        return self._transaction(remove)

    def conversations_page(
        self, participant: str | None, *, limit: int, before: tuple[datetime, str] | None
    ) -> list[Conversation]:
        if participant is not None:
            return self._participant_page(participant, limit=limit, before=before)
        query: dict[str, Any] = {}
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

    def _participant_page(self, user_id: str, *, limit: int, before: tuple[datetime, str] | None) -> list[Conversation]:
        """The user's participations in the order of the index (user_id, last_activity_at, conversation_id), then
        their conversations by `_id`."""
        query: dict[str, Any] = {"user_id": user_id}
        if before is not None:
            query["last_activity_at"] = {"$lte": before[0]}
        order = [("last_activity_at", DESCENDING), ("conversation_id", DESCENDING)]
        chosen: list[str] = []
        skip = 0
        with translated():
            while len(chosen) < limit:
                batch = list(self.participations.find(query).sort(order).skip(skip).limit(limit + 1))
                chosen += [
                    d["conversation_id"]
                    for d in batch
                    if before is None or (d["last_activity_at"], d["conversation_id"]) < before
                ]
                if len(batch) <= limit:
                    break
                skip += len(batch)
            chosen = chosen[:limit]
            docs = {d["_id"]: d for d in self.collection.find({"_id": {"$in": chosen}})} if chosen else {}
        return [to_conversation(docs[c]) for c in chosen if c in docs]

    def open_on_channel(self, user_id: str, channel_id: str) -> Conversation | None:
        with translated():
            # a customer is in few conversations: the channel and type are checked here, on its conversations
            # read by `_id`, so each send's write to a conversation maintains no index on the channel
            mine = self.participations.find({"user_id": user_id}, projection={"conversation_id": 1})
            ids = [doc["conversation_id"] for doc in mine]
            docs = list(self.collection.find({"_id": {"$in": ids}})) if ids else []
        candidates = [
            d
            for d in docs
            if d.get("channel_id") == channel_id and d["conversation_type"] == ConversationType.ONE_TO_ONE.value
        ]
        newest = max(candidates, key=lambda d: (d["last_activity_at"], d["_id"]), default=None)
        return to_conversation(newest) if newest else None

    def add_conversation_once(self, conversation: Conversation) -> bool:
        return inserted(lambda: self.add_conversation(conversation))


def conversation_doc(conversation: Conversation) -> dict[str, Any]:
    return {
        "_id": conversation.conversation_id,
        "conversation_type": conversation.conversation_type.value,
        "participants": [{"user_id": p.user_id, "joined_at": p.joined_at} for p in conversation.participants],
        "primary_channel": conversation.primary_channel.value,
        "channel_id": conversation.channel_id,
        "message_count": conversation.message_count,
        "last_sequence": 0,
        "last_activity_at": conversation.last_activity_at,
        "created_at": conversation.created_at,
    }
