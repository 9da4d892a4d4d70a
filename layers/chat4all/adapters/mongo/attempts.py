"""The attempt journal of whatever is sent to a platform: a one-to-one message (`messages`) or a GROUP message's
delivery to one recipient (`deliveries`). Both documents keep it in the same fields, written the same way:

- the claim before the platform call and the receipt after it are journaled on a majority (DURABLE);
- every write is conditional on the attempt as it was read (`delivery_attempts`, `attempt`), so an invocation that
  outlived its lease can record nothing over the one that settled it;
- every update finds its document by `_id` (SecantusDB answers an update's `_id` equality from the id, whatever
  else the filter holds), with no findAndModify: SecantusDB plans one on `_id` plus other fields as a collection
  scan (docs/MONGODB.md), so a claim's new number is known without reading it back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from chat4all.adapters.mongo.connection import translated
from chat4all.adapters.mongo.documents import pushes
from chat4all.domain.models import MessageStatus

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from datetime import datetime

    from pymongo.collection import Collection

    from chat4all.domain.models import DomainEvent, StatusEntry

PENDING = MessageStatus.PENDING.value


def claim(
    durable: Collection[dict[str, Any]], doc_id: str, attempts: int, started_at: datetime, lease_until: datetime
) -> int | None:
    """Open attempt `attempts + 1` on a PENDING document with none open and `attempts` made (as read)."""
    counted: dict[str, Any] = {"delivery_attempts": attempts} if attempts else {"delivery_attempts": {"$exists": False}}
    with translated():
        claimed = durable.update_one(
            {"_id": doc_id, "status": PENDING, "attempt": {"$exists": False}} | counted,
            {
                "$set": {
                    "attempt": {"started_at": started_at, "lease_until": lease_until},
                    "delivery_attempts": attempts + 1,
                }
            },
        )
    return attempts + 1 if claimed.modified_count else None


def _open(doc_id: str, attempt: int) -> dict[str, Any]:
    return {"_id": doc_id, "status": PENDING, "attempt": {"$exists": True}, "delivery_attempts": attempt}


def receipt(
    durable: Collection[dict[str, Any]],
    doc_id: str,
    attempt: int,
    entry: StatusEntry,
    platform_message_id: str,
    events: Sequence[DomainEvent],
) -> bool:
    """The platform's receipt for the open `attempt`: its status and id, the attempt closed. False when the
    attempt had been settled meanwhile (the caller keeps the id all the same)."""
    with translated():
        done = durable.update_one(
            _open(doc_id, attempt),
            {
                "$set": {"status": entry.status.value, "platform_message_id": platform_message_id},
                "$push": pushes(entry, events),
                "$unset": {"attempt": "", "retry_at": "", "troubled_since": "", "troubles": ""},
            },
        )
    return bool(done.modified_count)


def release(
    durable: Collection[dict[str, Any]], doc_id: str, attempt: int, retry_at: datetime, error: str, *, spent: bool
) -> bool:
    """Close the open `attempt` without a receipt, to be tried again after `retry_at`; `spent=False` gives the
    attempt back (the count as it was before the claim: none at all for a first claim, as `claim` reads it)."""
    update: dict[str, Any] = {"$set": {"retry_at": retry_at, "last_error": error}, "$unset": {"attempt": ""}}
    if not spent:
        if attempt > 1:
            update["$set"]["delivery_attempts"] = attempt - 1
        else:
            update["$unset"]["delivery_attempts"] = ""
    with translated():
        done = durable.update_one(_open(doc_id, attempt), update)
    return bool(done.modified_count)


def postpone(
    collection: Collection[dict[str, Any]], doc_id: str, retry_at: datetime, troubled_since: datetime, error: str
) -> None:
    """A dependency failed before any platform call: try again after `retry_at`, the trouble counted since the first."""
    with translated():
        collection.update_one(
            {"_id": doc_id, "status": PENDING, "attempt": {"$exists": False}},
            {
                "$set": {"retry_at": retry_at, "last_error": error},
                "$min": {"troubled_since": troubled_since},
                "$inc": {"troubles": 1},
            },
        )


def settle_failed(
    durable: Collection[dict[str, Any]],
    doc_id: str,
    entry: StatusEntry,
    attempt: int | None,
    events: Sequence[DomainEvent],
    also: Mapping[str, Any] | None = None,
) -> bool:
    """FAILED, closing `attempt` (or requiring none open when None), for a PENDING document that also matches
    `also`; False when it was settled already or the attempt is not the open one."""
    query: dict[str, Any] = {"_id": doc_id, "status": PENDING, **(also or {})}
    query["attempt"] = {"$exists": attempt is not None}
    if attempt is not None:
        query["delivery_attempts"] = attempt
    with translated():
        done = durable.update_one(
            query,
            {
                "$set": {"status": MessageStatus.FAILED.value},
                "$push": pushes(entry, events),
                "$unset": {"attempt": "", "retry_at": ""},
            },
        )
    return bool(done.modified_count)
