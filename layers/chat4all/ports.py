"""Ports: what the services need from the outside world. Adapters implement them; tests use in-memory fakes."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from chat4all.domain.errors import ChannelRejectedError
from chat4all.domain.models import Delivery, Message

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
    from datetime import datetime

    from chat4all.domain.credentials import ChannelCredentials, Credentials
    from chat4all.domain.files import FileRecord, FileStatus, ScanVerdict, UploadedPart
    from chat4all.domain.models import (
        ApiKey,
        AuditRecord,
        BreakerState,
        ChannelConfig,
        ChannelInfo,
        ChannelRef,
        Conversation,
        DomainEvent,
        ExternalIdentity,
        FetchedMedia,
        InboundMessage,
        MessageStatus,
        OutboundMessage,
        Participant,
        Platform,
        ProviderReceipt,
        StatusEntry,
        StatusReport,
        User,
    )
    from chat4all.domain.wire import MediaFetchJob, RouteJob


# events kept with the change they report, in the same write, until EventOutbox.published forgets them
type Events = Sequence[DomainEvent]

# an audited change of a record: the record as changed, and the audit entry of the change from before to after
type Change[Record] = Callable[[Record], Record]
type Audited[Record] = Callable[[Record, Record], AuditEntry]

# the message to store (its sequence is the store's to give) and the events kept with it, made from its conversation
type OutboundDraft = Callable[[Conversation], tuple[Message, Events]]


@dataclass(frozen=True)
class StoredOutbound:
    """An outbound message as stored, and its conversation's route-job mark as it was before this write (None:
    unmarked, this write set it); chat4all.services.route_jobs decides from it whether to enqueue a job."""

    message: Message
    previous_mark: datetime | None


@dataclass(frozen=True)
class AuditEntry:
    """One append-only audit record, written in the same transaction as the change it describes.

    `before` and `after` are the entity's audited fields (never a secret) around the change; the request id
    and source IP are those of the API request that made it, when one did.
    """

    actor: str
    action: str
    entity_type: str
    entity_id: str
    after: dict[str, Any] | None = field(default_factory=dict)
    before: dict[str, Any] | None = None
    actor_role: str | None = None
    request_id: str | None = None
    source_ip: str | None = None


class UserRepository(ABC):
    """Users and their external identities (PostgreSQL)."""

    @abstractmethod
    def add_user(self, user: User, audit: AuditEntry) -> None: ...

    @abstractmethod
    def get_user(self, user_id: str) -> User | None:
        """The user with its external identities, or None."""

    @abstractmethod
    def add_identity(self, identity: ExternalIdentity, audit: AuditEntry) -> None:
        """Raises ConflictError when (platform, platform_user_id) is linked already."""

    @abstractmethod
    def add_user_with_identity(self, user: User, identity: ExternalIdentity, audit: AuditEntry) -> None:
        """Create a user already linked to a platform account, in one transaction.

        Raises ConflictError (and creates nothing) when the account is linked already.
        """

    @abstractmethod
    def identity_of(self, user_id: str, platform: Platform) -> ExternalIdentity | None: ...

    @abstractmethod
    def identities_of(self, user_ids: Sequence[str]) -> dict[str, list[ExternalIdentity]]:
        """The identities of many users in one read (a GROUP message's recipients), each user's verified ones
        first, then the oldest; a user without any is absent."""

    @abstractmethod
    def user_id_for(self, platform: Platform, platform_user_id: str) -> str | None:
        """The user a platform account is linked to, or None."""

    @abstractmethod
    def update_user(self, user_id: str, change: Change[User], audit: Audited[User]) -> User:
        """Apply `change` to the user under a row lock and store it with `audit(before, after)`, atomically.

        Raises NotFoundError when there is no such user. Writes nothing when `change` returns the user unchanged.
        """

    @abstractmethod
    def remove_identity(self, user_id: str, identity_id: str, audit: Callable[[ExternalIdentity], AuditEntry]) -> None:
        """Unlink one of the user's identities with `audit(removed)`; NotFoundError when the user has no such one."""

    @abstractmethod
    def users_sharing(self, user_id: str, phones: set[str], email_keys: set[str]) -> list[tuple[User, set[str]]]:
        """Other users with one of these phones (their own or a WhatsApp number) or case-folded emails,
        each with what matched ("phone", "email"), oldest first."""


class ChannelRepository(ABC):
    """Channel configurations with credentials encrypted at rest (PostgreSQL)."""

    @abstractmethod
    def add_channel(self, channel: ChannelConfig, audit: AuditEntry) -> None: ...

    @abstractmethod
    def get_channel(self, channel_id: str) -> ChannelConfig | None: ...

    @abstractmethod
    def enabled_channels(self, platform: Platform) -> list[ChannelConfig]:
        """Enabled channels of a platform, oldest first."""

    @abstractmethod
    def list_channels(self) -> list[ChannelInfo]:
        """Every installed channel without its credentials, oldest first."""

    @abstractmethod
    def channel_info(self, channel_id: str) -> ChannelInfo | None: ...

    @abstractmethod
    def update_channel(
        self, channel_id: str, change: Change[ChannelInfo], credentials: Credentials | None, audit: Audited[ChannelInfo]
    ) -> ChannelInfo:
        """Apply `change` (and new credentials, when given) under a row lock with `audit(before, after)`.

        Raises NotFoundError when there is no such channel.
        """

    @abstractmethod
    def reject_credentials(self, channel_id: str, reason: str) -> bool:
        """The platform refused the channel's token: keep why (shown as credentials REJECTED) until new
        credentials are set. False when it was marked already (or there is no such channel)."""

    @abstractmethod
    def delete_channel(self, channel_id: str, audit: Callable[[ChannelInfo], AuditEntry]) -> None:
        """Remove the channel and its credentials with `audit(removed)`; NotFoundError when there is none."""

    @abstractmethod
    def channel_ref(self, channel_id: str) -> ChannelRef | None:
        """The channel without its credentials (nothing is decrypted), or None."""

    @abstractmethod
    def enabled_channel_refs(self, platform: Platform) -> list[ChannelRef]:
        """Enabled channels of a platform without their credentials, oldest first."""

    @abstractmethod
    def channel_for_account(self, platform: Platform, account_id: str) -> ChannelConfig | None:
        """The enabled channel of the platform account a webhook names (decrypting that channel only), or None."""

    @abstractmethod
    def channel_for_webhook_secret(self, platform: Platform, secret_digest: str) -> ChannelConfig | None:
        """The enabled channel whose webhook secret has this SHA-256 hex digest (Telegram), or None."""

    @abstractmethod
    def backfill_webhook_keys(self, platform: Platform | None = None) -> int:
        """Give channels stored before webhook keys existed their account and secret digest; returns how many."""


class ApiKeyRepository(ABC):
    """API keys, stored as hashes only (PostgreSQL)."""

    @abstractmethod
    def add_key(self, key: ApiKey, key_hash: str, audit: AuditEntry) -> None:
        """Store a key by its hash; a no-op (and no audit entry) when that hash exists already."""

    @abstractmethod
    def find_active(self, key_hash: str) -> ApiKey | None:
        """The key with this hash unless it is revoked or bound to a user who is not active."""

    @abstractmethod
    def revoke(self, key_id: str, audit: AuditEntry) -> bool:
        """Revoke an active key; False when no such active key."""


class ConversationStore(ABC):
    """Conversations and their participants (MongoDB)."""

    @abstractmethod
    def add_conversation(self, conversation: Conversation) -> None: ...

    @abstractmethod
    def get_conversation(self, conversation_id: str) -> Conversation | None: ...

    @abstractmethod
    def share_conversation(self, user_id: str, other_user_id: str) -> bool:
        """True when some conversation has both users among its participants."""

    @abstractmethod
    def add_participant(self, conversation_id: str, participant: Participant, capacity: int) -> Conversation | None:
        """Add `participant` unless it is in already or the conversation holds `capacity`; None when not added."""

    @abstractmethod
    def remove_participant(self, conversation_id: str, user_id: str) -> Conversation | None:
        """Remove `user_id` unless it is not in or is the last participant; None when not removed."""

    @abstractmethod
    def conversations_page(
        self, participant: str | None, *, limit: int, before: tuple[datetime, str] | None
    ) -> list[Conversation]:
        """Up to `limit` conversations (of `participant`, or all) older in (last_activity_at, id) than `before`,
        newest activity first."""

    @abstractmethod
    def open_on_channel(self, user_id: str, channel_id: str) -> Conversation | None:
        """The one-to-one conversation with the newest activity that `user_id` takes part in on the channel."""

    @abstractmethod
    def add_conversation_once(self, conversation: Conversation) -> bool:
        """Store a new conversation; False (storing nothing) when one with its id exists already."""


class AttemptJournal[Sent](ABC):
    """What is sent to a platform, found by its id, with its attempts and status history: a one-to-one message
    (MessageStore, by `message_id`) or a GROUP message's delivery to one recipient (DeliveryStore, by
    `delivery_id`). Every write is conditional on the attempt as it was read, so that an invocation that outlived
    its lease records nothing over the one that settled it. `events` are kept with the change they report."""

    @abstractmethod
    def begin_attempt(self, sent: Sent, started_at: datetime, lease_until: datetime) -> int | None:
        """Claim it, PENDING as it was read and with no open attempt, and record the attempt durably (journaled)
        before the platform call; returns the attempt's number, from 1, or None when it cannot be claimed
        (settled, or another invocation holds or held an attempt since it was read)."""

    @abstractmethod
    def record_sent(
        self, sent_id: str, attempt: int, entry: StatusEntry, platform_message_id: str, *, events: Events = ()
    ) -> bool:
        """The platform's receipt for `attempt`: SENT with its platform id, attempt closed. True when recorded
        as that attempt's outcome; False when the attempt had been settled meanwhile (the id is kept all the
        same, so that status webhooks still find it)."""

    @abstractmethod
    def end_attempt(self, sent_id: str, attempt: int, retry_at: datetime, error: str, *, spent: bool = True) -> bool:
        """Close `attempt` without a receipt (the platform refused it for now): send again after `retry_at`.
        `spent=False` (the platform answered a rate limit: the request was refused unread) gives the attempt back:
        the count is what it was before the claim, so that waiting for a platform's limit costs no attempt."""

    @abstractmethod
    def postpone(self, sent_id: str, retry_at: datetime, troubled_since: datetime, error: str) -> None:
        """A dependency failed before any platform call: try again after `retry_at`; count the trouble since
        `troubled_since` (kept from the first time)."""

    @abstractmethod
    def settle_failed(
        self, sent_id: str, entry: StatusEntry, *, attempt: int | None = None, events: Events = ()
    ) -> bool:
        """FAILED with the reason in `entry`, closing `attempt` (or requiring none open when None). False when
        it was settled already or the attempt is not the open one (and, for a message, when it was fanned out:
        its status is its deliveries' aggregate)."""

    @abstractmethod
    def append_status(
        self, sent_id: str, entry: StatusEntry, *, dedupe_key: str | None = None, events: Events = ()
    ) -> bool:
        """Record `entry` (a platform's status report) in the history and move the status when it is a forward
        move (keeping `events` then). Returns True when the current status changed. A report whose `dedupe_key`
        was applied before changes nothing at all."""


class MessageStore(AttemptJournal[Message]):
    """Messages, their attempts and status history, and the route-job marks of their conversations (MongoDB)."""

    @abstractmethod
    def add_message(
        self, message: Message, *, events: Events = (), inbound_at: datetime | None = None
    ) -> Message | None:
        """Store a new message as the next of its conversation; None when a message with that id exists already.

        The sequence (`message.sequence` is ignored) and the conversation's `message_count` and activity are
        written atomically with the message: sequences are gap-free and the count exact, whoever sends at once.
        `inbound_at` (a platform's timestamp of this inbound message) becomes the conversation's
        `last_inbound_at` in that same write, unless a later one is kept already: it only moves forward.
        Returns the message as stored. `events` (here and below) are kept on the message with the change they
        report, in the same write, until EventOutbox.published forgets them.
        """

    @abstractmethod
    def add_outbound(self, conversation_id: str, at: datetime, draft: OutboundDraft) -> StoredOutbound | None:
        """`add_message` for a message to deliver at `at`, which also marks its conversation as having route work.

        `draft` makes the message and the events kept with it from the conversation as this write reads it, so
        the sender's right to send is checked on the conversation the message joins; whatever it raises
        (ForbiddenError) undoes the write. NotFoundError when the conversation does not exist.
        The conversation's route-job mark is set in the same transaction when absent, and returned as it was
        before it (the route-job protocol, chat4all.services.route_jobs, steps 1 and 2).
        """

    @abstractmethod
    def release_route_job(self, conversation_id: str) -> bool:
        """Unmark the conversation: its job was never enqueued, or its run ends without a counter to check
        (route_jobs steps 2 and 3). False when the conversation was not marked."""

    @abstractmethod
    def finish_route_job(self, conversation_id: str, last_sequence: int) -> bool:
        """A route run found no more work after reading the conversation's counter as `last_sequence`: unmark
        the conversation unless a message was stored since, in one conditional write (route_jobs step 3). True
        when done (unmarked, or it was not marked); False when the counter moved: the run looks again."""

    @abstractmethod
    def get_message(self, message_id: str) -> Message | None: ...

    @abstractmethod
    def get_messages(self, message_ids: Sequence[str]) -> dict[str, Message]:
        """The messages with these ids that exist, by id, in one read (a lane's window of deliveries)."""

    @abstractmethod
    def mark_fanned_out(self, message_id: str) -> bool:
        """A GROUP message's deliveries exist: it leaves its conversation's `unsettled` (and `stale_pending`) and
        is no longer settled as a whole by route or the dead-letter consumer. False when it was not PENDING."""

    @abstractmethod
    def advance_aggregate(self, message_id: str, entry: StatusEntry, *, events: Events = ()) -> bool:
        """Move a GROUP message's status to `entry.status` (its deliveries' aggregate) when that is a forward
        move, appending `entry` to its history with `events`, in one conditional update; False (nothing written)
        otherwise."""

    @abstractmethod
    def find_by_platform_id(self, platform: Platform, platform_message_id: str) -> Message | None: ...

    @abstractmethod
    def conversation_page(
        self, conversation_id: str, *, limit: int, before_sequence: int | None, since: datetime | None
    ) -> list[Message]:
        """Up to `limit` messages with sequence < before_sequence created at or after `since`, newest first."""

    @abstractmethod
    def unsettled(self, conversation_id: str, limit: int) -> list[Message]:
        """The conversation's lowest-sequence outbound messages that are still PENDING and not fanned out, up to
        `limit`, in order."""

    @abstractmethod
    def stale_pending(self, created_before: datetime, limit: int) -> list[PendingJob]:
        """Outbound messages still PENDING (and not fanned out: their lanes are swept as deliveries) that were
        created before `created_before`, at most `limit` (oldest first), in conversation and sequence order."""


class DeliveryStore(AttemptJournal[Delivery]):
    """A GROUP message's deliveries, one per recipient (MongoDB `deliveries`), and the recipients' lanes with
    their route-job marks (`lanes`; chat4all.services.route_jobs, steps 7-10)."""

    @abstractmethod
    def add_deliveries(self, deliveries: Sequence[Delivery]) -> None:
        """Insert a message's deliveries (each with its `unpublished_events` kept on it) in one write; a
        delivery that exists already is left as it is (a fan-out done again)."""

    @abstractmethod
    def deliveries_of(self, message_id: str) -> list[Delivery]:
        """The message's deliveries, by user_id."""

    @abstractmethod
    def get_delivery(self, delivery_id: str) -> Delivery | None: ...

    @abstractmethod
    def lane_pending(self, conversation_id: str, user_id: str, limit: int) -> list[Delivery]:
        """The recipient's lowest-sequence PENDING deliveries of the conversation, up to `limit`, in order."""

    @abstractmethod
    def find_by_platform_id(self, channel_id: str, platform_message_id: str) -> Delivery | None:
        """The delivery the channel sent as `platform_message_id`, or None."""

    @abstractmethod
    def status_counts(self, message_id: str) -> dict[MessageStatus, int]:
        """How many of the message's deliveries are in each status (one aggregation)."""

    @abstractmethod
    def stale_pending(self, created_before: datetime, limit: int) -> list[PendingJob]:
        """Deliveries still PENDING that were created before `created_before` (at most `limit`, oldest first),
        one job per lane (its lowest sequence), in lane order; each job has its `user_id`."""

    # ---------------------------------------------------------------- lanes (route_jobs steps 7-10)

    @abstractmethod
    def fan_into_lanes(self, conversation_id: str, user_ids: Sequence[str], sequence: int) -> None:
        """Raise each lane's `fanned_sequence` to `sequence` (creating the lane), in one write."""

    @abstractmethod
    def lanes_to_mark(self, conversation_id: str, user_ids: Sequence[str], stale_before: datetime) -> list[str]:
        """Of these lanes, those unmarked or marked before `stale_before` (one read)."""

    @abstractmethod
    def mark_lanes(self, conversation_id: str, user_ids: Sequence[str], at: datetime) -> None:
        """Mark the lanes as having a job (`marked_at`), in one write."""

    @abstractmethod
    def release_lanes(self, conversation_id: str, user_ids: Sequence[str]) -> None:
        """Unmark the lanes (their jobs were not enqueued)."""

    @abstractmethod
    def lane_counter(self, conversation_id: str, user_id: str) -> int | None:
        """The lane's `fanned_sequence`, or None when the lane does not exist."""

    @abstractmethod
    def finish_lane(self, conversation_id: str, user_id: str, fanned_sequence: int) -> bool:
        """Unmark the lane unless its `fanned_sequence` moved from the one read (one conditional write); True
        when done, False when it moved (the run looks again)."""


class OutboundQueue(ABC):
    """Work for the route function, ordered per conversation."""

    @abstractmethod
    def enqueue(self, message_id: str, conversation_id: str, *, dedupe_key: str | None = None) -> None:
        """Ask for the conversation's work to be done; `dedupe_key` (default: the message id) is what the queue
        deduplicates on, so a new key makes a fresh job even within the queue's deduplication window."""

    @abstractmethod
    def requeue(self, jobs: list[PendingJob], round_id: str) -> int:
        """Enqueue `jobs` in batches (in their order, one group per conversation); how many the queue took.

        `round_id` names the round: enqueues of one message in one round are deduplicated, so rounds that run at
        once (two sweeps) add one record, not two. A job with a `user_id` is its lane's (group = conversation and
        recipient).
        """

    @abstractmethod
    def enqueue_lanes(self, jobs: Sequence[RouteJob]) -> list[RouteJob]:
        """Enqueue lane jobs (each with its `user_id`), 10 per call, deduplicated by message and recipient;
        returns those the queue did not take (never raises)."""


class DeadLetterQueue(ABC):
    """Where work goes that was given up on, for an operator to inspect and redrive."""

    @abstractmethod
    def dead_letter(self, job: RouteJob, reason: str) -> None:
        """A copy of the route job of a message given up on, with why (the message is FAILED already)."""


class EventPublisher(ABC):
    """Publishes domain events on the bus."""

    @abstractmethod
    def publish(self, detail_type: str, detail: dict[str, Any], *, source: str = "chat4all") -> None: ...

    def publish_many(self, events: Sequence[DomainEvent]) -> list[DomainEvent]:
        """Publish in as few calls as the bus allows; returns the events that were not published."""
        failed: list[DomainEvent] = []
        for event in events:
            try:
                self.publish(event.detail_type, event.detail, source=event.source)
            except Exception:
                failed.append(event)
        return failed


class EventOutbox(ABC):
    """Events not published yet (MongoDB): on their message, written with the change, or in an outbox."""

    @abstractmethod
    def keep(self, events: Sequence[DomainEvent]) -> None:
        """Keep events the bus did not take (those about a message are kept on it already)."""

    @abstractmethod
    def published(self, events: Sequence[DomainEvent]) -> None:
        """Forget events the bus took, wherever they are kept."""

    @abstractmethod
    def pending(self, limit: int) -> list[tuple[str, DomainEvent]]:
        """Up to `limit` kept events, each with its outbox id; an event on a message only once it is older than
        the live path's chance to publish it."""

    @abstractmethod
    def remove(self, outbox_ids: Sequence[str]) -> None: ...


class CredentialCipher(ABC):
    """Encrypts channel credentials at rest, bound to `context` (a KMS encryption context).

    Ciphertext only decrypts with the context it was encrypted with, so credentials copied to another
    channel's row are unreadable there.
    """

    @abstractmethod
    def encrypt(self, credentials: Credentials, context: dict[str, str] | None = None) -> bytes: ...

    @abstractmethod
    def decrypt(self, ciphertext: bytes, context: dict[str, str] | None = None) -> Credentials: ...


class AuditLog(ABC):
    """Reads the append-only audit log (PostgreSQL)."""

    @abstractmethod
    def entries(self, *, entity_id: str | None, limit: int, before_entry_id: int | None) -> list[AuditRecord]:
        """Up to `limit` entries, newest first, optionally of one entity and older than `before_entry_id`."""


class ChannelConnector(ABC):
    """One platform: webhook verification and parsing, and sending (`chat4all.channels` has one per platform).

    It exchanges domain data only: `OutboundMessage` in and `ProviderReceipt` out, `InboundMessage` and
    `StatusReport` from webhooks; a failed send raises `ChannelRetryableError`, `ChannelRejectedError` or
    `ChannelOutcomeUnknownError` (`chat4all.domain.errors`).
    """

    platform: ClassVar[Platform]
    credentials_model: ClassVar[type[ChannelCredentials]]
    # the header whose value names the channel (Telegram's secret token); None where the body names the account
    webhook_secret_header: ClassVar[str | None] = None

    @abstractmethod
    def verify_webhook(self, credentials: Mapping[str, str], headers: Mapping[str, str], raw_body: bytes) -> bool:
        """True when the request was signed with this channel's secret."""

    def account_ids(self, payload: dict[str, Any]) -> list[str]:
        """The installed accounts a webhook body names (before it is verified: the body is untrusted).

        Platforms that name the account in the body (WhatsApp phone_number_id, Instagram entry id) override it;
        Telegram names the bot by the secret token header instead. Never raises: a body whose shape is wrong
        names what it names, and is refused as unattributable (401) before its shape is judged (400).
        """
        return []

    @abstractmethod
    def parse_webhook(
        self, payload: dict[str, Any], account_id: str | None = None
    ) -> list[InboundMessage | StatusReport]:
        """Normalise a verified webhook body into inbound messages and status reports, each with the
        account it named (`account_id`). `account_id` is the account of the channel the webhook was
        attributed to, for platforms whose bodies do not name it (Telegram)."""

    @abstractmethod
    def send(self, credentials: Mapping[str, str], message: OutboundMessage) -> ProviderReceipt:
        """Put one message on the platform.

        Raises ChannelRetryableError when it surely did not arrive (no connection, 429, 5xx),
        ChannelRejectedError when the platform refused it for good (other 4xx), and ChannelOutcomeUnknownError
        when the request left and no usable answer came back (it may have arrived: never send it again).
        """

    def subscription_challenge(self, credentials: Mapping[str, str], params: Mapping[str, str]) -> str | None:
        """The challenge to echo for a subscription check, or None when it is not for this channel."""
        return None

    def fetch_media(self, credentials: Mapping[str, str], reference: str) -> FetchedMedia:
        """The bytes of a file a person sent (`InboundMedia.reference`), streamed (use it as a context manager).

        Raises ChannelRejectedError when the platform will never serve it (it does not know the reference, or this
        platform's connector cannot fetch media), ChannelRetryableError when it may serve it later.
        """
        raise ChannelRejectedError(f"{self.platform} media cannot be fetched by this connector")


class CredentialVerifier(ABC):
    """Asks a platform whether channel credentials work (WhatsApp GET /{id}, Telegram getMe, Instagram /me)."""

    @abstractmethod
    def verify(self, platform: Platform, credentials: Credentials) -> None:
        """Return when the platform accepts them; raise ValidationFailedError when it refuses them and
        DependencyUnavailableError when it cannot be asked."""


@dataclass(frozen=True)
class Passage:
    """What a channel's breaker says to one call: go (`probe` when it is the half-open breaker's one probe), or
    wait `wait_seconds` without spending an attempt: the breaker is open, or (`limited`) the channel's rate."""

    allowed: bool
    probe: bool = False
    wait_seconds: float = 0.0
    limited: bool = False


@dataclass(frozen=True)
class ChannelRate:
    """A channel's token bucket: `per_second` calls a second, at most `burst` at once."""

    per_second: int
    burst: int


class ChannelBreaker(ABC):
    """A circuit breaker per installed channel, its state shared by every function instance (Redis).

    Never raises: when the state cannot be read every call goes through, as without a breaker.
    """

    @abstractmethod
    def admit(self, channel_id: str, rate: ChannelRate | None = None) -> Passage:
        """Whether a platform call of this channel may go now. With `rate`, the channel's token bucket and its
        platform's hold (RequestLimiter's, key `channel_limit_key`) are asked in the same step, after the breaker:
        an open breaker is a wait that takes no token, and an empty or held bucket a `limited` wait that takes no
        probe; a call that may go has taken its token."""

    @abstractmethod
    def record(self, channel_id: str, *, success: bool) -> BreakerState:
        """The outcome of a call that went: a success closes the breaker; a failure that means the platform is
        unwell counts toward opening it (and re-opens a half-open one). Returns the state after. A success whose
        admit found the breaker holding nothing may be taken as changing nothing (not sent to the shared state:
        a failure another instance counted meanwhile is then not forgotten by it)."""

    @abstractmethod
    def state(self, channel_id: str) -> BreakerState:
        """The breaker's state now (CLOSED when it has none), for GET /v1/channels/{id}."""


class RequestLimiter(ABC):
    """Request rates per credential: a token bucket per key, shared by every function instance (Redis)."""

    @abstractmethod
    def wait_seconds(self, key: str, per_second: int, burst: int | None = None) -> float:
        """Take one request from `key`'s bucket, which holds `burst` (else `per_second`) at most and refills
        `per_second` a second: 0 when one was there, else the seconds until one will be. Never raises: when the
        rates cannot be read, every request is let through (the limit protects the platform; it must not take it
        down)."""

    def hold(self, key: str, seconds: float) -> bool:
        """Give `key` no request for `seconds` (a platform's own retry-after), for every instance; a longer hold
        already there stays. True when the key's previous hold ended less than a minute ago: the platform refused
        again right after its own retry-after was honoured. The default: no holds (never raises either)."""
        return False


@dataclass(frozen=True)
class TokenClaims:
    """What a verified OAuth2 JWT says: its subject and the role it grants."""

    subject: str
    role: str | None


class TokenVerifier(ABC):
    """Verifies OAuth2 JWTs of the configured issuer (signature, issuer, audience, expiry)."""

    @abstractmethod
    def verify(self, token: str) -> TokenClaims:
        """The token's claims; UnauthorizedError when it is not a valid token of the issuer,
        DependencyUnavailableError when the issuer's keys cannot be fetched."""


class DependencyCheck(ABC):
    """One dependency /health reports on, and the AWS actions its check calls (granted in template.yaml)."""

    name: str
    iam_actions: tuple[str, ...] = ()

    @abstractmethod
    def check(self) -> None:
        """Return when the dependency answers; raise otherwise."""


@dataclass(frozen=True)
class PendingJob:
    """An outbound message (or, with `user_id`, a GROUP delivery) still PENDING: what the route queue needs to
    take it up again."""

    message_id: str
    conversation_id: str
    sequence: int
    user_id: str | None = None


# ------------------------------------------------------------------ files (issue 18)


class FileStore(ABC):
    """File metadata (MongoDB `files`); the bytes are in an ObjectStorage."""

    @abstractmethod
    def insert(self, record: FileRecord) -> None: ...

    def insert_once(self, record: FileRecord) -> bool:
        """Insert it unless a file of its id exists (a replayed inbound webhook); True when this call inserted it."""
        if self.get(record.file_id) is not None:
            return False
        self.insert(record)
        return True

    @abstractmethod
    def get(self, file_id: str) -> FileRecord | None: ...

    @abstractmethod
    def move(
        self, file_id: str, from_statuses: Sequence[FileStatus], to: FileStatus, **fields: Any
    ) -> FileRecord | None:
        """Set `to` (and `fields`) when the file is in one of `from_statuses`; the record after, else None."""

    @abstractmethod
    def add_conversation(self, file_id: str, conversation_id: str) -> None:
        """The file was carried in a message of that conversation: its participants may read it."""

    @abstractmethod
    def delete(self, file_id: str) -> None: ...


class MediaFetchQueue(ABC):
    """Where an inbound message's file waits to be fetched from its platform (the file-events queue)."""

    @abstractmethod
    def enqueue(self, job: MediaFetchJob) -> None: ...


class ObjectStorage(ABC):
    """The private bucket of files: presigned URLs for clients, streamed reads for the checks."""

    @abstractmethod
    def presign_post(self, key: str, size: int, content_type: str, expires: int) -> dict[str, Any]:
        """One form upload `{method: "POST", url, fields}` that S3 takes only at exactly `size` bytes."""

    @abstractmethod
    def start_multipart(self, key: str, content_type: str) -> str:
        """A new multipart upload's id."""

    @abstractmethod
    def presign_part(self, key: str, upload_id: str, part_number: int, expires: int) -> str: ...

    @abstractmethod
    def list_parts(self, key: str, upload_id: str) -> list[UploadedPart]: ...

    @abstractmethod
    def complete_multipart(self, key: str, upload_id: str, parts: Sequence[UploadedPart]) -> None: ...

    @abstractmethod
    def abort_multipart(self, key: str, upload_id: str) -> None: ...

    @abstractmethod
    def size_of(self, key: str) -> int | None:
        """The stored object's size, None when there is none."""

    @abstractmethod
    def read_range(self, key: str, start: int, length: int) -> bytes: ...

    @abstractmethod
    def stream(self, key: str, chunk_size: int) -> Iterator[bytes]:
        """The object's bytes in chunks of at most `chunk_size`, never all at once."""

    @abstractmethod
    def put(self, key: str, data: bytes, content_type: str) -> None: ...

    @abstractmethod
    def upload(
        self, key: str, chunks: Iterable[bytes], content_type: str, before_complete: Callable[[int], None]
    ) -> int:
        """Store the bytes `chunks` yields, holding one part at most (a multipart upload when they fill more than
        one); `before_complete(size)` runs before the object exists (a raise stops it, and nothing is stored).
        Returns the size."""

    @abstractmethod
    def delete(self, key: str) -> None: ...

    @abstractmethod
    def presign_get(self, key: str, expires: int, filename: str | None = None) -> str: ...


class MalwareScanner(ABC):
    """Scans a stream of bytes; a scanner that cannot decide raises DependencyUnavailableError."""

    @abstractmethod
    def scan(self, chunks: Iterable[bytes]) -> ScanVerdict: ...


class Thumbnailer(ABC):
    @abstractmethod
    def thumbnail(self, chunks: Iterable[bytes]) -> bytes:
        """A small JPEG of the image the chunks hold; ValueError when it is not one that may be decoded."""


# -------------------------------------------------------------- cross-database consistency (services/consistency.py)
@dataclass(frozen=True)
class DocumentRefs:
    """What one MongoDB document names in PostgreSQL (users, at most one channel) and the document it needs."""

    kind: str  # "message", "conversation", "delivery", "participant" (one per participant), "participation"
    document_id: str
    users: tuple[tuple[str, str], ...]  # (role, user_id): ("sender", ...), ("recipient", ...), ("participant", ...)
    channel_id: str | None = None
    settled: bool = True  # nothing of it is still to be sent (a PENDING message or delivery is not settled)
    # the MongoDB document it needs: ("conversation", id) for a message, ("message", id) for a delivery, the
    # participation's id as ("participation", id) for a participant and ("participant", id) for a participation
    parent: tuple[str, str] | None = None


class ReferenceSource(ABC):
    """The MongoDB side, read in pages: every page a list, never a collection at once."""

    @abstractmethod
    def pages(self, kind: str, page_size: int) -> Iterator[list[DocumentRefs]]:
        """The references of one kind (DocumentRefs.kind), about `page_size` at a time."""

    @abstractmethod
    def has_pending_messages(self, conversation_id: str) -> bool: ...

    @abstractmethod
    def existing(self, kind: str, ids: Sequence[str]) -> set[str]:
        """Which of these ids of `kind` (a parent kind of DocumentRefs.parent) exist, asked at once."""


class ReferenceTarget(ABC):
    """The PostgreSQL side: which of these ids exist (asked in batches)."""

    @abstractmethod
    def existing_users(self, user_ids: Sequence[str]) -> set[str]: ...

    @abstractmethod
    def existing_channels(self, channel_ids: Sequence[str]) -> set[str]: ...

    @abstractmethod
    def identities(self, limit: int) -> tuple[int, int, list[str]]:
        """How many external identities there are, how many name a user that does not exist, and (up to
        `limit`) which."""
