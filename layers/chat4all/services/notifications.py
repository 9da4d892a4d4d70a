"""Domain events: written with their change, collected by the unit of work that made it, published when it ends.

One way, for every event about a message:

1. `message_event(...)` makes it, and the store writes it **on the message in the same update as the change it
   reports** (`events=` of MessageStore's writes), so no change is durable without its event.
2. `collect(events, ...)` hands it to the running unit of work (an `EventBuffer`): nothing is published yet.
3. The unit of work ends (`EventBuffer.unit_of_work()`, which the SQS consumers and the HTTP handler open and
   close, whatever the handler did): one PutEvents per 10 events; the published ones are forgotten on their
   messages, the refused ones stay there. A long unit of work publishes every FLUSH_AT events as it goes.
4. `EventRelay.publish_pending_events` (the sweeper) publishes what is still kept after RELAY_AFTER: the process
   died, the bus refused. At least once; a consumer may see an event twice.

The message store is the record; an event is published after the record is written and never at its
expense (a send is not repeated because its event could not be published). The one event not about a message,
the webhooks' ChannelStatusReported, is published on the bus before the webhook is answered 200
(`WebhookService`): if the bus refuses it, the webhook is answered an error and the platform sends it again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from chat4all.domain.models import DomainEvent
from chat4all.domain.wire import MessageEventDetail
from chat4all.ports import EventPublisher

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from datetime import datetime

    from chat4all.domain.models import Delivery, Message, MessageStatus
    from chat4all.ports import EventOutbox

logger = logging.getLogger(__name__)

# events an EventBuffer collects before it publishes them without waiting for the end of its unit of work
FLUSH_AT = 20


def message_event(
    detail_type: str,
    message: Message,
    status: MessageStatus | None = None,
    *,
    at: datetime | None = None,
    platform_message_id: str | None = None,
    reason: str | None = None,
) -> DomainEvent:
    """An event about a message, to be written with the change it reports (the store keeps it until published);
    `at` is the time of the change."""
    detail = MessageEventDetail.of(message, status, at, platform_message_id=platform_message_id, reason=reason)
    return DomainEvent(detail_type, detail.event_detail(), event_id=str(uuid.uuid4()), message_id=message.message_id)


def delivery_event(
    delivery: Delivery,
    message: Message,
    status: MessageStatus,
    *,
    at: datetime,
    platform_message_id: str | None = None,
    reason: str | None = None,
) -> DomainEvent:
    """DeliveryStatusChanged: a GROUP recipient's delivery moved; kept on the delivery with its change."""
    detail = MessageEventDetail.of(message, status, at, platform_message_id=platform_message_id, reason=reason)
    channel = delivery.platform or message.channel
    detail = detail.model_copy(
        update={"user_id": delivery.user_id, "channel_id": delivery.channel_id, "channel": channel}
    )
    return DomainEvent(
        "DeliveryStatusChanged",
        detail.event_detail(),
        event_id=str(uuid.uuid4()),
        message_id=message.message_id,
        delivery_id=delivery.delivery_id,
    )


def collect(events: EventPublisher, *kept: DomainEvent) -> None:
    """Hand events that are kept on their message to the unit of work (a failure leaves them kept: the relay)."""
    try:
        events.publish_many(kept)
    except Exception:
        logger.exception("could not publish %s", ", ".join(e.detail_type for e in kept))


class EventBuffer(EventPublisher):
    """Collects the events of one unit of work (an SQS batch, an API request) for one PutEvents at its end.

    `flush` publishes them (at most 10 per call, the bus's limit) and keeps what the bus refused in the
    outbox; only when the outbox cannot be written either is an event lost, and then it is logged whole.
    A long unit of work (route working through a busy conversation) publishes every `flush_at` events as it
    goes: the bus takes 10 per call, so this costs no call more than one flush at the end, and the events of
    its first messages do not wait for its last.
    """

    def __init__(self, bus: EventPublisher, outbox: EventOutbox, *, flush_at: int = FLUSH_AT) -> None:
        self.bus = bus
        self.outbox = outbox
        self.flush_at = flush_at
        self._pending: list[DomainEvent] = []
        self._lock = threading.Lock()

    def publish(self, detail_type: str, detail: dict[str, Any], *, source: str = "chat4all") -> None:
        self.publish_many([DomainEvent(detail_type, detail, source)])

    def publish_many(self, events: Sequence[DomainEvent]) -> list[DomainEvent]:
        with self._lock:
            self._pending.extend(events)
            full = len(self._pending) >= self.flush_at
        if full:
            self.flush()
        return []

    def flush(self) -> int:
        """Publish what was collected; returns how many the bus took."""
        with self._lock:
            events, self._pending = self._pending, []
        if not events:
            return 0
        try:
            failed = self.bus.publish_many(events)
        except Exception:
            logger.exception("the event bus failed")
            failed = list(events)
        refused = {id(event) for event in failed}
        try:
            self.outbox.published([event for event in events if id(event) not in refused])
        except Exception:  # they stay kept on their messages: the relay publishes them again (at least once)
            logger.exception("could not mark published events")
        if failed:
            self._keep(failed)
        return len(events) - len(failed)

    @contextlib.contextmanager
    def unit_of_work(self) -> Iterator[EventBuffer]:
        """The events collected while the block runs are published when it ends, however it ends."""
        try:
            yield self
        finally:
            self.flush()

    def discard(self) -> None:
        """Forget what was collected (a unit of work that starts afresh)."""
        with self._lock:
            self._pending = []

    def _keep(self, events: Sequence[DomainEvent]) -> None:
        """Events the bus refused: those about a message are kept on it already, any other in the outbox."""
        try:
            self.outbox.keep(events)
            logger.warning("kept %d unpublished events in the outbox", len(events))
        except Exception:
            for event in events:
                logger.error(
                    "event lost: neither the bus nor the outbox took it",
                    extra={"event": json.dumps({"detail-type": event.detail_type, "detail": event.detail})},
                )


@dataclass
class EventRelay:
    """Publishes the events the outbox kept; the scheduled sweeper calls it."""

    bus: EventPublisher
    outbox: EventOutbox

    def publish_pending_events(self, limit: int = 100) -> int:
        """Publish up to `limit` kept events, oldest first; returns how many were published and removed.

        An event published here and then not removed (a crash, MongoDB failing) is published again by the
        next run: at least once.
        """
        kept = self.outbox.pending(limit)
        if not kept:
            return 0
        failed = {id(event) for event in self.bus.publish_many([event for _, event in kept])}
        if failed:
            logger.warning("the bus took %d of %d kept events", len(kept) - len(failed), len(kept))
        published = [outbox_id for outbox_id, event in kept if id(event) not in failed]
        self.outbox.remove(published)
        return len(published)
