"""Delivering accepted messages to their platform: in sequence order, one platform call per message or FAILED.

The route queue's records only say "this conversation has work" (or "this recipient of this GROUP conversation
has deliveries to send": a lane job). Each run sends the conversation's lowest-sequence PENDING message, then
the next, so the queue's order (and any retry, redrive or re-enqueue) cannot reorder what reaches the platform.
Every platform call is recorded as an open attempt (journaled) before it is made and closed with its outcome
after; a run that finds an attempt open past its lease never sends again: it settles the message FAILED,
"outcome unknown". docs/GUARANTEES.md has the whole model.

Channels protect each other and obey their platforms (issue 17). Before a platform call, and before its attempt
is claimed, the channel's token bucket (its `rate_limit`, or the platform's published figure) and its circuit
breaker (both in Redis, shared by every instance) are asked: a wait under a second is slept here; a longer one, an
open breaker, or a platform's own retry-after makes the message (or delivery) wait where it is, holding back the
later ones of its conversation or lane, and its job comes back after the wait. None of these waits spends an
attempt: nothing is claimed, or (a rate-limit answer) the claimed attempt is given back. A message that cannot go
out within the delivery window of its acceptance because of them is FAILED with the reason. The platform's answer
moves the breaker: a receipt or a refusal about this message is the platform being well; 5xx, no connection, no
answer and a rate limit repeated right after its own retry-after are it being unwell.

A GROUP message is not sent by its conversation's run: the run *fans it out* (one `Delivery` per recipient, each
with its own route, in one write; route_jobs steps 7-8 give each recipient's lane a job) and goes on. Each
lane's run sends its PENDING deliveries lowest sequence first with the very protocol of a one-to-one message
(`_Subject`: the same claim, call, receipt, retries and settlement, on the delivery), and after each move of a
delivery the message's status is recomputed as their aggregate (chat4all.services.statuses.advance_group_message).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from dataclasses import KW_ONLY, dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

from chat4all.domain.channel_limits import channel_limit_key, effective_rate_limit
from chat4all.domain.errors import (
    ChannelCredentialsRejectedError,
    ChannelOutcomeUnknownError,
    ChannelRateLimitedError,
    ChannelRecipientRejectedError,
    ChannelRejectedError,
    ChannelRetryableError,
    CredentialsUnreadableError,
    DependencyUnavailableError,
    UndeliverableError,
)
from chat4all.domain.models import (
    ConversationType,
    Delivery,
    MessageStatus,
    OutboundMedia,
    OutboundMessage,
    StatusEntry,
    utcnow,
)
from chat4all.ports import ChannelRate, Passage
from chat4all.services import route_jobs
from chat4all.services.notifications import collect, delivery_event, message_event
from chat4all.services.statuses import advance_group_message
from chat4all.telemetry import accept_to_sent, count, log_context

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from datetime import datetime

    from chat4all.domain.models import (
        ChannelConfig,
        Conversation,
        DomainEvent,
        ExternalIdentity,
        Message,
        Platform,
        ProviderReceipt,
        Sending,
    )
    from chat4all.ports import (
        AttemptJournal,
        ChannelBreaker,
        ChannelConnector,
        ChannelRepository,
        ConversationStore,
        DeliveryStore,
        EventPublisher,
        MessageStore,
        OutboundQueue,
        RequestLimiter,
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
# how long after its acceptance a message may still wait for its channel (an open breaker, the platform's rate
# limits) before it is FAILED: a chat message an hour late has lost most of its worth to the customer and the agent
# should be told it did not go; it is past Meta's rolling one-hour rate-limit windows (Graph API "Rate Limits": the
# business use case limits count calls over the last hour), so a channel Meta throttled has had its limit reset,
# and it is well under the route queue's retention. CHAT4ALL_DELIVERY_WINDOW_SECONDS sets it.
DEFAULT_DELIVERY_WINDOW = timedelta(hours=1)
# a channel's token bucket wait shorter than this is slept in the invocation; a longer one brings the job back
SHORT_WAIT_SECONDS = 1.0
# an open breaker is asked again after its own wait, and never sooner than this
MIN_BREAKER_WAIT_SECONDS = 0.5


def channel_burst(rate: int) -> int:
    """A channel's bucket holds a tenth of a second's calls (at least one): an idle channel may start with that
    burst, and no second ever sees more than its rate and that tenth (a bucket as big as the rate would let a
    channel back from a pause make twice its rate in one second)."""
    return max(1, rate // 10)


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
    # a GROUP delivery's recipient (its dead-letter copy is a lane job)
    user_id: str | None = None
    # the message's correlation id, for the lines its caller logs about it and its dead-letter copy
    correlation_id: str | None = None


@dataclass(frozen=True)
class ConversationProgress:
    """What one run did for a conversation, and when it has work again (None: nothing left to send)."""

    outcomes: list[DeliveryOutcome] = field(default_factory=list)
    retry_after_seconds: float | None = None


@dataclass
class _Subject[Sent: Sending]:
    """What the one-to-one protocol moves: a message, or a GROUP message's delivery to one recipient (`delivery`).
    Each claim, receipt, retry and settlement is its journal's conditional write on it, with the event that reports
    it (MessageSent or MessageFailed; DeliveryStatusChanged) kept in the same write and collected for the unit of
    work; a delivery's move then moves its message's aggregate."""

    service: DeliveryService
    journal: AttemptJournal[Sent]
    sending: Sent
    message: Message

    @staticmethod
    def of_message(service: DeliveryService, message: Message) -> _Subject[Message]:
        return _Subject(service, service.messages, message, message)

    @staticmethod
    def of_delivery(service: DeliveryService, delivery: Delivery, message: Message) -> _Subject[Delivery]:
        assert service.deliveries is not None
        return _Subject(service, service.deliveries, delivery, message)

    @property
    def delivery(self) -> Delivery | None:
        return self.sending if isinstance(self.sending, Delivery) else None

    @property
    def sent_id(self) -> str:
        return self.message.message_id if self.delivery is None else self.delivery.delivery_id

    @property
    def platform(self) -> Platform:
        return (self.delivery.platform if self.delivery is not None else None) or self.message.channel

    @property
    def name(self) -> str:  # for logs
        return f"{'message' if self.delivery is None else 'delivery'} {self.sent_id}"

    @property
    def user_id(self) -> str | None:
        return None if self.delivery is None else self.delivery.user_id

    def begin(self, started: datetime, lease_until: datetime) -> int | None:
        return self.journal.begin_attempt(self.sending, started, lease_until)

    def record_sent(self, attempt: int, entry: StatusEntry, platform_message_id: str) -> bool:
        event = self._event(MessageStatus.SENT, entry.at, platform_message_id=platform_message_id)
        recorded = self.journal.record_sent(self.sent_id, attempt, entry, platform_message_id, events=[event])
        if recorded:
            self._reported(event)
        return recorded

    def end_attempt(self, attempt: int, retry_at: datetime, error: str, *, spent: bool = True) -> bool:
        return self.journal.end_attempt(self.sent_id, attempt, retry_at, error, spent=spent)

    def postpone(self, retry_at: datetime, since: datetime, error: str) -> None:
        self.journal.postpone(self.sent_id, retry_at, since, error)

    def settle_failed(self, entry: StatusEntry, attempt: int | None) -> bool:
        event = self._event(MessageStatus.FAILED, entry.at, reason=(entry.detail or "")[:1000])
        settled = self.journal.settle_failed(self.sent_id, entry, attempt=attempt, events=[event])
        if settled:
            self._reported(event)
        return settled

    def _event(self, status: MessageStatus, at: datetime, **details: str) -> DomainEvent:
        if self.delivery is not None:
            return delivery_event(self.delivery, self.message, status, at=at, **details)
        kind = "MessageSent" if status is MessageStatus.SENT else "MessageFailed"
        return message_event(kind, self.message, status, at=at, **details)

    def _reported(self, event: DomainEvent) -> None:
        service = self.service
        collect(service.events, event)
        if service.deliveries is not None and self.delivery is not None:
            advance_group_message(self.message, service.messages, service.deliveries, service.events, service.clock())

    def outcome(
        self,
        status: MessageStatus,
        platform_message_id: str | None = None,
        *,
        dead_letter: bool = False,
        reason: str | None = None,
    ) -> DeliveryOutcome:
        return DeliveryOutcome(
            self.message.message_id,
            status,
            platform_message_id,
            dead_letter=dead_letter,
            reason=reason,
            conversation_id=self.message.conversation_id,
            user_id=self.user_id,
            correlation_id=self.message.correlation_id,
        )


# a message's subject or a delivery's: what the protocol's steps take
type _AnySubject = _Subject[Message] | _Subject[Delivery]

# what a recipient's route is: the channel's platform, the channel and the recipient's id there; or why none
type _Route = tuple[Platform, str, str] | str


@dataclass
class DeliveryService:
    """Sends a conversation's PENDING messages in sequence order, each with at most one platform call; fans a
    GROUP message out into deliveries, and sends each recipient's lane of deliveries the same way."""

    messages: MessageStore
    conversations: ConversationStore
    users: UserRepository
    channels: ChannelRepository
    connectors: Mapping[Platform, ChannelConnector]
    events: EventPublisher
    _: KW_ONLY
    deliveries: DeliveryStore | None = None
    queue: OutboundQueue | None = None
    trouble_window: timedelta = DEFAULT_TROUBLE_WINDOW
    send_margin: timedelta = SEND_MARGIN
    clock: Callable[[], datetime] = utcnow
    sleep: Callable[[float], None] = time.sleep
    breaker: ChannelBreaker | None = None
    limiter: RequestLimiter | None = None
    delivery_window: timedelta = DEFAULT_DELIVERY_WINDOW
    # a file message's file by link (chat4all.services.files.MediaLinks); None: file messages fail
    media: Callable[[str], OutboundMedia] | None = None
    # channels whose token the platform refused in this container: channel_id -> (reason, the channel's
    # updated_at then); a channel read since with another updated_at had its credentials set anew
    _rejected: dict[str, tuple[str, datetime]] = field(default_factory=dict, init=False, repr=False)

    # ------------------------------------------------------------------ a conversation's run

    def deliver_conversation(self, conversation_id: str, lease_until: datetime) -> ConversationProgress:
        """Send the conversation's unsettled messages in order until none is left or one has to wait; fan each
        GROUP message out to its recipients' lanes.

        `lease_until` is when the calling invocation ends at the latest (Lambda's deadline): no platform call
        is started that could outlive it, and the attempts it opens are others' to settle after it.
        Dependency failures before a platform call become bounded retries (then FAILED); MongoDB being
        unreachable raises DependencyUnavailableError, and the queue brings the work back.
        """
        outcomes: list[DeliveryOutcome] = []
        routes: dict[tuple[str, Platform], tuple[ChannelConfig, str]] = {}  # what this run looked up already
        channels: dict[tuple[Platform, str | None], ChannelConfig | str] = {}
        announced: set[str] = set()
        conversation = self.conversations.get_conversation(conversation_id)
        # the route-job protocol's step 3: the PENDING messages in order, then the conversation unmarked
        for message in route_jobs.pending_messages(conversation_id, conversation, self.messages, self.conversations):
            if message.message_id not in announced:
                # its MessageAccepted (and any event kept since) goes out in this batch's one PutEvents
                announced.add(message.message_id)
                collect(self.events, *message.unpublished_events)
            subject = _Subject.of_message(self, message)
            # every line about this message (the platform call's too) carries its own correlation id
            with log_context(
                correlation_id=message.correlation_id, message_id=message.message_id, conversation_id=conversation_id
            ):
                if _is_group(message, conversation):
                    act = functools.partial(self._fan_out, subject, conversation, channels)
                else:
                    act = functools.partial(self._deliver, subject, conversation, lease_until, routes)
                step = self._step(subject, lease_until, act)
            if not isinstance(step, DeliveryOutcome):
                return ConversationProgress(outcomes, step)
            outcomes.append(step)
        return ConversationProgress(outcomes)

    def _step(
        self, subject: _AnySubject, lease_until: datetime, act: Callable[[], DeliveryOutcome | float]
    ) -> DeliveryOutcome | float:
        """The checks before a message or delivery is worked on: an attempt open elsewhere (wait for its lease,
        then "outcome unknown"), a back-off, the invocation's time; then `act`."""
        now = self.clock()
        sending = subject.sending
        attempt = sending.in_flight
        if attempt is not None:
            if attempt.lease_until > now:
                # another invocation is calling the platform for it right now
                return (attempt.lease_until - now).total_seconds() + LEASE_GRACE_SECONDS
            return self._outcome_unknown(subject)
        if sending.retry_at is not None and sending.retry_at > now:
            return (sending.retry_at - now).total_seconds()
        if now + self.send_margin > lease_until:
            return 0
        return act()

    def _deliver(
        self,
        subject: _AnySubject,
        conversation: Conversation | None,
        lease_until: datetime,
        routes: dict[tuple[str, Platform], tuple[ChannelConfig, str]],
    ) -> DeliveryOutcome | float:
        """One one-to-one message: its outcome, or the seconds after which it can be tried again."""
        try:
            channel, outbound = self._prepare(subject.message, conversation, routes)
        except UndeliverableError as exc:
            return self._fail(subject, exc.detail)
        except DependencyUnavailableError as exc:
            return self._troubled(subject, exc.detail)
        return self._claim_and_call(subject, channel, outbound, lease_until)

    def _claim_and_call(
        self, subject: _AnySubject, channel: ChannelConfig, outbound: OutboundMessage, lease_until: datetime
    ) -> DeliveryOutcome | float:
        rejected = self._credentials_rejected(channel)
        if rejected is not None:
            return self._fail(
                subject,
                f"channel {channel.channel_id}: {channel.platform} rejected its credentials ({rejected}); "
                "its messages fail until new credentials are set",
            )
        wait = self._admission(subject, channel, lease_until)
        if wait is not None:  # nothing claimed: waiting spends no attempt
            return wait
        started = self.clock()
        attempt = subject.begin(started, lease_until)
        if attempt is None:  # another invocation claimed it a moment ago
            return LEASE_GRACE_SECONDS
        # from here on, an exception leaves the attempt open: a later run settles it, it never sends again
        return self._call(subject, channel, outbound, attempt)

    def _credentials_rejected(self, channel: ChannelConfig) -> str | None:
        if channel.credentials_rejected:
            return channel.credentials_rejected
        marked = self._rejected.get(channel.channel_id)
        if marked is not None and marked[1] == channel.updated_at:
            return marked[0]
        return None

    def _admission(
        self, subject: _AnySubject, channel: ChannelConfig, lease_until: datetime
    ) -> DeliveryOutcome | float | None:
        """None when the channel may call its platform now (a token taken from its bucket, its breaker closed or
        this the half-open breaker's probe); else the wait, or FAILED past the delivery window."""
        per_second = effective_rate_limit(channel.platform, channel.rate_limit)
        rate = ChannelRate(per_second, channel_burst(per_second)) if self.limiter is not None else None
        while not (passage := self._passage(channel.channel_id, rate)).allowed:
            wait = passage.wait_seconds
            if not passage.limited:
                why = f"channel {channel.channel_id}'s circuit breaker is open (its platform is failing)"
                return self._wait(subject, max(wait, MIN_BREAKER_WAIT_SECONDS), why)
            if wait >= SHORT_WAIT_SECONDS or self.clock() + timedelta(seconds=wait) + self.send_margin > lease_until:
                why = f"channel {channel.channel_id} is at its rate limit ({per_second}/s) or held by its platform"
                return self._wait(subject, wait, why)
            self.sleep(wait)
        if passage.probe:
            logger.info("%s is the probe of channel %s's breaker", subject.name, channel.channel_id)
        return None

    def _passage(self, channel_id: str, rate: ChannelRate | None) -> Passage:
        """The breaker's answer with the channel's token bucket in the same step; the bucket's alone without one."""
        if self.breaker is not None:
            return self.breaker.admit(channel_id, rate)
        if rate is None or self.limiter is None:
            return Passage(allowed=True)
        wait = self.limiter.wait_seconds(channel_limit_key(channel_id), rate.per_second, rate.burst)
        return Passage(allowed=wait <= 0, wait_seconds=wait, limited=True)

    def _wait(self, subject: _AnySubject, seconds: float, why: str) -> DeliveryOutcome | float:
        """`subject` waits `seconds` without spending an attempt, unless it was accepted longer than the delivery
        window ago: then it is FAILED with why it waited."""
        waited = self.clock() - subject.message.created_at
        if waited >= self.delivery_window:
            window = int(self.delivery_window.total_seconds())
            return self._fail(subject, f"not sent within the delivery window ({window} s after acceptance): {why}")
        logger.info("%s waits %.2f s: %s", subject.name, seconds, why)
        return seconds

    def _record(self, channel: ChannelConfig, *, success: bool) -> None:
        if self.breaker is not None:
            self.breaker.record(channel.channel_id, success=success)

    def _call(
        self, subject: _AnySubject, channel: ChannelConfig, outbound: OutboundMessage, attempt: int
    ) -> DeliveryOutcome | float:
        """The platform call and its outcome by the platform's error class (chat4all.channels.http)."""
        try:
            receipt = self._platform_call(subject, channel, outbound, attempt)
        except ChannelCredentialsRejectedError as exc:
            self._record(channel, success=True)  # the platform answered: it is well, the token is not
            if self.channels.reject_credentials(channel.channel_id, exc.detail):
                logger.warning("channel %s: credentials rejected: %s", channel.channel_id, exc.detail)
            self._rejected[channel.channel_id] = (exc.detail, channel.updated_at)
            return self._fail(subject, f"credentials rejected: {exc.detail}", attempt=attempt)
        except ChannelRejectedError as exc:  # permanent for this message, or for this recipient
            self._record(channel, success=True)
            about = "recipient cannot be reached: " if isinstance(exc, ChannelRecipientRejectedError) else ""
            return self._fail(subject, about + exc.detail, attempt=attempt)
        except ChannelOutcomeUnknownError as exc:
            self._record(channel, success=False)
            return self._fail(subject, f"outcome unknown: {exc.detail}; not sent again, to never send twice", attempt)
        except ChannelRateLimitedError as exc:
            return self._rate_limited(subject, channel, attempt, exc)
        except ChannelRetryableError as exc:
            self._record(channel, success=False)
            return self._retry_or_fail(subject, attempt, exc)
        self._record(channel, success=True)
        return self._record_sent(subject, attempt, receipt)

    def _platform_call(
        self, subject: _AnySubject, channel: ChannelConfig, outbound: OutboundMessage, attempt: int
    ) -> ProviderReceipt:
        """The connector's send (its HTTP call is an X-Ray subsegment: chat4all.channels.http), logged with its
        outcome and duration under the message's keys."""
        started = time.monotonic()
        outcome = "error"
        try:
            receipt = self.connectors[subject.platform].send(channel.credentials, outbound)
            outcome = "sent"
            return receipt
        except Exception as exc:
            outcome = type(exc).__name__
            raise
        finally:
            logger.info(
                "platform call",
                extra={
                    "platform": str(subject.platform),
                    "channel_id": channel.channel_id,
                    "attempt": attempt,
                    "outcome": outcome,
                    "duration_ms": round((time.monotonic() - started) * 1000, 1),
                },
            )

    def _rate_limited(
        self, subject: _AnySubject, channel: ChannelConfig, attempt: int, exc: ChannelRateLimitedError
    ) -> DeliveryOutcome | float:
        """The platform's rate limit: the channel is held for its retry-after (every instance: no call of the channel
        goes before it ends; a pair limit holds only this recipient's message), and the message waits with its
        attempt given back. A limit answered again right after a hold ended counts against the breaker."""
        if exc.channel_wide and self.limiter is not None:
            if self.limiter.hold(channel_limit_key(channel.channel_id), exc.retry_after_seconds):
                self._record(channel, success=False)
        now = self.clock()
        if now - subject.message.created_at >= self.delivery_window:
            window = int(self.delivery_window.total_seconds())
            return self._fail(
                subject, f"not sent within the delivery window ({window} s after acceptance): {exc.detail}", attempt
            )
        subject.end_attempt(attempt, now + timedelta(seconds=exc.retry_after_seconds), exc.detail, spent=False)
        logger.info(
            "%s waits %.2f s for its platform's rate limit: %s", subject.name, exc.retry_after_seconds, exc.detail
        )
        return exc.retry_after_seconds

    def _retry_or_fail(self, subject: _AnySubject, attempt: int, exc: ChannelRetryableError) -> DeliveryOutcome | float:
        """The platform refused for now (429, 5xx, unreachable): another attempt after a back-off, up to three."""
        if attempt >= MAX_ATTEMPTS:
            return self._fail(subject, f"gave up after {attempt} attempts: {exc.detail}", attempt, True)
        delay = backoff_seconds(attempt)
        subject.end_attempt(attempt, self.clock() + timedelta(seconds=delay), exc.detail)
        count("MessagesRetried" if subject.delivery is None else "DeliveriesRetried")
        logger.info("%s is tried again in %s s: %s", subject.name, delay, exc.detail)
        return float(delay)

    def _record_sent(self, subject: _AnySubject, attempt: int, receipt: ProviderReceipt) -> DeliveryOutcome:
        entry = StatusEntry(MessageStatus.SENT, self.clock())
        for pause in (*RECORD_PAUSES_SECONDS, None):
            try:
                if subject.record_sent(attempt, entry, receipt.platform_message_id):
                    latency = (entry.at - subject.message.created_at).total_seconds() * 1000
                    accept_to_sent(str(subject.platform), latency)
                    logger.info("%s SENT", subject.name, extra={"accept_to_sent_ms": round(latency, 1)})
                break
            except DependencyUnavailableError:
                if pause is None:
                    logger.error(
                        "%s was sent as %s but the receipt could not be recorded",
                        subject.name,
                        receipt.platform_message_id,
                    )
                    raise
                self.sleep(pause)
        return subject.outcome(MessageStatus.SENT, receipt.platform_message_id)

    def _outcome_unknown(self, subject: _AnySubject) -> DeliveryOutcome:
        attempt = subject.sending.in_flight
        assert attempt is not None
        reason = (
            f"outcome unknown: platform call {attempt.number} started at {attempt.started_at.isoformat()} and "
            "its invocation ended before the answer was recorded; it was not sent again, to never send twice"
        )
        return self._fail(subject, reason, attempt=attempt.number)

    def _troubled(self, subject: _AnySubject, detail: str) -> DeliveryOutcome | float:
        now = self.clock()
        since = subject.sending.troubled_since or now
        if now - since >= self.trouble_window:
            waited = int((now - since).total_seconds())
            return self._fail(subject, f"gave up after {waited} s of unavailable dependencies: {detail}")
        delay = backoff_seconds(subject.sending.troubles + 1)
        subject.postpone(now + timedelta(seconds=delay), since, detail)
        logger.warning("%s waits %s s: %s", subject.name, delay, detail)
        return float(delay)

    def _prepare(
        self,
        message: Message,
        conversation: Conversation | None,
        routes: dict[tuple[str, Platform], tuple[ChannelConfig, str]],
    ) -> tuple[ChannelConfig, OutboundMessage]:
        """The channel and the recipient's platform id; looked up once per sender and platform in a run."""
        if message.content is None and message.file_id is None:
            raise UndeliverableError("message has no text content")
        key = (message.sender_id, message.channel)
        if key not in routes:
            routes[key] = self._route(message, conversation)
        channel, recipient = routes[key]
        media = self._media_of(message)
        return channel, OutboundMessage(
            message.message_id, recipient, message.content or "", template=message.template, media=media
        )

    def _media_of(self, message: Message) -> OutboundMedia | None:
        """A file message's file by link (a fresh download URL for each send); UndeliverableError when it is gone."""
        if message.file_id is None:
            return None
        if self.media is None:
            raise UndeliverableError("files are not configured here")
        return self.media(message.file_id)

    def _route(self, message: Message, conversation: Conversation | None) -> tuple[ChannelConfig, str]:
        if message.channel not in self.connectors:
            raise UndeliverableError(f"no connector for {message.channel}")
        if conversation is None:
            raise UndeliverableError(f"conversation {message.conversation_id} does not exist")
        recipients = [p.user_id for p in conversation.participants if p.user_id != message.sender_id]
        if len(recipients) != 1:
            raise UndeliverableError(f"a one-to-one message needs one recipient ({len(recipients)} found)")
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
        self, subject: _AnySubject, reason: str, attempt: int | None = None, dead_letter: bool = False
    ) -> DeliveryOutcome:
        entry = StatusEntry(MessageStatus.FAILED, self.clock(), reason)
        if subject.settle_failed(entry, attempt):
            logger.warning("%s failed: %s", subject.name, reason)
        return subject.outcome(MessageStatus.FAILED, dead_letter=dead_letter, reason=reason)

    # ------------------------------------------------------------------ GROUP: the fan-out

    def _fan_out(
        self,
        subject: _Subject[Message],
        conversation: Conversation | None,
        channels: dict[tuple[Platform, str | None], ChannelConfig | str],
    ) -> DeliveryOutcome | float:
        """A GROUP message becomes one delivery per recipient (each with its route, or FAILED with why none),
        its recipients' lanes get their jobs (route_jobs steps 7-8), and it leaves its conversation's run.

        Every write is idempotent, so a fan-out that died half way is done again by the next run: the deliveries
        stored are kept as they are, the lanes are bumped and marked again, a lane job again is harmless."""
        message = subject.message
        recipients = _recipients(message, conversation)
        unsendable = _unsendable(message, conversation, recipients)
        if self.deliveries is None or self.queue is None:
            unsendable = "GROUP deliveries are not configured in this function"
        if unsendable is not None or conversation is None or self.deliveries is None or self.queue is None:
            return self._fail(subject, unsendable or "GROUP deliveries are not configured in this function")
        try:
            routes = self._recipient_routes(recipients, conversation, channels)
        except DependencyUnavailableError as exc:
            return self._troubled(subject, exc.detail)
        now = self.clock()
        deliveries = [self._new_delivery(message, user_id, routes[user_id], now) for user_id in recipients]
        self.deliveries.add_deliveries(deliveries)
        sending = [d.user_id for d in deliveries if d.status is MessageStatus.PENDING]
        if not route_jobs.open_lanes(message, sending, self.deliveries, self.queue, now):
            # a lane job that could not be enqueued: the message stays in its conversation's run, done again
            return self._troubled(subject, "SQS refused lane jobs")
        self.messages.mark_fanned_out(message.message_id)
        failed = [e for d in deliveries for e in d.unpublished_events]
        if failed:
            collect(self.events, *failed)
            advance_group_message(message, self.messages, self.deliveries, self.events, now)
        return subject.outcome(MessageStatus.PENDING)

    def _new_delivery(self, message: Message, user_id: str, route: _Route, now: datetime) -> Delivery:
        pending = StatusEntry(MessageStatus.PENDING, message.created_at)
        if isinstance(route, str):
            delivery = Delivery(
                message.message_id,
                message.conversation_id,
                user_id,
                message.sequence,
                None,
                None,
                MessageStatus.FAILED,
                [pending, StatusEntry(MessageStatus.FAILED, now, route)],
                error=route,
                created_at=now,
            )
            logger.warning("delivery %s failed: %s", delivery.delivery_id, route)
            event = delivery_event(delivery, message, MessageStatus.FAILED, at=now, reason=route[:1000])
            return dataclasses.replace(delivery, unpublished_events=(event,))
        platform, channel_id, address = route
        return Delivery(
            message.message_id,
            message.conversation_id,
            user_id,
            message.sequence,
            platform,
            channel_id,
            MessageStatus.PENDING,
            [pending],
            address=address,
            created_at=now,
        )

    def _recipient_routes(
        self,
        recipients: list[str],
        conversation: Conversation,
        channels: dict[tuple[Platform, str | None], ChannelConfig | str],
    ) -> dict[str, _Route]:
        """Each recipient's route, from one read of every recipient's identities: on the conversation's
        `primary_channel` through its `channel_id` when the recipient has an identity there, else through the
        only enabled channel of the platform of one of their identities (verified first, then the oldest).
        A channel is looked up once per run. DependencyUnavailableError when PostgreSQL or KMS is down."""
        identities = self.users.identities_of(recipients)
        routes: dict[str, _Route] = {}
        for user_id in recipients:
            mine = [i for i in identities.get(user_id, []) if i.platform in self.connectors]
            if not mine:
                routes[user_id] = f"recipient {user_id} has no identity on a platform we send to"
                continue
            routes[user_id] = self._route_through(user_id, mine, conversation, channels)
        return routes

    def _route_through(
        self,
        user_id: str,
        identities: list[ExternalIdentity],
        conversation: Conversation,
        channels: dict[tuple[Platform, str | None], ChannelConfig | str],
    ) -> _Route:
        primary = [i for i in identities if i.platform is conversation.primary_channel]
        candidates = primary or identities
        reasons: list[str] = []
        for identity in candidates:
            channel_id = conversation.channel_id if identity.platform is conversation.primary_channel else None
            key = (identity.platform, channel_id)
            if key not in channels:
                try:
                    channels[key] = self._channel_for(identity.platform, channel_id)
                except UndeliverableError as exc:
                    channels[key] = exc.detail
            found = channels[key]
            if isinstance(found, str):
                reasons.append(found)
                continue
            return found.platform, found.channel_id, identity.platform_user_id
        return f"recipient {user_id} cannot be reached: " + "; ".join(dict.fromkeys(reasons))

    # ------------------------------------------------------------------ GROUP: a recipient's lane

    def deliver_lane(self, conversation_id: str, user_id: str, lease_until: datetime) -> ConversationProgress:
        """Send the recipient's PENDING deliveries of the conversation lowest sequence first, one at a time, each
        as a one-to-one message is sent, until none is left (the lane is unmarked: route_jobs step 9) or one
        has to wait (the lane job comes back after the wait)."""
        if self.deliveries is None:
            raise UndeliverableError("GROUP deliveries are not configured in this function")
        outcomes: list[DeliveryOutcome] = []
        channels: dict[str, ChannelConfig | str] = {}
        for delivery, message in route_jobs.lane_deliveries(conversation_id, user_id, self.deliveries, self.messages):
            collect(self.events, *delivery.unpublished_events)
            if message is None:  # never: messages are not deleted; settled rather than sent without its text
                self.deliveries.settle_failed(
                    delivery.delivery_id, StatusEntry(MessageStatus.FAILED, self.clock(), "its message is gone")
                )
                continue
            subject = _Subject.of_delivery(self, delivery, message)
            with log_context(
                correlation_id=message.correlation_id,
                message_id=message.message_id,
                conversation_id=conversation_id,
                user_id=user_id,
            ):
                step = self._step(
                    subject, lease_until, functools.partial(self._send_delivery, subject, lease_until, channels)
                )
            if not isinstance(step, DeliveryOutcome):
                return ConversationProgress(outcomes, step)
            outcomes.append(step)
        return ConversationProgress(outcomes)

    def _send_delivery(
        self, subject: _Subject[Delivery], lease_until: datetime, channels: dict[str, ChannelConfig | str]
    ) -> DeliveryOutcome | float:
        delivery = subject.sending
        if delivery.platform is None or delivery.channel_id is None or delivery.address is None:
            return self._fail(subject, "delivery has no route")
        if delivery.channel_id not in channels:
            try:
                channels[delivery.channel_id] = self._channel_for(delivery.platform, delivery.channel_id)
            except UndeliverableError as exc:
                channels[delivery.channel_id] = exc.detail
            except DependencyUnavailableError as exc:
                return self._troubled(subject, exc.detail)
        channel = channels[delivery.channel_id]
        if isinstance(channel, str):
            return self._fail(subject, channel)
        outbound = self._delivery_outbound(subject, delivery.address)
        if not isinstance(outbound, OutboundMessage):
            return outbound
        return self._claim_and_call(subject, channel, outbound, lease_until)

    def _delivery_outbound(
        self, subject: _Subject[Delivery], address: str
    ) -> OutboundMessage | DeliveryOutcome | float:
        """A GROUP recipient's message: its text, or its file by link with the text as caption."""
        message = subject.message
        if message.content is None and message.file_id is None:
            return self._fail(subject, "message has no text content")
        try:
            media = self._media_of(message)
        except UndeliverableError as exc:
            return self._fail(subject, exc.detail)
        except DependencyUnavailableError as exc:
            return self._troubled(subject, exc.detail)
        return OutboundMessage(message.message_id, address, message.content or "", media=media)


def _recipients(message: Message, conversation: Conversation | None) -> list[str]:
    """A GROUP message's recipients as it was accepted (a message from before recipients were stored with
    messages: the conversation's other participants now)."""
    if message.recipients is not None:
        return list(message.recipients)
    participants = conversation.participants if conversation is not None else []
    return [p.user_id for p in participants if p.user_id != message.sender_id]


def _unsendable(message: Message, conversation: Conversation | None, recipients: list[str]) -> str | None:
    """Why a GROUP message cannot be fanned out at all, or None."""
    if message.content is None:
        return "message has no text content"
    if conversation is None:
        return f"conversation {message.conversation_id} does not exist"
    if not recipients:
        return "the group had no other participant when the message was accepted"
    return None


def _is_group(message: Message, conversation: Conversation | None) -> bool:
    """A message fanned out to its recipients: one accepted with recipients, or one accepted in a GROUP before
    recipients were stored with messages."""
    if message.recipients is not None:
        return True
    return conversation is not None and conversation.conversation_type is ConversationType.GROUP
