"""Domain vocabulary shared by services, adapters and the API."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic_core import core_schema

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator


def utcnow() -> datetime:
    return datetime.now(UTC)


class Platform(str):
    """A registered platform's name ("WHATSAPP"): a `str`, compared, stored and serialised as its name.

    The names are those of the registered platforms (`chat4all.domain.platforms.register`, which the channel
    modules call); any other is a ValueError, and a 422 in a request model. One object per name, so `is` and
    `==` both compare platforms. The three built-ins are constants; `.value` is the name, as an enum's was.
    """

    __slots__ = ()
    WHATSAPP: ClassVar[Platform]
    TELEGRAM: ClassVar[Platform]
    INSTAGRAM: ClassVar[Platform]
    _registered: ClassVar[dict[str, Platform]] = {}

    def __new__(cls, name: object) -> Platform:
        found = cls._registered.get(name) if isinstance(name, str) else None
        if found is None:
            known = ", ".join(cls._registered)
            raise ValueError(f"{str(name)[:40]!r} is not a platform: one of {known}")
        return found

    @classmethod
    def register(cls, name: str) -> Platform:
        """The platform of this name, made known (chat4all.domain.platforms.register checks the name first)."""
        found = cls._registered.get(name)
        if found is None:
            found = cls._registered[name] = str.__new__(cls, name)
        return found

    @classmethod
    def registered(cls) -> list[Platform]:
        return list(cls._registered.values())

    @property
    def value(self) -> str:
        return str.__str__(self)

    def __repr__(self) -> str:
        return f"Platform({str.__repr__(self)})"

    def __getnewargs__(self) -> tuple[str]:  # copies and pickles come back as the one object of the name
        return (str.__str__(self),)

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(
            cls, core_schema.str_schema(), serialization=core_schema.to_string_ser_schema()
        )


Platform.WHATSAPP = Platform.register("WHATSAPP")
Platform.TELEGRAM = Platform.register("TELEGRAM")
Platform.INSTAGRAM = Platform.register("INSTAGRAM")


def shown_platform_message_id(platform: Platform, key: str | None) -> str | None:
    """The platform's own id of a message, as the API shows it (Telegram's per-chat `message_id`, say): its
    definition's `shown_message_id` (chat4all.domain.platforms, which imports this module)."""
    from chat4all.domain.platforms import shown_platform_message_id as shown

    return shown(platform, key)


class UserType(StrEnum):
    AGENT = "AGENT"
    CUSTOMER = "CUSTOMER"


class Role(StrEnum):
    ADMIN = "admin"
    AGENT = "agent"


class ConversationType(StrEnum):
    ONE_TO_ONE = "ONE_TO_ONE"
    GROUP = "GROUP"


class Direction(StrEnum):
    OUTBOUND = "OUTBOUND"
    INBOUND = "INBOUND"


class BreakerState(StrEnum):
    """A channel's circuit breaker: calls go through (CLOSED), wait (OPEN), or one probe goes (HALF_OPEN)."""

    CLOSED = "CLOSED"
    OPEN = "OPEN"
    HALF_OPEN = "HALF_OPEN"


class MessageStatus(StrEnum):
    """Delivery status. Moves forward only; FAILED is reachable from any state before READ."""

    PENDING = "PENDING"
    SENT = "SENT"
    DELIVERED = "DELIVERED"
    READ = "READ"
    FAILED = "FAILED"

    @property
    def rank(self) -> int:
        return _STATUS_RANK[self]

    def can_move_to(self, new: MessageStatus) -> bool:
        if self in (MessageStatus.READ, MessageStatus.FAILED):
            return False
        return new.rank > self.rank

    @classmethod
    def predecessors_of(cls, new: MessageStatus) -> list[MessageStatus]:
        """Every status from which `new` is a forward move."""
        return [status for status in cls if status.can_move_to(new)]


_STATUS_RANK = {
    MessageStatus.PENDING: 0,
    MessageStatus.SENT: 1,
    MessageStatus.DELIVERED: 2,
    MessageStatus.READ: 3,
    MessageStatus.FAILED: 4,
}


@dataclass(frozen=True)
class Principal:
    """Who is calling: the credential's id, role and (for agents) the user it is bound to.

    `key_id` names the credential: an API key's id, or `jwt:<sub>` for an OAuth2 token. The request id and
    source IP travel along so that every change the caller makes is audited with them.
    """

    key_id: str
    role: Role
    user_id: str | None = None
    request_id: str | None = None
    source_ip: str | None = None
    # the credential's own request rate (requests per second); None: the platform's default
    rate_limit: int | None = None

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN


@dataclass(frozen=True)
class ExternalIdentity:
    identity_id: str
    user_id: str
    platform: Platform
    platform_user_id: str
    verified: bool
    created_at: datetime


@dataclass(frozen=True)
class User:
    user_id: str
    display_name: str
    user_type: UserType
    email: str | None
    phone: str | None
    metadata: dict[str, Any]
    active: bool
    created_at: datetime
    updated_at: datetime
    external_identities: list[ExternalIdentity] = field(default_factory=list)


