"""Commands the services accept: validated intent, independent of transport."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from chat4all.domain.models import ConversationType, Platform, Role, UserType


@dataclass(frozen=True)
class CreateUser:
    display_name: str
    user_type: UserType
    email: str | None = None
    phone: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LinkIdentity:
    user_id: str
    platform: Platform
    platform_user_id: str
    verified: bool = False


@dataclass(frozen=True)
class UpdateUser:
    """Only the fields the request named: display_name, email (None clears), phone (None clears), active."""

    user_id: str
    changes: dict[str, Any]


@dataclass(frozen=True)
class CreateChannel:
    platform: Platform
    name: str
    credentials: dict[str, str]
    enabled: bool = True
    default_agent_id: str | None = None
    rate_limit: int | None = None


@dataclass(frozen=True)
class UpdateChannel:
    """Only the fields the request named: name, enabled, default_agent_id and rate_limit (None clears);
    credentials rotate (and clear a rejection)."""

    channel_id: str
    changes: dict[str, Any]
    credentials: dict[str, str] | None = None


@dataclass(frozen=True)
class CreateApiKey:
    name: str
    role: Role
    user_id: str | None = None
    rate_limit: int | None = None


@dataclass(frozen=True)
class CreateConversation:
    conversation_type: ConversationType
    participants: list[str]
    primary_channel: Platform
    channel_id: str | None = None


@dataclass(frozen=True)
class SendMessage:
    message_id: str
    conversation_id: str
    sender_id: str
    content: str | None
    file_id: str | None = None
    channel_type: Platform | None = None
    # a WhatsApp template {name, language, components?} (validated by the API's schema), instead of content
    template: dict[str, Any] | None = None

    @property
    def fingerprint(self) -> str:
        """Hash of everything but the id: a retry with the same id must carry the same body."""
        body = asdict(self)
        body.pop("message_id")
        if body["template"] is None:
            body.pop("template")  # a message without one hashes as it did before templates existed
        return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()
