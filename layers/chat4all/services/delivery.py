"""Delivering accepted messages to their platform, at most once, with bounded retries."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from chat4all.domain.errors import (
    ChannelRejectedError,
    ChannelRetryableError,
    Chat4AllError,
    CredentialsUnreadableError,
    RetryLaterError,
)
from chat4all.domain.models import Direction, MessageStatus, OutboundMessage, StatusEntry, utcnow
from chat4all.services.notifications import notify

if TYPE_CHECKING:
    from collections.abc import Mapping

    from chat4all.channels.base import ChannelConnector
    from chat4all.domain.models import ChannelConfig, Message, Platform
    from chat4all.ports import ChannelRepository, ConversationStore, EventPublisher, MessageStore, UserRepository

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
BACKOFF_BASE_SECONDS = 2


class UndeliverableError(Chat4AllError):
    """Nothing to send to: no recipient identity, no enabled channel, no connector."""

    status = 422
    title = "Undeliverable"
    slug = "undeliverable"


def backoff_seconds(attempt: int) -> int:
    """Exponential back-off before attempt `attempt + 1`: 2 s, 4 s, 8 s ..."""
    return int(BACKOFF_BASE_SECONDS**attempt)


@dataclass(frozen=True)
class DeliveryOutcome:
    message_id: str
    status: MessageStatus
    platform_message_id: str | None = None
    dead_letter: bool = False
    reason: str | None = None


class DeliveryService:
    """Sends one message to its platform. Never sends a message that already has a platform id."""

    def __init__(
        self,
        messages: MessageStore,
        conversations: ConversationStore,
        users: UserRepository,
        channels: ChannelRepository,
        connectors: Mapping[Platform, ChannelConnector],
        events: EventPublisher,
    ) -> None:
        self.messages = messages
        self.conversations = conversations
        self.users = users
        self.channels = channels
        self.connectors = connectors
        self.events = events

    def deliver(self, message_id: str) -> DeliveryOutcome:
        """Send the message unless it was sent or settled already.

        A 4xx from the platform fails it at once; a 429, 5xx or network failure raises RetryLaterError
        until the third attempt, after which the message is FAILED and the outcome asks for dead-lettering.
        """
        message = self.messages.get_message(message_id)
        if message is None:
            return DeliveryOutcome(message_id, MessageStatus.FAILED, dead_letter=True, reason="message does not exist")
        if (
            message.direction is not Direction.OUTBOUND
            or message.status is not MessageStatus.PENDING
            or message.platform_message_id is not None
        ):
            return DeliveryOutcome(message_id, message.status, message.platform_message_id)
        try:
            channel, outbound = self._prepare(message)
        except UndeliverableError as exc:
            return self._fail(message, exc.detail)
        attempt = self.messages.begin_attempt(message_id)
        try:
            receipt = self.connectors[message.channel].send(channel.credentials, outbound)
        except ChannelRejectedError as exc:
            return self._fail(message, exc.detail)
        except ChannelRetryableError as exc:
            if attempt >= MAX_ATTEMPTS:
                return self._fail(message, f"gave up after {attempt} attempts: {exc.detail}", dead_letter=True)
            raise RetryLaterError(exc.detail, delay_seconds=backoff_seconds(attempt)) from exc
        self.messages.append_status(
            message_id, StatusEntry(MessageStatus.SENT, utcnow()), platform_message_id=receipt.platform_message_id
        )
        notify(self.events, "MessageSent", message, MessageStatus.SENT, platform_message_id=receipt.platform_message_id)
        return DeliveryOutcome(message_id, MessageStatus.SENT, receipt.platform_message_id)

    def _prepare(self, message: Message) -> tuple[ChannelConfig, OutboundMessage]:
        if message.channel not in self.connectors:
            raise UndeliverableError(f"no connector for {message.channel}")
        conversation = self.conversations.get_conversation(message.conversation_id)
        if conversation is None:
            raise UndeliverableError(f"conversation {message.conversation_id} does not exist")
        recipients = [p.user_id for p in conversation.participants if p.user_id != message.sender_id]
        if len(recipients) != 1:
            raise UndeliverableError("only one-to-one conversations can be delivered so far")
        identity = self.users.identity_of(recipients[0], message.channel)
        if identity is None:
            raise UndeliverableError(f"recipient {recipients[0]} has no {message.channel} identity")
        channel = self._channel_for(message.channel, conversation.channel_id)
        if message.content is None:
            raise UndeliverableError("message has no text content")
        return channel, OutboundMessage(message.message_id, identity.platform_user_id, message.content)

    def _channel_for(self, platform: Platform, channel_id: str | None) -> ChannelConfig:
        """The channel the conversation names; never another one that happens to work.

        A message on another platform than the conversation's channel (or a conversation from before channels
        were named) goes through that platform's only enabled channel.
        """
        named = self.channels.channel_ref(channel_id) if channel_id is not None else None
        if channel_id is not None and named is None:
            raise UndeliverableError(f"channel {channel_id} of this conversation was removed")
        if named is None or named.platform is not platform:
            enabled = self.channels.enabled_channel_refs(platform)
            if len(enabled) != 1:
                raise UndeliverableError(f"no single enabled {platform} channel to send through ({len(enabled)} found)")
            named = enabled[0]
        if not named.enabled:
            raise UndeliverableError(f"channel {named.channel_id} is disabled")
        try:
            channel = self.channels.get_channel(named.channel_id)
        except CredentialsUnreadableError as exc:
            raise UndeliverableError(f"channel {named.channel_id}: {exc.detail}") from exc
        if channel is None:
            raise UndeliverableError(f"channel {named.channel_id} was removed")
        return channel

    def _fail(self, message: Message, reason: str, *, dead_letter: bool = False) -> DeliveryOutcome:
        logger.warning("message %s failed: %s", message.message_id, reason)
        self.messages.append_status(message.message_id, StatusEntry(MessageStatus.FAILED, utcnow(), reason))
        notify(self.events, "MessageFailed", message, MessageStatus.FAILED)
        return DeliveryOutcome(message.message_id, MessageStatus.FAILED, dead_letter=dead_letter, reason=reason)
