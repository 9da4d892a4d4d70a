"""The credentials each platform's channel needs (contract: Channels), validated field by field by the model its
definition names (chat4all.domain.platforms)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, StringConstraints, ValidationError

from chat4all.domain.errors import FieldError, ValidationFailedError
from chat4all.domain.platforms import definition, webhook_secret_digest

if TYPE_CHECKING:
    from collections.abc import Mapping

    from chat4all.domain.models import Platform

# a channel's credentials as parsed, encrypted and given to its connector: field name to value
type Credentials = dict[str, str]

# tokens and secrets as the platforms issue them: visible ASCII (they travel in HTTP headers and URLs)
Secret = Annotated[str, StringConstraints(pattern=r"^[!-~]{1,1024}$")]
NumericId = Annotated[str, StringConstraints(pattern=r"^[0-9]{1,32}$")]
# Telegram bot tokens are "<bot id>:<35 or so of [A-Za-z0-9_-]>"
BotToken = Annotated[str, StringConstraints(pattern=r"^[0-9]{1,20}:[A-Za-z0-9_-]{30,100}$")]
# Telegram accepts 1-256 characters A-Z, a-z, 0-9, _ and - as a webhook secret_token
TelegramSecret = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,256}$")]


class ChannelCredentials(BaseModel):
    """Base of each platform's credential model; unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")


class WhatsAppCredentials(ChannelCredentials):
    access_token: Secret
    phone_number_id: NumericId
    app_secret: Secret
    verify_token: Secret


class TelegramCredentials(ChannelCredentials):
    bot_token: BotToken
    secret_token: TelegramSecret


class InstagramCredentials(ChannelCredentials):
    access_token: Secret
    ig_user_id: NumericId
    app_secret: Secret
    verify_token: Secret


def parse_credentials(platform: Platform, raw: Any) -> Credentials:
    """The platform's credentials from a request, or ValidationFailedError naming each `credentials.<field>`."""
    try:
        model = definition(platform).credentials_model.model_validate(raw)
    except ValidationError as exc:
        errors = [
            FieldError(".".join(["credentials", *(str(part) for part in e["loc"])]), e["msg"])
            for e in exc.errors(include_url=False, include_input=False)
        ]
        raise ValidationFailedError(f"these are not {platform} channel credentials", errors=errors) from None
    return {name: str(value) for name, value in model.model_dump().items()}


def channel_keys(platform: Platform, credentials: Mapping[str, str]) -> tuple[str, str | None]:
    """What a channel is found by when a webhook arrives, stored in plaintext beside the ciphertext: the account
    its platform names in its webhooks (WhatsApp phone_number_id, Instagram ig_user_id, Telegram the bot's id,
    the part of the token before the colon, no secret), and the digest of the secret its webhooks carry in a
    header (Telegram's secret_token). Each platform's definition says which (chat4all.domain.platforms)."""
    return definition(platform).channel_keys(credentials)


__all__ = [
    "ChannelCredentials",
    "InstagramCredentials",
    "TelegramCredentials",
    "WhatsAppCredentials",
    "channel_keys",
    "parse_credentials",
    "webhook_secret_digest",
]
