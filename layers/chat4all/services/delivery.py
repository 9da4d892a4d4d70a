"""Delivering accepted messages to their platform: in sequence order, one platform call per message or FAILED.

The route queue's records only say "this conversation has work". Each run sends the conversation's
lowest-sequence PENDING message, then the next, so the queue's order (and any retry, redrive or re-enqueue)
cannot reorder what reaches the platform. Every platform call is recorded as an open attempt (journaled)
before it is made and closed with its outcome after; a run that finds an attempt open past its lease never
sends again: it settles the message FAILED, "outcome unknown". docs/GUARANTEES.md has the whole model.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

from chat4all.domain.errors import (
    ChannelOutcomeUnknownError,
    ChannelRejectedError,
    ChannelRetryableError,
    CredentialsUnreadableError,
    DependencyUnavailableError,
    UndeliverableError,
)
from chat4all.domain.models import MessageStatus, OutboundMessage, StatusEntry, utcnow
from chat4all.services import route_jobs
from chat4all.services.notifications import collect, message_event

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from datetime import datetime

    from chat4all.domain.models import ChannelConfig, Conversation, Message, Platform, ProviderReceipt
    from chat4all.ports import (
        ChannelConnector,
        ChannelRepository,
        ConversationStore,
        EventPublisher,
        MessageStore,
        UserRepository,
    )

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
BACKOFF_BASE_SECONDS = 2
MAX_BACKOFF_SECONDS = 60
# how long a message may wait on unavailable dependencies (PostgreSQL, KMS, ...) before it is FAILED
DEFAULT_TROUBLE_WINDOW = timedelta(minutes=5)
# a platform call is started only when it can be answered (10 s timeout) and recorded before the lease ends
SEND_MARGIN = timedelta(seconds=15)
# pauses between tries of recording a receipt: a short MongoDB blip must not turn a sent message into "unknown"
RECORD_PAUSES_SECONDS = (0.2, 0.5, 1.0, 2.0)
LEASE_GRACE_SECONDS = 1.0


def backoff_seconds(attempt: int) -> int:
    """Exponential back-off before attempt `attempt + 1`: 2 s, 4 s, 8 s ... at most a minute."""
    return int(min(BACKOFF_BASE_SECONDS**attempt, MAX_BACKOFF_SECONDS))


@dataclass(frozen=True)
class DeliveryOutcome:
    message_id: str
    status: MessageStatus
    platform_message_id: str | None = None
    dead_letter: bool = False
    reason: str | None = None
    conversation_id: str | None = None


@dataclass(frozen=True)
class ConversationProgress:
    """What one run did for a conversation, and when it has work again (None: nothing left to send)."""

    outcomes: list[DeliveryOutcome] = field(default_factory=list)
    retry_after_seconds: float | None = None


class DeliveryService:
    """Sends a conversation's PENDING messages in sequence order, each with at most one platform call."""

    def __init__(
        self,
        messages: MessageStore,
        conversations: ConversationStore,
        users: UserRepository,
        channels: ChannelRepository,
        connectors: Mapping[Platform, ChannelConnector],
        events: EventPublisher,
        *,
        trouble_window: timedelta = DEFAULT_TROUBLE_WINDOW,
        send_margin: timedelta = SEND_MARGIN,
        clock: Callable[[], datetime] = utcnow,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.messages = messages
        self.conversations = conversations
        self.users = users
        self.channels = channels
        self.connectors = connectors
        self.events = events
        self.trouble_window = trouble_window
        self.send_margin = send_margin
        self.clock = clock
        self.sleep = sleep

    def deliver_conversation(self, conversation_id: str, lease_until: datetime) -> ConversationProgress:
        """Send the conversation's unsettled messages in order until none is left or one has to wait.

        `lease_until` is when the calling invocation ends at the latest (Lambda's deadline): no platform call
        is started that could outlive it, and the attempts it opens are others' to settle after it.
        Dependency failures before a platform call become bounded retries (then FAILED); MongoDB being
        unreachable raises DependencyUnavailableError, and the queue brings the work back.
        """
        outcomes: list[DeliveryOutcome] = []
        routes: dict[tuple[str, Platform], tuple[ChannelConfig, str]] = {}  # what this run looked up already
        announced: set[str] = set()
        conversation = self.conversations.get_conversation(conversation_id)
        # the route-job protocol's step 3: the PENDING messages in order, then the conversation unmarked
        for message in route_jobs.pending_messages(conversation_id, conversation, self.messages, self.conversations):
            if message.message_id not in announced:
                # its MessageAccepted (and any event kept since) goes out in this batch's one PutEvents
                announced.add(message.message_id)
                collect(self.events, *message.unpublished_events)
            now = self.clock()
            attempt = message.in_flight
            if attempt is not None:
                if attempt.lease_until > now:
                    # another invocation is calling the platform for it right now
                    wait = (attempt.lease_until - now).total_seconds() + LEASE_GRACE_SECONDS
                    return ConversationProgress(outcomes, wait)
                outcomes.append(self._outcome_unknown(message))
                continue
            if message.retry_at is not None and message.retry_at > now:
                return ConversationProgress(outcomes, (message.retry_at - now).total_seconds())
            if now + self.send_margin > lease_until:
                return ConversationProgress(outcomes, 0)
            step = self._deliver(message, conversation, lease_until, routes)
            if not isinstance(step, DeliveryOutcome):
                return ConversationProgress(outcomes, step)
            outcomes.append(step)
        return ConversationProgress(outcomes)

    def _deliver(
        self,
        message: Message,
        conversation: Conversation | None,
        lease_until: datetime,
        routes: dict[tuple[str, Platform], tuple[ChannelConfig, str]],
    ) -> DeliveryOutcome | float:
        """One message: its outcome, or the seconds after which it can be tried again."""
        try:
            channel, outbound = self._prepare(message, conversation, routes)
        except UndeliverableError as exc:
            return self._fail(message, exc.detail)
        except DependencyUnavailableError as exc:
            return self._troubled(message, exc.detail)
        started = self.clock()
        attempt = self.messages.begin_attempt(message, started, lease_until)
        if attempt is None:  # another invocation claimed it a moment ago
            return LEASE_GRACE_SECONDS
        # from here on, an exception leaves the attempt open: a later run settles it, it never sends again
        return self._call(message, channel, outbound, attempt)

    def _call(
        self, message: Message, channel: ChannelConfig, outbound: OutboundMessage, attempt: int
    ) -> DeliveryOutcome | float:
        try:
            receipt = self.connectors[message.channel].send(channel.credentials, outbound)
        except ChannelRejectedError as exc:
            return self._fail(message, exc.detail, attempt=attempt)
        except ChannelOutcomeUnknownError as exc:
            return self._fail(message, f"outcome unknown: {exc.detail}; not sent again, to never send twice", attempt)
        except ChannelRetryableError as exc:
            return self._retry_or_fail(message, attempt, exc)
        return self._record_sent(message, attempt, receipt)

    def _retry_or_fail(self, message: Message, attempt: int, exc: ChannelRetryableError) -> DeliveryOutcome | float:
        """The platform refused for now (429, 5xx, unreachable): another attempt after a back-off, up to three."""
        if attempt >= MAX_ATTEMPTS:
            return self._fail(message, f"gave up after {attempt} attempts: {exc.detail}", attempt, True)
        delay = backoff_seconds(attempt)
        self.messages.end_attempt(message.message_id, attempt, self.clock() + timedelta(seconds=delay), exc.detail)
        return float(delay)

    def _record_sent(self, message: Message, attempt: int, receipt: ProviderReceipt) -> DeliveryOutcome:
        entry = StatusEntry(MessageStatus.SENT, self.clock())
        event = message_event(
            "MessageSent", message, MessageStatus.SENT, at=entry.at, platform_message_id=receipt.platform_message_id
        )
        recorded = False
        for pause in (*RECORD_PAUSES_SECONDS, None):
            try:
                recorded = self.messages.record_sent(
                    message.message_id, attempt, entry, receipt.platform_message_id, events=[event]
                )
                break
            except DependencyUnavailableError:
                if pause is None:
                    logger.error(
                        "message %s was sent as %s but the receipt could not be recorded",
                        message.message_id,
                        receipt.platform_message_id,
                    )
                    raise
                self.sleep(pause)
        if recorded:
            collect(self.events, event)
        return DeliveryOutcome(
            message.message_id, MessageStatus.SENT, receipt.platform_message_id, conversation_id=message.conversation_id
        )

    def _outcome_unknown(self, message: Message) -> DeliveryOutcome:
        attempt = message.in_flight
        assert attempt is not None
        reason = (
            f"outcome unknown: platform call {attempt.number} started at {attempt.started_at.isoformat()} and "
            "its invocation ended before the answer was recorded; it was not sent again, to never send twice"
        )
        return self._fail(message, reason, attempt=attempt.number)

    def _troubled(self, message: Message, detail: str) -> DeliveryOutcome | float:
        now = self.clock()
        since = message.troubled_since or now
        if now - since >= self.trouble_window:
            waited = int((now - since).total_seconds())
            return self._fail(message, f"gave up after {waited} s of unavailable dependencies: {detail}")
        delay = backoff_seconds(message.troubles + 1)
        self.messages.postpone(message.message_id, now + timedelta(seconds=delay), since, detail)
        logger.warning("message %s waits %s s: %s", message.message_id, delay, detail)
        return float(delay)

    def _prepare(
        self,
        message: Message,
        conversation: Conversation | None,
        routes: dict[tuple[str, Platform], tuple[ChannelConfig, str]],
    ) -> tuple[ChannelConfig, OutboundMessage]:
        """The channel and the recipient's platform id; looked up once per sender and platform in a run."""
        if message.content is None:
            raise UndeliverableError("message has no text content")
        key = (message.sender_id, message.channel)
        if key not in routes:
            routes[key] = self._route(message, conversation)
        channel, recipient = routes[key]
        return channel, OutboundMessage(message.message_id, recipient, message.content)

    def _route(self, message: Message, conversation: Conversation | None) -> tuple[ChannelConfig, str]:
        if message.channel not in self.connectors:
            raise UndeliverableError(f"no connector for {message.channel}")
        if conversation is None:
            raise UndeliverableError(f"conversation {message.conversation_id} does not exist")
        recipients = [p.user_id for p in conversation.participants if p.user_id != message.sender_id]
        if len(recipients) != 1:
            raise UndeliverableError("only one-to-one conversations can be delivered so far")
        identity = self.users.identity_of(recipients[0], message.channel)
        if identity is None:
            raise UndeliverableError(f"recipient {recipients[0]} has no {message.channel} identity")
        return self._channel_for(message.channel, conversation.channel_id), identity.platform_user_id

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

    def _fail(
        self, message: Message, reason: str, attempt: int | None = None, dead_letter: bool = False
    ) -> DeliveryOutcome:
        entry = StatusEntry(MessageStatus.FAILED, self.clock(), reason)
        event = message_event("MessageFailed", message, MessageStatus.FAILED, at=entry.at, reason=reason[:1000])
        if self.messages.settle_failed(message.message_id, entry, attempt=attempt, events=[event]):
            logger.warning("message %s failed: %s", message.message_id, reason)
            collect(self.events, event)
        return DeliveryOutcome(
            message.message_id,
            MessageStatus.FAILED,
            dead_letter=dead_letter,
            reason=reason,
            conversation_id=message.conversation_id,
        )
