"""Events not published yet: on their message (`messages.pending_events`, written with the change), or in the
`outbox` collection when they are about no message."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from pymongo import ASCENDING

from chat4all.adapters.mongo.connection import DURABLE, translated
from chat4all.domain.models import DomainEvent, utcnow
from chat4all.ports import EventOutbox

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pymongo.collection import Collection
    from pymongo.database import Database

# an event kept on its message is the live path's to publish for this long; then the relay takes it up
RELAY_AFTER = timedelta(seconds=30)
MESSAGE_EVENT = "message:"
DELIVERY_EVENT = "delivery:"
# messages whose published events one update forgets (MongoEventOutbox._pull)
PULL_CHUNK = 10


class MongoEventOutbox(EventOutbox):
    """Events about a message live on the message (written with their change), those about a GROUP delivery on
    the delivery; any other in `outbox`."""

    def __init__(self, db: Database[dict[str, Any]], *, relay_after: timedelta = RELAY_AFTER) -> None:
        self.collection = db.outbox.with_options(write_concern=DURABLE)
        self.messages = db.messages
        self.deliveries = db.deliveries
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
        with translated():
            self.collection.insert_many(docs, ordered=False)

    def published(self, events: Sequence[DomainEvent]) -> None:
        self._pull([(e.message_id, e.event_id) for e in events if e.message_id is not None and e.delivery_id is None])
        self._pull(
            [(e.delivery_id, e.event_id) for e in events if e.delivery_id is not None], collection=self.deliveries
        )

    def pending(self, limit: int) -> list[tuple[str, DomainEvent]]:
        found: list[tuple[str, DomainEvent]] = []
        cutoff = utcnow() - self.relay_after
        with translated():
            for doc in self.collection.find().sort("kept_at", ASCENDING).limit(limit):
                found.append((doc["_id"], DomainEvent(doc["detail_type"], doc["detail"], doc["source"])))
            if len(found) < limit:
                query = {"pending_events.kept_at": {"$lte": cutoff}}
                for doc in self.messages.find(query, projection={"pending_events": 1}).limit(limit - len(found)):
                    for e in doc.get("pending_events", []):
                        if e["kept_at"] <= cutoff and len(found) < limit:
                            event = DomainEvent(e["detail_type"], e["detail"], e["source"], e["id"], doc["_id"])
                            found.append((f"{MESSAGE_EVENT}{doc['_id']}/{e['id']}", event))
            if len(found) < limit:
                query = {"pending_events.kept_at": {"$lte": cutoff}}
                projection = {"pending_events": 1, "message_id": 1}
                for doc in self.deliveries.find(query, projection=projection).limit(limit - len(found)):
                    for e in doc.get("pending_events", []):
                        if e["kept_at"] <= cutoff and len(found) < limit:
                            event = DomainEvent(
                                e["detail_type"], e["detail"], e["source"], e["id"], doc["message_id"], doc["_id"]
                            )
                            found.append((f"{DELIVERY_EVENT}{doc['_id']}/{e['id']}", event))
        return found

    def remove(self, outbox_ids: Sequence[str]) -> None:
        on_messages = [i.removeprefix(MESSAGE_EVENT).split("/", 1) for i in outbox_ids if i.startswith(MESSAGE_EVENT)]
        self._pull([(message_id, event_id) for message_id, event_id in on_messages])
        on_deliveries = [
            i.removeprefix(DELIVERY_EVENT).split("/", 1) for i in outbox_ids if i.startswith(DELIVERY_EVENT)
        ]
        self._pull([(delivery_id, event_id) for delivery_id, event_id in on_deliveries], collection=self.deliveries)
        own = [i for i in outbox_ids if not i.startswith((MESSAGE_EVENT, DELIVERY_EVENT))]
        if own:
            with translated():
                self.collection.delete_many({"_id": {"$in": own}})

    def _pull(self, events: list[tuple[str, str]], collection: Collection[dict[str, Any]] | None = None) -> None:
        """Forget published events on their messages (or deliveries), PULL_CHUNK documents per update.

        SecantusDB matches each message's events against the update's whole `$in` list while it holds the
        collection's write lock, at a cost that grows with the list; a route run through a busy conversation
        forgets hundreds at once, and every send's insert waited seconds behind it (docs/BENCHMARKS.md,
        "MongoDB (SecantusDB)").
        """
        by_message: dict[str, list[str]] = {}
        for message_id, event_id in events:
            by_message.setdefault(message_id, []).append(event_id)
        message_ids = list(by_message)
        for start in range(0, len(message_ids), PULL_CHUNK):
            chunk = message_ids[start : start + PULL_CHUNK]
            with translated():
                (self.messages if collection is None else collection).update_many(
                    {"_id": {"$in": chunk}},
                    {"$pull": {"pending_events": {"id": {"$in": [e for m in chunk for e in by_message[m]]}}}},
                )
