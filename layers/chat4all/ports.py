"""Ports: what the services need from the outside world. Adapters implement them; tests use in-memory fakes."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datetime import datetime

    from chat4all.domain.models import (
        ApiKey,
        ChannelConfig,
        ChannelRef,
        Conversation,
        ExternalIdentity,
        Message,
        Platform,
        StatusEntry,
        User,
    )


@dataclass(frozen=True)
class AuditEntry:
    """One append-only audit record, written in the same transaction as the change it describes."""

    actor: str
    action: str
    entity_type: str
    entity_id: str
    data: dict[str, Any] = field(default_factory=dict)


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
    def user_id_for(self, platform: Platform, platform_user_id: str) -> str | None:
        """The user a platform account is linked to, or None."""


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
    def channel_ref(self, channel_id: str) -> ChannelRef | None:
        """The channel without its credentials (nothing is decrypted), or None."""

    @abstractmethod
    def enabled_channel_refs(self, platform: Platform) -> list[ChannelRef]:
        """Enabled channels of a platform without their credentials, oldest first."""


class ApiKeyRepository(ABC):
    """API keys, stored as hashes only (PostgreSQL)."""

    @abstractmethod
    def add_key(self, key: ApiKey, key_hash: str, audit: AuditEntry) -> None:
        """Store a key by its hash; a no-op (and no audit entry) when that hash exists already."""

    @abstractmethod
    def find_active(self, key_hash: str) -> ApiKey | None: ...

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
    def latest_for(self, user_id: str, platform: Platform) -> Conversation | None:
        """The conversation with the newest activity that `user_id` takes part in on `platform`."""

    @abstractmethod
    def next_sequence(self, conversation_id: str, at: datetime) -> int:
        """Atomically allocate the conversation's next message sequence and record activity."""


class MessageStore(ABC):
    """Messages and their status history (MongoDB)."""

    @abstractmethod
    def add_message(self, message: Message) -> bool:
        """Store a new message; False when a message with that id exists already."""

    @abstractmethod
    def get_message(self, message_id: str) -> Message | None: ...

    @abstractmethod
    def find_by_platform_id(self, platform: Platform, platform_message_id: str) -> Message | None: ...

    @abstractmethod
    def conversation_page(
        self, conversation_id: str, *, limit: int, before_sequence: int | None, since: datetime | None
    ) -> list[Message]:
        """Up to `limit` messages with sequence < before_sequence created at or after `since`, newest first."""

    @abstractmethod
    def begin_attempt(self, message_id: str) -> int:
        """Count one more delivery attempt; returns the attempt's number, from 1."""

    @abstractmethod
    def append_status(
        self,
        message_id: str,
        entry: StatusEntry,
        *,
        platform_message_id: str | None = None,
        dedupe_key: str | None = None,
    ) -> bool:
        """Record `entry` in the history and move the status when it is a forward move.

        Returns True when the current status changed. A report whose `dedupe_key` was applied before
        changes nothing at all.
        """


class OutboundQueue(ABC):
    """Work for the route function, ordered per conversation."""

    @abstractmethod
    def enqueue(self, message_id: str, conversation_id: str) -> None: ...


class DeadLetterQueue(ABC):
    """Where work goes that was given up on, for an operator to inspect and redrive."""

    @abstractmethod
    def dead_letter(self, body: str, group_id: str, reason: str) -> None: ...


class EventPublisher(ABC):
    """Publishes domain events on the bus."""

    @abstractmethod
    def publish(self, detail_type: str, detail: dict[str, Any], *, source: str = "chat4all") -> None: ...


class CredentialCipher(ABC):
    """Encrypts channel credentials at rest."""

    @abstractmethod
    def encrypt(self, credentials: dict[str, str]) -> bytes: ...

    @abstractmethod
    def decrypt(self, ciphertext: bytes) -> dict[str, str]: ...


class DependencyCheck(ABC):
    """One dependency /health reports on."""

    name: str

    @abstractmethod
    def check(self) -> None:
        """Return when the dependency answers; raise otherwise."""
