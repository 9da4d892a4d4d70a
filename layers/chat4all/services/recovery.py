"""Recovery: settling what the dead-letter queues hold, and taking up again what was left PENDING.

Two things end up where nothing reads them on their own: a route record that SQS moved to the route
dead-letter queue (its receive count ran out) while the message was still PENDING, and a status report
that SQS moved to the status dead-letter queue. And a message can stay PENDING with no record anywhere:
stored, then the enqueue failed or the process died; or the queue itself lost it (LocalStack keeps
nothing across a restart). The dead-letter consumer settles the first two, the sweeper the third.

Both are safe to run at any time, concurrently with each other and with the route function: settling
is one conditional write (only a message still PENDING and never sent becomes FAILED), and re-enqueueing
a PENDING message is harmless because the route function never sends a message that was sent or
settled already.
"""

from __future__ import annotations

import logging
from dataclasses import KW_ONLY, dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from chat4all.domain.errors import StatusTargetMissingError
from chat4all.domain.models import Direction, MessageStatus, StatusEntry, delivery_id, utcnow
from chat4all.services import route_jobs
from chat4all.services.notifications import collect, delivery_event, message_event
from chat4all.services.statuses import advance_group_message

if TYPE_CHECKING:
    from collections.abc import Callable
    from datetime import datetime

    from chat4all.domain.models import StatusReport
    from chat4all.ports import DeliveryStore, EventPublisher, MessageStore, OutboundQueue
    from chat4all.services.statuses import StatusService

logger = logging.getLogger(__name__)

DEFAULT_PENDING_AFTER_SECONDS = 120
# a dead-lettered record that cannot be settled (its dependency stays down) is retried this many times
DEAD_LETTER_GIVE_UP_RECEIVES = 20


class StatusSettlement(StrEnum):
    APPLIED = "applied"
    KEPT_IN_HISTORY = "kept in history"
    DROPPED = "dropped"


@dataclass(frozen=True)
class StatusDeadLetterOutcome:
    settlement: StatusSettlement
    reason: str | None = None


@dataclass(frozen=True)
class SweepReport:
    found: int
    requeued: int
    events_published: int = 0


def dead_letter_reason(reason: str | None) -> str:
    """Why a route record is in the dead-letter queue: the route function's own reason when it put it there,
    else SQS's redrive (the route queue's maxReceiveCount ran out before the message was settled)."""
    if reason:
        return f"dead-lettered: {reason}"
    return "dead-lettered: the route queue's receive limit was reached before the message was delivered"


@dataclass
class RecoveryService:
    messages: MessageStore
    queue: OutboundQueue
    statuses: StatusService
    events: EventPublisher
    _: KW_ONLY
    pending_after_seconds: int = DEFAULT_PENDING_AFTER_SECONDS
    clock: Callable[[], datetime] = utcnow
    deliveries: DeliveryStore | None = None

    # ------------------------------------------------------------------ dead-letter queues

    def settle_dead_route(self, message_id: str, conversation_id: str, reason: str, user_id: str | None = None) -> bool:
        """A route record in the dead-letter queue: its message FAILED with `reason` when still PENDING (a lane
        record, with `user_id`: its delivery, and then the message's aggregate).

        The record was its conversation's (its lane's) route job, which later messages may count on: a fresh
        job replaces it (route_jobs.replace_dead_lettered). True when this call settled the message or delivery,
        with its event kept on it and collected; False when it was settled already (sent, failed, or an attempt
        is open: route settles that one), was fanned out (its deliveries are settled one by one), is inbound, or
        does not exist.
        """
        if user_id is not None:
            settled = self._settle_dead_delivery(message_id, user_id, reason)
            route_jobs.replace_dead_lettered(message_id, conversation_id, self.queue, user_id)
            return settled
        settled = False
        message = self.messages.get_message(message_id)
        if (
            message is not None
            and message.direction is Direction.OUTBOUND
            and message.status is MessageStatus.PENDING
            and message.platform_message_id is None
            and not message.fanned_out
        ):
            entry = StatusEntry(MessageStatus.FAILED, self.clock(), reason)
            event = message_event("MessageFailed", message, MessageStatus.FAILED, at=entry.at, reason=reason[:1000])
            # the same conditional write as route's: still PENDING with no attempt open, else nothing changes
            settled = self.messages.settle_failed(message_id, entry, events=[event])
            if settled:
                logger.warning("message %s failed: %s", message_id, reason)
                collect(self.events, event)
        route_jobs.replace_dead_lettered(message_id, conversation_id, self.queue)
        return settled

    def _settle_dead_delivery(self, message_id: str, user_id: str, reason: str) -> bool:
        if self.deliveries is None:
            return False
        delivery = self.deliveries.get_delivery(delivery_id(message_id, user_id))
        message = self.messages.get_message(message_id)
        if (
            delivery is None
            or message is None
            or delivery.status is not MessageStatus.PENDING
            or delivery.platform_message_id is not None
        ):
            return False
        entry = StatusEntry(MessageStatus.FAILED, self.clock(), reason)
        event = delivery_event(delivery, message, MessageStatus.FAILED, at=entry.at, reason=reason[:1000])
        # route's conditional write: still PENDING with no attempt open, else nothing changes
        if not self.deliveries.settle_failed(delivery.delivery_id, entry, events=[event]):
            return False
        logger.warning("delivery %s failed: %s", delivery.delivery_id, reason)
        collect(self.events, event)
        advance_group_message(message, self.messages, self.deliveries, self.events, entry.at)
        return True

    def settle_dead_status(self, report: StatusReport) -> StatusDeadLetterOutcome:
        """A status report in the dead-letter queue, applied once more.

        Its message may have become known since (the report overtook the route function's write for longer
        than the status queue's receives allowed): then it is applied as usual. A report for a platform id
        that no message has is dropped with that reason. Dependency errors propagate, so the record is
        retried (see DEAD_LETTER_GIVE_UP_RECEIVES).
        """
        try:
            moved = self.statuses.apply(report)
        except StatusTargetMissingError as exc:
            return StatusDeadLetterOutcome(StatusSettlement.DROPPED, exc.detail)
        return StatusDeadLetterOutcome(StatusSettlement.APPLIED if moved else StatusSettlement.KEPT_IN_HISTORY)

    # ------------------------------------------------------------------ sweeper

    def sweep(self, pending_after_seconds: int | None = None, limit: int = route_jobs.SWEEP_LIMIT) -> SweepReport:
        """Put every outbound message PENDING for longer than `pending_after_seconds` back on the route queue,
        and a job for every lane with a delivery PENDING that long (route_jobs.sweep); 0 takes up every one."""
        after = self.pending_after_seconds if pending_after_seconds is None else pending_after_seconds
        found, requeued = route_jobs.sweep(self.messages, self.queue, self.clock(), after, limit, self.deliveries)
        return SweepReport(found, requeued)