@dataclass(frozen=True)
class ChannelConfig:
    """An installed channel: a platform account with its (decrypted) credentials."""

    channel_id: str
    platform: Platform
    name: str
    credentials: dict[str, str]
    enabled: bool
    created_at: datetime
    updated_at: datetime
    default_agent_id: str | None = None
    # messages per second this channel may send (None: its platform's default, chat4all.domain.channel_limits)
    rate_limit: int | None = None
    # why the platform refused this channel's token, until the credentials are rotated (None: not refused)
    credentials_rejected: str | None = None


class CredentialsState(StrEnum):
    VALID = "VALID"
    REJECTED = "REJECTED"


@dataclass(frozen=True)
class ChannelState:
    """How a channel stands: its circuit breaker (shared by every instance) and whether its token works."""

    breaker: BreakerState = BreakerState.CLOSED
    credentials: CredentialsState = CredentialsState.VALID


@dataclass(frozen=True)
class ChannelInfo:
    """What an admin sees of an installed channel: everything but its credentials."""

    channel_id: str
    platform: Platform
    name: str
    enabled: bool
    default_agent_id: str | None
    created_at: datetime
    updated_at: datetime
    rate_limit: int | None = None
    credentials_rejected: str | None = None
    # read from the breaker when the channel is shown (not stored with it)
    breaker: BreakerState = BreakerState.CLOSED

    @property
    def state(self) -> ChannelState:
        rejected = CredentialsState.REJECTED if self.credentials_rejected else CredentialsState.VALID
        return ChannelState(self.breaker, rejected)


@dataclass(frozen=True)
class AuditRecord:
    """One stored audit entry: who changed what, from what to what, in which request."""

    entry_id: int
    at: datetime
    actor: str
    actor_role: str | None
    action: str
    entity_type: str
    entity_id: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    request_id: str | None
    source_ip: str | None


@dataclass(frozen=True)
class ChannelRef:
    """What routing needs of an installed channel: which one, which platform, whether it is on; no credentials."""

    channel_id: str
    platform: Platform
    enabled: bool


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    name: str
    role: Role
    user_id: str | None
    created_at: datetime
    # requests per second this key may make (None: the platform's default)
    rate_limit: int | None = None


@dataclass(frozen=True)
class Participant:
    user_id: str
    joined_at: datetime


@dataclass(frozen=True)
class Conversation:
    conversation_id: str
    conversation_type: ConversationType
    participants: list[Participant]
    primary_channel: Platform
    message_count: int
    last_activity_at: datetime
    created_at: datetime
    channel_id: str | None = None
    # the highest sequence taken so far (None for a conversation stored before the counter existed)
    last_sequence: int | None = None
    # the platform's timestamp of the newest inbound WhatsApp message stored in it (None: the customer never wrote
    # here); WhatsApp's 24-hour window is counted from it (services/messages.py)
    last_inbound_at: datetime | None = None

    def participant(self, user_id: str) -> Participant | None:
        return next((p for p in self.participants if p.user_id == user_id), None)


@dataclass(frozen=True)
class StatusEntry:
    status: MessageStatus
    at: datetime
    detail: str | None = None


@dataclass(frozen=True)
class DeliveryAttempt:
    """A platform call that was started: recorded (journaled) before the call, cleared with its outcome.

    `lease_until` is the deadline of the invocation that makes the call: after it that invocation is over
    (Lambda ends it at its timeout), so an attempt still open then has an outcome nobody recorded.
    """

    number: int
    started_at: datetime
    lease_until: datetime


@dataclass(frozen=True, kw_only=True)
class Sending:
    """The bookkeeping of sending that a message and a GROUP delivery keep alike (see docs/GUARANTEES.md): the
    platform's id once sent, the last failure, the attempt journal, and the events written with a change of it and
    not yet taken by the bus (the outbox on the record)."""

    platform_message_id: str | None = None
    error: str | None = None
    attempts: int = 0
    in_flight: DeliveryAttempt | None = None
    retry_at: datetime | None = None
    troubled_since: datetime | None = None
    troubles: int = 0
    unpublished_events: tuple[DomainEvent, ...] = ()


@dataclass(frozen=True)
class Message(Sending):
    message_id: str
    conversation_id: str
    sender_id: str
    content: str | None
    file_id: str | None
    channel: Platform
    direction: Direction
    sequence: int
    status: MessageStatus
    history: list[StatusEntry]
    created_at: datetime
    request_fingerprint: str
    # what the message is: "text", or for inbound messages the platform's kind of non-text message
    # ("image", "video", "audio", "document", "sticker", "location", "reaction", ...)
    message_type: str = "text"
    # a GROUP message's recipients, fixed when it was accepted: every participant but the sender as the
    # conversation was in the transaction that gave the message its sequence (None: a one-to-one message)
    recipients: tuple[str, ...] | None = None
    # a GROUP message whose deliveries exist (one per recipient): it has left its conversation's route run,
    # its recipients' lanes send it, and its status is their aggregate (aggregate_status)
    fanned_out: bool = False
    # a WhatsApp template message: {name, language, components?} as the API accepted it (message_type "template")
    template: dict[str, Any] | None = None
    # the accepting request's correlation id (X-Correlation-Id or the request id): in its log lines and events
    correlation_id: str | None = None


