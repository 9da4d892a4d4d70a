"""Applying delivery status reported by the platforms; status only ever moves forward.

A report is looked for among the reporting channel's GROUP deliveries first (by channel and platform id), then
among messages. A GROUP message's own status is its deliveries' aggregate (`advance_group_message`), recomputed
after every move of one of them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from chat4all.domain.errors import StatusTargetMissingError
from chat4all.domain.models import MessageStatus, StatusEntry, aggregate_status
from chat4all.services.notifications import collect, delivery_event, message_event
from chat4all.telemetry import count, log_context

if TYPE_CHECKING:
    from contextlib import AbstractContextManager
    from datetime import datetime

    from chat4all.domain.models import Delivery, Message, StatusReport
    from chat4all.ports import ConversationStore, DeliveryStore, EventPublisher, MessageStore

logger = logging.getLogger(__name__)

# the event that reports each move of a GROUP message's aggregate
AGGREGATE_EVENTS = {
    MessageStatus.SENT: "MessageSent",
    MessageStatus.DELIVERED: "MessageStatusChanged",
    MessageStatus.READ: "MessageStatusChanged",
    MessageStatus.FAILED: "MessageFailed",
}


def advance_group_message(
    message: Message, messages: MessageStore, deliveries: DeliveryStore, events: EventPublisher, at: datetime
) -> bool:
    """Recompute a GROUP message's status from its deliveries (one count by status) and move it there when that
    is a forward move (one conditional update, with its history entry and its event); True when it moved.

    Called after each move of a delivery, by whoever made it. The aggregate only ever moves forward as deliveries
    do (a delivery moving on, or failing, can only raise the lowest state of those that have not failed), so a
    count read before a concurrent move gives a state at most as far as the last one, which the conditional
    update leaves alone: whoever moves a delivery last reads every move and writes the final aggregate."""
    counts = deliveries.status_counts(message.message_id)
    status = aggregate_status(counts)
    if status is MessageStatus.PENDING or not message.status.can_move_to(status):
        return False
    failed = counts.get(MessageStatus.FAILED, 0)
    detail = f"every delivery failed ({failed})" if status is MessageStatus.FAILED else None
    entry = StatusEntry(status, at, detail)
    event = message_event(AGGREGATE_EVENTS[status], message, status, at=at, reason=detail)
    moved = messages.advance_aggregate(message.message_id, entry, events=[event])
    if moved:
        collect(events, event)
    return moved


@dataclass
class StatusService:
    messages: MessageStore
    events: EventPublisher
    conversations: ConversationStore | None = None
    deliveries: DeliveryStore | None = None

    def apply(self, report: StatusReport) -> bool:
        """Record a platform's report; True when the delivery's or message's status moved.

        Raises StatusTargetMissingError when the platform message is not known yet: the report may
        have overtaken the route function's write, so the consumer retries it later.
        """
        if self.deliveries is not None and report.channel_id is not None:
            delivery = self.deliveries.find_by_platform_id(report.channel_id, report.platform_message_id)
            if delivery is not None:
                return self._apply_to_delivery(delivery, report)
        message = self.messages.find_by_platform_id(report.platform, report.platform_message_id)
        if message is None:
            raise StatusTargetMissingError(f"no message with {report.platform} id {report.platform_message_id}")
        # the lines applying it carry the message's correlation id, and the reporting webhook's besides
        with _applying(message, report):
            moved = self._apply_to_message(message, report)
            logger.info("status %s %s", report.status, "applied" if moved else "kept in history")
        return moved

    def _apply_to_message(self, message: Message, report: StatusReport) -> bool:
        if not self._sent_through(message, report):
            logger.warning(
                "status report ignored: channel %s reported on a message of another channel (%s)",
                report.channel_id,
                message.message_id,
            )
            return False
        event = message_event("MessageStatusChanged", message, report.status, at=report.at)
        moved = self.messages.append_status(
            message.message_id, report.entry, dedupe_key=report.dedupe_key, events=[event]
        )
        if moved:
            collect(self.events, event)
            count(f"Messages{str(report.status).title()}")  # MessagesDelivered, MessagesRead, MessagesFailed
        return moved

    def _apply_to_delivery(self, delivery: Delivery, report: StatusReport) -> bool:
        """A GROUP recipient's delivery moves forward (history and dedupe as a message's), then its message's
        aggregate."""
        assert self.deliveries is not None
        message = self.messages.get_message(delivery.message_id)
        if message is None:
            raise StatusTargetMissingError(f"delivery {delivery.delivery_id} has no message")
        with _applying(message, report, user_id=delivery.user_id):
            moved = self._move_delivery(delivery, message, report)
            logger.info("delivery status %s %s", report.status, "applied" if moved else "kept in history")
        return moved

    def _move_delivery(self, delivery: Delivery, message: Message, report: StatusReport) -> bool:
        assert self.deliveries is not None
        event = delivery_event(delivery, message, report.status, at=report.at)
        moved = self.deliveries.append_status(
            delivery.delivery_id, report.entry, dedupe_key=report.dedupe_key, events=[event]
        )
        if moved:
            collect(self.events, event)
            count(f"Deliveries{str(report.status).title()}")
            advance_group_message(message, self.messages, self.deliveries, self.events, report.at)
        return moved

    def _sent_through(self, message: Message, report: StatusReport) -> bool:
        """Whether the message is one of the reporting channel's: a channel reports on its own messages only."""
        if report.channel_id is None or self.conversations is None:
            return True
        conversation = self.conversations.get_conversation(message.conversation_id)
        if conversation is None or conversation.channel_id is None:
            return True  # a conversation from before conversations were bound to a channel
        if conversation.primary_channel is not message.channel:
            return True  # sent through the message's platform's only channel, not the conversation's
        return conversation.channel_id == report.channel_id


def _applying(message: Message, report: StatusReport, **keys: str) -> AbstractContextManager[None]:
    """The log keys of the lines applying a report: the message's correlation id, and the reporting webhook's."""
    return log_context(
        correlation_id=message.correlation_id,
        message_id=message.message_id,
        conversation_id=message.conversation_id,
        webhook_correlation_id=report.correlation_id,
        **keys,
    )
