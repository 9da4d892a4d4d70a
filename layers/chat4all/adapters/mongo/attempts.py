"""The attempt journal of whatever is sent to a platform (chat4all.ports.AttemptJournal): a one-to-one message
(`messages`) or a GROUP message's delivery to one recipient (`deliveries`). Both documents keep it in the same
fields, written the same way:

- the claim before the platform call and the receipt after it are journaled on a majority (DURABLE);
- every write is conditional on the attempt as it was read (`delivery_attempts`, `attempt`), so an invocation that
  outlived its lease can record nothing over the one that settled it;
- every update finds its document by `_id` (SecantusDB answers an update's `_id` equality from the id, whatever
  else the filter holds), with no findAndModify: SecantusDB plans one on `_id` plus other fields as a collection
  scan (docs/MONGODB.md), so a claim's new number is known without reading it back.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

from chat4all.adapters.mongo.connection import DURABLE, translated
from chat4all.adapters.mongo.documents import entry_doc, pushes
from chat4all.domain.models import MessageStatus
from chat4all.ports import AttemptJournal

if TYPE_CHECKING:
    from datetime import datetime

    from pymongo.collection import Collection

    from chat4all.domain.models import StatusEntry
    from chat4all.ports import Events

PENDING = MessageStatus.PENDING.value


def _open(doc_id: str, attempt: int) -> dict[str, Any]:
    return {"_id": doc_id, "status": PENDING, "attempt": {"$exists": True}, "delivery_attempts": attempt}


class MongoAttemptJournal[Sent](AttemptJournal[Sent]):
    """The journal in one collection, whose documents' `_id` is the sent id."""

    # a PENDING document is settled FAILED only when it matches this too
    settles_only: ClassVar[dict[str, Any]] = {}

    def __init__(self, collection: Collection[dict[str, Any]]) -> None:
        self.collection = collection
        self.durable: Collection[dict[str, Any]] = collection.with_options(write_concern=DURABLE)

    @abstractmethod
    def identify(self, sent: Sent) -> tuple[str, int]:
        """Its id and the attempts made, as read."""

    def recorded(self, sent_id: str, entry: StatusEntry) -> None:
        """`entry` has entered the document's history (a message copies it to its status history log)."""

    def begin_attempt(self, sent: Sent, started_at: datetime, lease_until: datetime) -> int | None:
        doc_id, attempts = self.identify(sent)
        made: dict[str, Any] = (
            {"delivery_attempts": attempts} if attempts else {"delivery_attempts": {"$exists": False}}
        )
        with translated():
            claimed = self.durable.update_one(
                {"_id": doc_id, "status": PENDING, "attempt": {"$exists": False}} | made,
                {
                    "$set": {
                        "attempt": {"started_at": started_at, "lease_until": lease_until},
                        "delivery_attempts": attempts + 1,
                    }
                },
            )
        return attempts + 1 if claimed.modified_count else None

    def record_sent(
        self, sent_id: str, attempt: int, entry: StatusEntry, platform_message_id: str, *, events: Events = ()
    ) -> bool:
        with translated():
            done = self.durable.update_one(
                _open(sent_id, attempt),
                {
                    "$set": {"status": entry.status.value, "platform_message_id": platform_message_id},
                    "$push": pushes(entry, events),
                    "$unset": {"attempt": "", "retry_at": "", "troubled_since": "", "troubles": ""},
                },
            )
        if done.modified_count:
            self.recorded(sent_id, entry)
            return True
        # settled meanwhile (the attempt outlived its lease): keep the id so that status reports still match
        self._append(sent_id, entry, platform_message_id=platform_message_id)
        return False

    def end_attempt(self, sent_id: str, attempt: int, retry_at: datetime, error: str, *, spent: bool = True) -> bool:
        update: dict[str, Any] = {"$set": {"retry_at": retry_at, "last_error": error}, "$unset": {"attempt": ""}}
        if not spent:  # the count as it was before the claim: none at all for a first claim, as the claim reads it
            if attempt > 1:
                update["$set"]["delivery_attempts"] = attempt - 1
            else:
                update["$unset"]["delivery_attempts"] = ""
        with translated():
            done = self.durable.update_one(_open(sent_id, attempt), update)
        return bool(done.modified_count)

    def postpone(self, sent_id: str, retry_at: datetime, troubled_since: datetime, error: str) -> None:
        with translated():
            self.collection.update_one(
                {"_id": sent_id, "status": PENDING, "attempt": {"$exists": False}},
                {
                    "$set": {"retry_at": retry_at, "last_error": error},
                    "$min": {"troubled_since": troubled_since},
                    "$inc": {"troubles": 1},
                },
            )

    def settle_failed(
        self, sent_id: str, entry: StatusEntry, *, attempt: int | None = None, events: Events = ()
    ) -> bool:
        query: dict[str, Any] = {"_id": sent_id, "status": PENDING, **self.settles_only}
        query["attempt"] = {"$exists": attempt is not None}
        if attempt is not None:
            query["delivery_attempts"] = attempt
        with translated():
            done = self.durable.update_one(
                query,
                {
                    "$set": {"status": MessageStatus.FAILED.value},
                    "$push": pushes(entry, events),
                    "$unset": {"attempt": "", "retry_at": ""},
                },
            )
        if done.modified_count:
            self.recorded(sent_id, entry)
        return bool(done.modified_count)

    def append_status(
        self, sent_id: str, entry: StatusEntry, *, dedupe_key: str | None = None, events: Events = ()
    ) -> bool:
        return self._append(sent_id, entry, dedupe_key=dedupe_key, events=events)

    def _append(
        self,
        sent_id: str,
        entry: StatusEntry,
        *,
        platform_message_id: str | None = None,
        dedupe_key: str | None = None,
        events: Events = (),
    ) -> bool:
        """append_status, also keeping the platform's id of the message when given."""
        base: dict[str, Any] = {"_id": sent_id}
        late: dict[str, Any] = {"$push": {"history": entry_doc(entry)}}
        if dedupe_key is not None:
            base["applied_reports"] = {"$ne": dedupe_key}
            late["$addToSet"] = {"applied_reports": dedupe_key}
        forward_set: dict[str, Any] = {"status": entry.status.value}
        if platform_message_id is not None:
            forward_set["platform_message_id"] = platform_message_id
            late["$set"] = {"platform_message_id": platform_message_id}
        predecessors = [s.value for s in MessageStatus.predecessors_of(entry.status)]
        forward = {**late, "$push": pushes(entry, events), "$set": forward_set}
        with translated():
            moved = self.collection.update_one({**base, "status": {"$in": predecessors}}, forward).modified_count
            # not a forward move (late or repeated): kept in the history only, unless it is a replay
            kept = moved or self.collection.update_one(base, late).modified_count
        if kept:
            self.recorded(sent_id, entry)
        return bool(moved)
