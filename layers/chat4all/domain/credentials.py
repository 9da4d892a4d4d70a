"""The credentials each platform's channel needs (contract: Channels), validated field by field."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, StringConstraints, ValidationError

from chat4all.domain.errors import FieldError, ValidationFailedError
from chat4all.domain.models import Platform

if TYPE_CHECKING:
    from collections.abc import Mapping

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


CREDENTIAL_MODELS: dict[Platform, type[ChannelCredentials]] = {
    Platform.WHATSAPP: WhatsAppCredentials,
    Platform.TELEGRAM: TelegramCredentials,
    Platform.INSTAGRAM: InstagramCredentials,
}


def parse_credentials(platform: Platform, raw: Any) -> dict[str, str]:
    """The platform's credentials from a request, or ValidationFailedError naming each `credentials.<field>`."""
    try:
        model = CREDENTIAL_MODELS[platform].model_validate(raw)
    except ValidationError as exc:
        errors = [
            FieldError(".".join(["credentials", *(str(part) for part in e["loc"])]), e["msg"])
            for e in exc.errors(include_url=False, include_input=False)
        ]
        raise ValidationFailedError(f"these are not {platform} channel credentials", errors=errors) from None
    return {name: str(value) for name, value in model.model_dump().items()}


def webhook_secret_digest(secret: str) -> str:
    """How a channel's webhook secret is looked up without decrypting every channel: its SHA-256, in hex."""
    return hashlib.sha256(secret.encode()).hexdigest()


def channel_keys(platform: Platform, credentials: Mapping[str, str]) -> tuple[str, str | None]:
    """What a channel is found by when a webhook arrives, stored in plaintext beside the ciphertext.

    The account the platform names in its webhooks (WhatsApp phone_number_id, Instagram ig_user_id; for
    Telegram the bot's id, the part of the token before the colon, which identifies the bot but is no secret),
    and for Telegram the digest of the secret_token its webhooks carry in a header.
    """
    if platform is Platform.WHATSAPP:
        return credentials["phone_number_id"], None
    if platform is Platform.INSTAGRAM:
        return credentials["ig_user_id"], None
    return credentials["bot_token"].split(":", 1)[0], webhook_secret_digest(credentials["secret_token"])