@dataclass(frozen=True)
class Delivery(Sending):
    """One recipient's copy of a GROUP message: its own route, attempts, platform id and status history.

    Stored in `deliveries` as `{message_id}:{user_id}` (`delivery_id`); sent by its recipient's lane (one FIFO
    group per conversation and recipient) in `sequence` order, with the one-to-one protocol's bookkeeping
    (docs/GUARANTEES.md). `platform` and `channel_id` are None when no route was found (it is FAILED then).
    """

    message_id: str
    conversation_id: str
    user_id: str
    sequence: int
    platform: Platform | None
    channel_id: str | None
    status: MessageStatus
    history: list[StatusEntry]
    # the recipient's id on `platform` (the identity the route chose), what the connector sends to
    address: str | None = None
    created_at: datetime | None = None

    @property
    def delivery_id(self) -> str:
        return delivery_id(self.message_id, self.user_id)


def delivery_id(message_id: str, user_id: str) -> str:
    return f"{message_id}:{user_id}"


def aggregate_status(counts: dict[MessageStatus, int]) -> MessageStatus:
    """A GROUP message's status from its deliveries' (count per status): the furthest state every delivery
    that has not failed has reached; FAILED only when every delivery failed; PENDING while there are none."""
    live = [status for status, count in counts.items() if count and status is not MessageStatus.FAILED]
    if live:
        return min(live, key=lambda status: status.rank)
    return MessageStatus.FAILED if counts.get(MessageStatus.FAILED) else MessageStatus.PENDING


@dataclass(frozen=True)
class DomainEvent:
    """One event for the bus; `detail["at"]` is the time of the change it reports.

    An event about a message (`message_id`) is kept on that message, written with the change it reports,
    until it is published (`event_id` tells it apart there); one about a GROUP delivery (`delivery_id`) is
    kept on that delivery.
    """

    detail_type: str
    detail: dict[str, Any]
    source: str = "chat4all"
    event_id: str = ""
    message_id: str | None = None
    # set when the event is kept on a GROUP delivery (`Delivery.delivery_id`) rather than on its message
    delivery_id: str | None = None


@dataclass(frozen=True)
class OutboundMedia:
    """A CLEAN file as the platforms take it by link (issue 18): `image`, `video` or `document`, and a download URL
    the platform fetches (presigned, 24 hours)."""

    kind: str
    url: str
    filename: str
    mime_type: str


@dataclass(frozen=True)
class OutboundMessage:
    """What a connector needs to put one message on a platform."""

    message_id: str
    recipient: str
    text: str
    # a WhatsApp template ({name, language, components?}): sent as a template message instead of `text`
    template: dict[str, Any] | None = None
    # a file sent by link as the platform's media message; `text` is then its caption ("" for none)
    media: OutboundMedia | None = None


@dataclass(frozen=True)
class ProviderReceipt:
    platform_message_id: str


@dataclass(frozen=True)
class StatusReport:
    """A delivery status a platform reported for one of our messages."""

    platform: Platform
    platform_message_id: str
    status: MessageStatus
    at: datetime
    detail: str | None = None
    # the installed channel whose webhook reported it; the message is looked for among that channel's only
    channel_id: str | None = None
    # the account the webhook named (WhatsApp phone_number_id, Instagram entry id), while it is attributed
    account_id: str | None = None
    # the correlation id of the webhook request that reported it (the message keeps its own)
    correlation_id: str | None = None

    @property
    def dedupe_key(self) -> str:
        return f"{self.platform}:{self.platform_message_id}:{self.status}:{self.at.isoformat()}"

    @property
    def entry(self) -> StatusEntry:
        """The history entry the report adds to its message or delivery."""
        return StatusEntry(self.status, self.at, self.detail)


@dataclass(frozen=True)
class InboundMessage:
    """A message a person sent us on a platform: text, or another kind (`message_type`) with its caption,
    place or emoji as `text` where it has one."""

    platform: Platform
    platform_message_id: str
    platform_user_id: str
    sender_name: str | None
    text: str | None
    at: datetime
    message_type: str = "text"
    # the account the webhook named (WhatsApp phone_number_id, Instagram entry id), while it is attributed
    account_id: str | None = None
    # a photo, document or video: the platform's reference to its bytes, fetched later (queued work)
    media: InboundMedia | None = None


@dataclass(frozen=True)
class InboundMedia:
    """The file of an inbound message, as the platform names it: WhatsApp's media id, Telegram's `file_id` (the
    largest photo size), Instagram's attachment URL; with the type and name the webhook gave, where it gave them."""

    reference: str
    mime_type: str | None = None
    filename: str | None = None


@dataclass
class FetchedMedia:
    """An inbound file's bytes as a platform serves them: `chunks` read as they arrive (never all at once),
    the type and name the platform gave (None where it gave none) and the size it announced. A context
    manager: leaving it closes the connection."""

    chunks: Iterator[bytes]
    mime_type: str | None
    filename: str | None
    size: int | None
    close: Callable[[], None]

    def __enter__(self) -> FetchedMedia:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
