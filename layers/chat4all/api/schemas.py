"""Request bodies of the public API (pydantic v2, unknown fields refused)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
    ValidationError,
    model_validator,
)

from chat4all.api.problems import validation_problem
from chat4all.domain import commands
from chat4all.domain.contact import normalise_phone
from chat4all.domain.models import ConversationType, Platform, Role, UserType

# Names are kept as written; they must show something (openapi.yaml states the same constraints)
Name = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"\S")]
Email = Annotated[str, StringConstraints(max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")]
# E.164, written with or without spaces, dots, dashes and parentheses; stored as +<digits>
Phone = Annotated[
    str,
    StringConstraints(max_length=32, pattern=r"^\+[1-9][0-9 ().-]{6,30}$"),
    AfterValidator(normalise_phone),
]
PlatformUserId = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^\S+$")]
Metadata = Annotated[dict[str, Any], Field(max_length=100)]

MAX_CONTENT_CHARS = 10_000


class RequestModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CreateUserRequest(RequestModel):
    display_name: Name
    user_type: UserType
    email: Email | None = None
    phone: Phone | None = Field(default=None, description="E.164, e.g. +5511999990000")
    metadata: Metadata = Field(default_factory=dict)

    def command(self) -> commands.CreateUser:
        return commands.CreateUser(self.display_name, self.user_type, self.email, self.phone, self.metadata)


class UpdateUserRequest(RequestModel):
    """Only the named fields change; email and phone may be null (cleared), display_name and active may not."""

    display_name: Name | None = None
    email: Email | None = None
    phone: Phone | None = None
    active: StrictBool | None = None

    @model_validator(mode="after")
    def _not_null(self) -> UpdateUserRequest:
        for name in ("display_name", "active"):
            if name in self.model_fields_set and getattr(self, name) is None:
                raise ValueError(f"{name} cannot be null")
        return self

    def command(self, user_id: str) -> commands.UpdateUser:
        return commands.UpdateUser(user_id, {name: getattr(self, name) for name in self.model_fields_set})


class LinkIdentityRequest(RequestModel):
    platform: Platform
    platform_user_id: PlatformUserId
    verified: StrictBool = False

    def command(self, user_id: str) -> commands.LinkIdentity:
        return commands.LinkIdentity(user_id, self.platform, self.platform_user_id, self.verified)


class CreateChannelRequest(RequestModel):
    """`credentials` is checked against the platform's shape (and by the platform itself) by the service."""

    platform: Platform
    name: Name
    credentials: dict[str, Any]
    enabled: StrictBool = True
    default_agent_id: uuid.UUID | None = None
    # messages per second; absent: the platform's published default (chat4all.domain.channel_limits)
    rate_limit: int | None = Field(default=None, ge=1, le=100_000, strict=True)

    def command(self) -> commands.CreateChannel:
        agent = str(self.default_agent_id) if self.default_agent_id else None
        return commands.CreateChannel(self.platform, self.name, self.credentials, self.enabled, agent, self.rate_limit)


class UpdateChannelRequest(RequestModel):
    """Rename, enable/disable, set or clear (null) the default agent, or rotate the credentials."""

    name: Name | None = None
    enabled: StrictBool | None = None
    default_agent_id: uuid.UUID | None = None
    credentials: dict[str, Any] | None = None
    # null goes back to the platform's default
    rate_limit: int | None = Field(default=None, ge=1, le=100_000, strict=True)

    @model_validator(mode="after")
    def _not_null(self) -> UpdateChannelRequest:
        for name in ("name", "enabled", "credentials"):
            if name in self.model_fields_set and getattr(self, name) is None:
                raise ValueError(f"{name} cannot be null")
        return self

    def command(self, channel_id: str) -> commands.UpdateChannel:
        changes: dict[str, Any] = {}
        for name in self.model_fields_set - {"credentials"}:
            value = getattr(self, name)
            changes[name] = str(value) if isinstance(value, uuid.UUID) else value
        return commands.UpdateChannel(channel_id, changes, self.credentials)


class CreateApiKeyRequest(RequestModel):
    name: Name
    role: Role
    user_id: uuid.UUID | None = None
    # requests per second; absent: the platform's default (CHAT4ALL_API_RATE_LIMIT)
    rate_limit: int | None = Field(default=None, ge=1, le=100_000, strict=True)

    def command(self) -> commands.CreateApiKey:
        user_id = str(self.user_id) if self.user_id else None
        return commands.CreateApiKey(self.name, self.role, user_id, self.rate_limit)


def _distinct(participants: list[uuid.UUID]) -> list[uuid.UUID]:
    if len(set(participants)) != len(participants):
        raise ValueError("participants must be distinct")
    return participants


class CreateConversationRequest(RequestModel):
    conversation_type: ConversationType
    # a repeated participant is named as this field's error (not the body's)
    participants: Annotated[list[uuid.UUID], Field(min_length=1, max_length=100), AfterValidator(_distinct)]
    primary_channel: Platform
    channel_id: uuid.UUID | None = None

    def command(self) -> commands.CreateConversation:
        return commands.CreateConversation(
            self.conversation_type,
            [str(p) for p in self.participants],
            self.primary_channel,
            str(self.channel_id) if self.channel_id else None,
        )


class AddParticipantRequest(RequestModel):
    user_id: uuid.UUID


class ConversationListQuery(RequestModel):
    participant: uuid.UUID | None = None
    limit: int = Field(default=50, ge=1, le=200)
    before: str | None = Field(default=None, min_length=1, max_length=200)


class SendMessageRequest(RequestModel):
    message_id: uuid.UUID | None = None
    conversation_id: uuid.UUID
    sender_id: uuid.UUID
    content: str | None = Field(default=None, min_length=1, max_length=MAX_CONTENT_CHARS)
    file_id: uuid.UUID | None = None
    channel_type: Platform | None = None

    @model_validator(mode="after")
    def _has_content_or_file(self) -> SendMessageRequest:
        if self.content is None and self.file_id is None:
            raise ValueError("a message needs content or file_id")
        return self

    def command(self) -> commands.SendMessage:
        return commands.SendMessage(
            message_id=str(self.message_id or uuid.uuid4()),
            conversation_id=str(self.conversation_id),
            sender_id=str(self.sender_id),
            content=self.content,
            file_id=str(self.file_id) if self.file_id else None,
            channel_type=self.channel_type,
        )


class HistoryQuery(RequestModel):
    limit: int = Field(default=50, ge=1, le=200)
    before: str | None = Field(default=None, min_length=1, max_length=200)

    @classmethod
    def from_params(cls, params: dict[str, str]) -> HistoryQuery:
        try:
            return cls.model_validate(params)
        except ValidationError as exc:
            raise validation_problem(exc) from exc


class AuditLogQuery(RequestModel):
    entity_id: str | None = Field(default=None, min_length=1, max_length=200)
    limit: int = Field(default=50, ge=1, le=200)
    before: str | None = Field(default=None, min_length=1, max_length=200)
