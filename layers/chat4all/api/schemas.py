"""Request bodies of the public API (pydantic v2, unknown fields refused)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

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


# A WhatsApp template message's parts, as the Cloud API takes them (`template.components[].parameters[]`), bounded
# here so that a hostile body is a 422 and never reaches WhatsApp; openapi.yaml (WhatsAppTemplate) states the same.
TemplateText = Annotated[str, StringConstraints(min_length=1, max_length=1024)]
FallbackText = Annotated[str, StringConstraints(min_length=1, max_length=200)]
# an https URL of printable ASCII, no spaces (percent-encoded as URLs are)
MediaLink = Annotated[str, StringConstraints(max_length=2048, pattern=r"^https://[!-~]+$")]
MediaId = Annotated[str, StringConstraints(pattern=r"^[0-9]{1,64}$")]


class _Currency(RequestModel):
    fallback_value: FallbackText
    code: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]  # ISO 4217
    amount_1000: int = Field(ge=-(10**15), le=10**15, strict=True)


class _DateTime(RequestModel):
    fallback_value: FallbackText


class _Media(RequestModel):
    """An uploaded media id or an https link, exactly one of them."""

    link: MediaLink | None = None
    id: MediaId | None = None

    @model_validator(mode="after")
    def _one_source(self) -> _Media:
        if (self.link is None) == (self.id is None):
            raise ValueError("media needs exactly one of link and id")
        return self


class _Document(_Media):
    filename: Annotated[str, StringConstraints(min_length=1, max_length=240, pattern=r"^[^\x00-\x1f/\\]+$")] | None = (
        None
    )


class _TextParameter(RequestModel):
    type: Literal["text"]
    text: TemplateText


class _CurrencyParameter(RequestModel):
    type: Literal["currency"]
    currency: _Currency


class _DateTimeParameter(RequestModel):
    type: Literal["date_time"]
    date_time: _DateTime


class _ImageParameter(RequestModel):
    type: Literal["image"]
    image: _Media


class _DocumentParameter(RequestModel):
    type: Literal["document"]
    document: _Document


class _VideoParameter(RequestModel):
    type: Literal["video"]
    video: _Media


class _PayloadParameter(RequestModel):
    """A quick-reply button's payload (what WhatsApp sends back when the customer taps it)."""

    type: Literal["payload"]
    payload: Annotated[str, StringConstraints(min_length=1, max_length=256)]


TemplateParameter = Annotated[
    _TextParameter
    | _CurrencyParameter
    | _DateTimeParameter
    | _ImageParameter
    | _DocumentParameter
    | _VideoParameter
    | _PayloadParameter,
    Field(discriminator="type"),
]

# which parameter types each component takes (WhatsApp: a header shows one text or media, a body's variables are
# text, currency or date_time, a quick-reply button returns a payload and a URL button completes its URL with text)
_PARAMETER_TYPES = {
    "header": {"text", "image", "document", "video"},
    "body": {"text", "currency", "date_time"},
    "quick_reply": {"payload", "text"},
    "url": {"text"},
}
MAX_TEMPLATE_PARAMETERS = 20
MAX_TEMPLATE_BUTTONS = 10


class TemplateComponent(RequestModel):
    type: Literal["header", "body", "button"]
    sub_type: Literal["quick_reply", "url"] | None = None
    # the button's position, 0-9: a number, or a string as the Cloud API's own examples write it
    index: (
        Annotated[int, Field(ge=0, lt=MAX_TEMPLATE_BUTTONS, strict=True)]
        | Annotated[str, StringConstraints(pattern=r"^[0-9]$")]
        | None
    ) = None
    parameters: Annotated[list[TemplateParameter], Field(min_length=1, max_length=MAX_TEMPLATE_PARAMETERS)]

    @model_validator(mode="after")
    def _fits_its_type(self) -> TemplateComponent:
        if self.type == "button":
            if self.sub_type is None or self.index is None:
                raise ValueError("a button component needs sub_type and index")
            if len(self.parameters) != 1:
                raise ValueError("a button component takes exactly one parameter")
            allowed = _PARAMETER_TYPES[self.sub_type]
        else:
            if self.sub_type is not None or self.index is not None:
                raise ValueError(f"a {self.type} component takes no sub_type or index")
            if self.type == "header" and len(self.parameters) != 1:
                raise ValueError("a header component takes exactly one parameter")
            allowed = _PARAMETER_TYPES[self.type]
        wrong = sorted({p.type for p in self.parameters} - allowed)
        if wrong:
            raise ValueError(f"a {self.sub_type or self.type} component takes no {', '.join(wrong)} parameter")
        return self


class TemplateRequest(RequestModel):
    """A WhatsApp message template, approved in WhatsApp Manager, with the values of its variables."""

    name: Annotated[str, StringConstraints(pattern=r"^[a-z0-9_]{1,512}$")]
    # WhatsApp's language codes: `en`, `en_US`, `pt_BR`, `zh_HK`, `fil`, ...
    language: Annotated[str, StringConstraints(pattern=r"^[a-z]{2,3}(_[A-Z]{2})?$")]
    components: Annotated[list[TemplateComponent], Field(min_length=1, max_length=MAX_TEMPLATE_BUTTONS + 2)] | None = (
        None
    )

    @model_validator(mode="after")
    def _components_once(self) -> TemplateRequest:
        kinds = [(c.type, str(c.index)) for c in self.components or ()]
        if len(set(kinds)) != len(kinds):
            raise ValueError("components repeat: one header, one body and one button per index at most")
        return self


class SendMessageRequest(RequestModel):
    message_id: uuid.UUID | None = None
    conversation_id: uuid.UUID
    sender_id: uuid.UUID
    content: str | None = Field(default=None, min_length=1, max_length=MAX_CONTENT_CHARS)
    file_id: uuid.UUID | None = None
    channel_type: Platform | None = None
    # WhatsApp only (checked against the conversation when the message is accepted); alone, without content or file
    template: TemplateRequest | None = None

    @model_validator(mode="after")
    def _has_content_or_file(self) -> SendMessageRequest:
        if self.template is not None:
            if self.content is not None or self.file_id is not None:
                raise ValueError("a template message carries neither content nor file_id: its text is the template's")
            return self
        if self.content is None and self.file_id is None:
            raise ValueError("a message needs content, file_id or template")
        return self

    def command(self) -> commands.SendMessage:
        return commands.SendMessage(
            message_id=str(self.message_id or uuid.uuid4()),
            conversation_id=str(self.conversation_id),
            sender_id=str(self.sender_id),
            content=self.content,
            file_id=str(self.file_id) if self.file_id else None,
            channel_type=self.channel_type,
            template=self.template.model_dump(mode="json", exclude_none=True) if self.template else None,
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
