"""What MongoDB's documents name in PostgreSQL, and the participants and participations that mirror each other,
read in pages for the consistency check (chat4all.services.consistency): a cursor per collection with a batch
size, only the fields that hold ids."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from chat4all.adapters.mongo.connection import translated
from chat4all.adapters.mongo.participations import participation_id
from chat4all.ports import DocumentRefs, ReferenceSource

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from pymongo.database import Database

PENDING = "PENDING"
PARENTS = {"conversation": "conversations", "message": "messages", "participation": "participations"}
# kind -> (collection, the fields read). A "participant" is an entry of a conversation's participants and a
# "participation" its mirror in `participations` (what the user's conversation list reads): each must have
# the other, by the participation's id (conversation_id:user_id).
COLLECTIONS = {
    "message": ("messages", {"sender_id": 1, "recipients": 1, "status": 1, "conversation_id": 1}),
    "conversation": ("conversations", {"participants.user_id": 1, "channel_id": 1}),
    "delivery": ("deliveries", {"user_id": 1, "channel_id": 1, "status": 1, "message_id": 1}),
    "participant": ("conversations", {"participants.user_id": 1}),
    "participation": ("participations", {"_id": 1}),
}


def _parent(kind: str, value: Any) -> tuple[str, str] | None:
    return (kind, str(value)) if value is not None else None


def _refs(kind: str, doc: dict[str, Any]) -> list[DocumentRefs]:
    document_id = str(doc["_id"])
    if kind == "message":
        users = [("sender", doc["sender_id"])] if doc.get("sender_id") else []
        users += [("recipient", r) for r in doc.get("recipients") or ()]
        parent = _parent("conversation", doc.get("conversation_id"))
        return [DocumentRefs(kind, document_id, tuple(users), None, doc.get("status") != PENDING, parent)]
    if kind == "conversation":
        users = [("participant", p["user_id"]) for p in doc.get("participants") or ()]
        return [DocumentRefs(kind, document_id, tuple(users), doc.get("channel_id"))]
    if kind == "participant":
        ids = [participation_id(document_id, p["user_id"]) for p in doc.get("participants") or ()]
        return [DocumentRefs(kind, mirror, (), parent=("participation", mirror)) for mirror in ids]
    if kind == "participation":
        return [DocumentRefs(kind, document_id, (), parent=("participant", document_id))]
    users = [("recipient", doc["user_id"])] if doc.get("user_id") else []
    settled = doc.get("status") != PENDING
    parent = _parent("message", doc.get("message_id"))
    return [DocumentRefs(kind, document_id, tuple(users), doc.get("channel_id"), settled, parent)]


class MongoReferenceSource(ReferenceSource):
    def __init__(self, db: Database[dict[str, Any]]) -> None:
        self.db = db

    def pages(self, kind: str, page_size: int) -> Iterator[list[DocumentRefs]]:
        name, projection = COLLECTIONS[kind]
        page: list[DocumentRefs] = []
        with translated():
            # one cursor, fetched batch by batch (getMore): the server streams, nothing holds the collection
            for doc in self.db[name].find({}, projection=projection, batch_size=page_size):
                page += _refs(kind, doc)
                if len(page) >= page_size:
                    yield page
                    page = []
        if page:
            yield page

    def has_pending_messages(self, conversation_id: str) -> bool:
        # the prefix of the index (conversation_id, status, sequence)
        with translated():
            found = self.db.messages.find_one({"conversation_id": conversation_id, "status": PENDING}, {"_id": 1})
        return found is not None

    def existing(self, kind: str, ids: Sequence[str]) -> set[str]:
        # by _id: one $in question per page (at most the page's size of ids)
        if kind == "participant":
            return self._listed_participants(ids)
        name = PARENTS[kind]
        with translated():
            return {str(doc["_id"]) for doc in self.db[name].find({"_id": {"$in": list(ids)}}, {"_id": 1})}

    def _listed_participants(self, ids: Sequence[str]) -> set[str]:
        """Which of these participation ids name a user their conversation lists."""
        conversation_ids = sorted({mirror.partition(":")[0] for mirror in ids})
        projection = {"participants.user_id": 1}
        with translated():
            found = self.db.conversations.find({"_id": {"$in": conversation_ids}}, projection)
            listed = {participation_id(str(c["_id"]), p["user_id"]) for c in found for p in c.get("participants") or ()}
        return listed & set(ids)
