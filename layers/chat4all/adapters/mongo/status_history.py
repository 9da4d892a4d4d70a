"""Each status move of a message, also appended to the time-series `status_history` where the server has one
(layout.ensure_status_history made it): for reports over time across messages. The message's own `history`
array stays the record (GET /v1/messages/{id}/status reads it with the message, one read by `_id`).

The append follows the message's write, as a second operation (a time-series collection takes no writes in a
multi-document transaction, and one write cannot span two collections): best effort, a failure is logged and
the status move it reports stands. Its `meta` names the message and its conversation; the conversation of a
message moved by `_id` is known from the reads before it (kept here, a message never changes conversation),
else read by `_id`.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from pymongo.errors import PyMongoError

from chat4all.adapters.mongo.layout import STATUS_HISTORY, has_status_history

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from pymongo.database import Database

    from chat4all.domain.models import StatusEntry

log = logging.getLogger(__name__)
REMEMBERED = 10_000


class StatusHistoryLog:
    def __init__(self, db: Database[dict[str, Any]]) -> None:
        self.db = db
        self.collection = db[STATUS_HISTORY]
        self._enabled: bool | None = None
        self._conversations: OrderedDict[str, str] = OrderedDict()

    def enabled(self) -> bool:
        """Whether `status_history` is a time-series collection: asked once per process."""
        if self._enabled is None:
            try:
                self._enabled = has_status_history(self.db)
            except PyMongoError as exc:
                log.warning("status_history not checked (%s): asked again at the next move", exc)
                return False
        return self._enabled

    def remember(self, docs: Iterable[dict[str, Any]]) -> None:
        """The conversations of messages read (what a status move by `_id` follows)."""
        for doc in docs:
            if "conversation_id" in doc:
                self._conversations[doc["_id"]] = doc["conversation_id"]
                self._conversations.move_to_end(doc["_id"])
        while len(self._conversations) > REMEMBERED:
            self._conversations.popitem(last=False)

    def append(self, message_id: str, entries: Sequence[StatusEntry], conversation_id: str | None = None) -> None:
        if not entries or not self.enabled():
            return
        try:
            conversation_id = (
                conversation_id or self._conversations.get(message_id) or self._conversation_of(message_id)
            )
            meta = {"message_id": message_id, "conversation_id": conversation_id}
            docs = [
                {"at": e.at, "meta": meta, "status": e.status.value, **({"detail": e.detail} if e.detail else {})}
                for e in entries
            ]
            self.collection.insert_many(docs, ordered=False)
        except PyMongoError as exc:
            log.warning("status move of %s not appended to %s: %s", message_id, STATUS_HISTORY, exc)

    def _conversation_of(self, message_id: str) -> str | None:
        doc = self.db.messages.find_one({"_id": message_id}, projection={"conversation_id": 1})
        if doc is None:
            return None
        self.remember([doc])
        return str(doc["conversation_id"])
