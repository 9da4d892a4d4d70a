"""Applying delivery status reported by the platforms; status only ever moves forward."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from chat4all.domain.errors import StatusTargetMissingError
from chat4all.domain.models import StatusEntry
from chat4all.services.notifications import collect, message_event

if TYPE_CHECKING:
    from chat4all.domain.models import Message, StatusReport
    from chat4all.ports import ConversationStore, EventPublisher, MessageStore

logger = logging.getLogger(__name__)


class StatusService:
    def __init__(
        self, messages: MessageStore, events: EventPublisher, conversations: ConversationStore | None = None
    ) -> None:
        self.messages = messages
        self.events = events
        self.conversations = conversations

    def apply(self, report: StatusReport) -> bool:
        """Record a platform's report; True when the message's status moved.

        Raises StatusTargetMissingError when the platform message is not known yet: the report may
        have overtaken the route function's write, so the consumer retries it later.
        """
        message = self.messages.find_by_platform_id(report.platform, report.platform_message_id)
        if message is None:
            raise StatusTargetMissingError(f"no message with {report.platform} id {report.platform_message_id}")
        if not self._sent_through(message, report):
            logger.warning(
                "status report ignored: channel %s reported on a message of another channel (%s)",
                report.channel_id,
                message.message_id,
            )
            return False
        event = message_event("MessageStatusChanged", message, report.status, at=report.at)
        moved = self.messages.append_status(
            message.message_id,
            StatusEntry(report.status, report.at, report.detail),
            dedupe_key=report.dedupe_key,
            events=[event],
        )
        if moved:
            collect(self.events, event)
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
