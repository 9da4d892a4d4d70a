"""Telegram Bot API: text sending with sendMessage, webhook `Update`s verified by their secret token header.

Telegram numbers messages per chat, and a person's private chat has the same id with every bot, so a message
is named `<bot id>:<chat id>:<message_id>` as its platform_message_id: unique across the installed bots.
"""

from __future__ import annotations

import hmac
import mimetypes
import re
import urllib.parse
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import ConfigDict

from chat4all.channels.bodies import Lenient, parse_body, unix_time
from chat4all.channels.http import HttpConnector, by_status, scrub
from chat4all.channels.whatsapp import location_text
from chat4all.domain.credentials import ChannelCredentials, TelegramCredentials
from chat4all.domain.errors import (
    ChannelError,
    ChannelOutcomeUnknownError,
    ChannelRateLimitedError,
    ChannelRecipientRejectedError,
    ChannelRejectedError,
    ChannelRetryableError,
)
from chat4all.domain.models import InboundMedia, InboundMessage, Platform, ProviderReceipt
from chat4all.domain.platforms import CredentialCheck, PlatformDefinition, register

if TYPE_CHECKING:
    from collections.abc import Mapping

    from chat4all.domain.models import FetchedMedia, OutboundMessage, StatusReport

# Telegram's answers (core.telegram.org/bots/api, "Making requests": `ok: false`, `error_code`, `description`,
# and `parameters.retry_after`, "in case of exceeding flood control, the number of seconds left to wait before
# the request can be repeated"; Bot FAQ, "My bot is hitting limits": 429 past about 30 messages a second, or about
# one a second in one chat). 401 "Unauthorized" is a token Telegram does not know (revoked in @BotFather); a 403
# ("Forbidden: bot was blocked by the user", "user is deactivated", "bot can't initiate conversation with a user")
# and a 400 naming the chat or user as not found are about this recipient; any other 400 is about this message.
RECIPIENT_NOT_FOUND = ("chat not found", "user not found", "peer_id_invalid")
SECRET_HEADER = "x-telegram-bot-api-secret-token"  # noqa: S105 - a header name, not a secret
# the kinds of message Telegram sends besides text, in the order a message is classified by
MEDIA_KINDS = ("photo", "video", "animation", "document", "audio", "voice", "video_note", "sticker")


class _User(Lenient):
    id: int
    is_bot: bool = False
    first_name: str | None = None
    last_name: str | None = None
    username: str | None = None

    def name(self) -> str | None:
        full = " ".join(part for part in (self.first_name, self.last_name) if part)
        return full or self.username


class _Chat(Lenient):
    id: int
    type: str


class _Location(Lenient):
    latitude: float
    longitude: float


class _Venue(Lenient):
    location: _Location
    title: str | None = None


class _Sticker(Lenient):
    emoji: str | None = None


class _Message(Lenient):
    message_id: int
    date: int
    chat: _Chat
    from_: _User | None = None
    text: str | None = None
    caption: str | None = None
    location: _Location | None = None
    venue: _Venue | None = None
    contact: dict[str, Any] | None = None
    sticker: _Sticker | None = None
    photo: list[dict[str, Any]] | None = None
    video: dict[str, Any] | None = None
    animation: dict[str, Any] | None = None
    document: dict[str, Any] | None = None
    audio: dict[str, Any] | None = None
    voice: dict[str, Any] | None = None
    video_note: dict[str, Any] | None = None

    model_config = ConfigDict(extra="ignore", populate_by_name=True, alias_generator=lambda f: f.rstrip("_"))

    def kind(self) -> tuple[str, str | None]:
        """The message's type and its content (the text, a caption, a place, a sticker's emoji)."""
        if self.text is not None:
            return "text", self.text
        where = self.venue.location if self.venue is not None else self.location
        if where is not None:
            return "location", location_text(where.latitude, where.longitude, self.venue.title if self.venue else None)
        if self.contact is not None:
            return "contact", str(self.contact.get("phone_number") or "") or None
        if self.sticker is not None:
            return "sticker", self.sticker.emoji
        for kind in MEDIA_KINDS:
            if getattr(self, kind) is not None:
                return ("image" if kind == "photo" else kind), self.caption
        return "unsupported", self.caption

    def media(self) -> InboundMedia | None:
        """A photo (its largest size: Telegram sends each photo in several), a document or a video, by `file_id`
        (getFile gives its path). A photo names no type (its file path's extension does: Telegram's photos are
        JPEGs); a document and a video name their own."""
        if self.photo:
            sizes = [p for p in self.photo if isinstance(p.get("file_id"), str)]
            if not sizes:
                return None
            largest = max(sizes, key=lambda p: (_number(p.get("file_size")), _number(p.get("width"))))
            return InboundMedia(largest["file_id"])
        for item in (self.document, self.video):
            if item is not None and isinstance(item.get("file_id"), str):
                mime_type, filename = item.get("mime_type"), item.get("file_name")
                return InboundMedia(
                    item["file_id"],
                    mime_type if isinstance(mime_type, str) else None,
                    filename if isinstance(filename, str) else None,
                )
        return None


def _number(value: Any) -> int:
    return value if isinstance(value, int) else 0


class _ReactionType(Lenient):
    type: str
    emoji: str | None = None


class _Reaction(Lenient):
    chat: _Chat
    message_id: int
    date: int
    user: _User | None = None
    new_reaction: list[_ReactionType] = []


class _Update(Lenient):
    update_id: int
    message: _Message | None = None
    message_reaction: _Reaction | None = None


def telegram_message_id(bot_id: str, chat_id: int | str, message_id: int | str) -> str:
    return f"{bot_id}:{chat_id}:{message_id}"


class TelegramConnector(HttpConnector):
    platform = Platform.TELEGRAM
    credentials_model: ClassVar[type[ChannelCredentials]] = TelegramCredentials
    webhook_secret_header: ClassVar[str | None] = SECRET_HEADER

    def verify_webhook(self, credentials: Mapping[str, str], headers: Mapping[str, str], raw_body: bytes) -> bool:
        given = headers.get(SECRET_HEADER)
        return given is not None and hmac.compare_digest(given.encode(), credentials["secret_token"].encode())

    def parse_webhook(
        self, payload: dict[str, Any], account_id: str | None = None
    ) -> list[InboundMessage | StatusReport]:
        """Messages people send the bot in a private chat, and their reactions; anything else is ignored.

        `account_id` is the bot's id (the channel the secret token named): Telegram's bodies do not name the bot.
        """
        update = parse_body(_Update, payload, "a Telegram Update")
        bot = account_id or "0"
        message, reaction = update.message, update.message_reaction
        if message is not None and message.chat.type == "private" and message.from_ and not message.from_.is_bot:
            kind, content = message.kind()
            return [
                InboundMessage(
                    platform=Platform.TELEGRAM,
                    platform_message_id=telegram_message_id(bot, message.chat.id, message.message_id),
                    platform_user_id=str(message.from_.id),
                    sender_name=message.from_.name(),
                    text=content,
                    at=unix_time(message.date, "date"),
                    message_type=kind,
                    account_id=account_id,
                    media=message.media(),
                )
            ]
        if reaction is not None and reaction.chat.type == "private" and reaction.user and not reaction.user.is_bot:
            emoji = next((r.emoji for r in reaction.new_reaction if r.emoji), None)
            target = telegram_message_id(bot, reaction.chat.id, reaction.message_id)
            return [
                InboundMessage(
                    platform=Platform.TELEGRAM,
                    # a reaction has no id of its own: the message it is on, and when
                    platform_message_id=f"{target}:reaction:{reaction.date}",
                    platform_user_id=str(reaction.user.id),
                    sender_name=reaction.user.name(),
                    text=emoji,
                    at=unix_time(reaction.date, "date"),
                    message_type="reaction",
                    account_id=account_id,
                )
            ]
        return []

    def classify(
        self, status: int, payload: dict[str, Any] | None, text: str, retry_after: float | None
    ) -> ChannelError:
        description = str(payload.get("description") or "")[:300] if payload is not None else ""
        code = payload.get("error_code", status) if payload is not None else status
        detail = f"Telegram answered {status} (error_code {code}): {description or text}"
        parameters = payload.get("parameters") if payload is not None else None
        wait = parameters.get("retry_after") if isinstance(parameters, dict) else None
        if status == 429:
            seconds = float(wait) if isinstance(wait, int | float) and wait > 0 else retry_after or 1.0
            return ChannelRateLimitedError(detail, retry_after_seconds=seconds, status_code=status)
        if status == 403 or (status == 400 and any(n in description.lower() for n in RECIPIENT_NOT_FOUND)):
            return ChannelRecipientRejectedError(detail, status_code=status)
        return by_status(status, detail, retry_after)

    def send(self, credentials: Mapping[str, str], message: OutboundMessage) -> ProviderReceipt:
        chat_id: int | str = int(message.recipient) if message.recipient.lstrip("-").isdigit() else message.recipient
        method, body = _send_call(message)
        reply = self.post_json(
            f"{self.api_base}/bot{credentials['bot_token']}/{method}",
            {"chat_id": chat_id, **body},
            secrets=[credentials["bot_token"], credentials["bot_token"].split(":", 1)[-1]],
        )
        result = reply.get("result")
        if reply.get("ok") is not True or not isinstance(result, dict) or "message_id" not in result:
            # a 2xx answer: Telegram may have sent it, so it is never sent again (as WhatsApp's)
            raise ChannelOutcomeUnknownError(f"Telegram reply has no result.message_id: {str(reply)[:300]}")
        chat = result.get("chat")
        sent_to = chat.get("id", chat_id) if isinstance(chat, dict) else chat_id
        bot_id = credentials["bot_token"].split(":", 1)[0]
        return ProviderReceipt(platform_message_id=telegram_message_id(bot_id, sent_to, result["message_id"]))

    def fetch_media(self, credentials: Mapping[str, str], reference: str) -> FetchedMedia:
        """getFile gives the file's path, read at `{base}/file/bot<token>/<file_path>` (core.telegram.org/bots/api,
        "getFile": the link is good for at least an hour; bots get files of up to 20 MB). The token is in both
        URLs: neither is logged or kept, and no error's detail carries it."""
        token = credentials["bot_token"]
        secrets = [token, token.split(":", 1)[-1]]
        try:
            reply = self.post_json(f"{self.api_base}/bot{token}/getFile", {"file_id": reference}, secrets=secrets)
        except ChannelOutcomeUnknownError as exc:  # getFile changes nothing: asking again is safe
            raise ChannelRetryableError(exc.detail) from None
        result = reply.get("result")
        path = result.get("file_path") if isinstance(result, dict) else None
        if reply.get("ok") is not True or not isinstance(path, str) or not path or ".." in path.split("/"):
            raise ChannelRejectedError(f"Telegram getFile gave no file_path: {scrub(str(reply)[:200], secrets)}")
        response = self.get_stream(
            f"{self.api_base}/file/bot{token}/{urllib.parse.quote(path, safe='/')}", secrets=secrets
        )
        name = path.rsplit("/", 1)[-1]
        return self.fetched(response, secrets, mime_type=mimetypes.guess_type(name)[0], filename=name or None)


# a file goes out by its URL (Telegram fetches it): sendPhoto, sendVideo or sendDocument, the text its caption
MEDIA_METHODS = {
    "image": ("sendPhoto", "photo"),
    "video": ("sendVideo", "video"),
    "document": ("sendDocument", "document"),
}


def _send_call(message: OutboundMessage) -> tuple[str, dict[str, Any]]:
    if message.media is None:
        return "sendMessage", {"text": message.text}
    method, field = MEDIA_METHODS[message.media.kind]
    body: dict[str, Any] = {field: message.media.url}
    if message.text:
        body["caption"] = message.text
    return method, body


# a message is kept under `<bot id>:<chat id>:<message_id>` (telegram_message_id); the API shows Telegram's own
# `message_id`, as the contract names it (a reaction's key, `...:reaction:<date>`, is shown whole)
_MESSAGE_KEY = re.compile(r"\d+:-?\d+:(\d+)")


def shown_message_id(key: str) -> str:
    return match.group(1) if (match := _MESSAGE_KEY.fullmatch(key)) else key


def _refused_bot(answer: Mapping[str, Any], credentials: Mapping[str, str]) -> tuple[str, str] | None:
    result = answer.get("result")
    if answer.get("ok") is not True or not isinstance(result, dict) or result.get("is_bot") is not True:
        return "credentials.bot_token", "getMe did not describe a bot"
    return None


# Rate: "the API will not allow more than 30 messages per second or so" (Telegram Bot FAQ, "My bot is hitting
# limits"; chat4all.domain.channel_limits).
DEFINITION = register(
    PlatformDefinition(
        name=Platform.TELEGRAM,
        connector=TelegramConnector,
        api_base_variable="TELEGRAM_API_BASE",
        api_base_default="https://api.telegram.org",
        rate_limit=30,
        # the bot's id, the part of the token before the colon: it identifies the bot but is no secret
        account_field="bot_token",
        account_of=lambda token: token.split(":", 1)[0],
        # Telegram's Updates do not name the bot: its webhooks carry the channel's secret_token in a header
        webhook_header_field="secret_token",
        credential_check=CredentialCheck(
            path=lambda credentials: f"/bot{credentials['bot_token']}/getMe",
            refused_field="credentials.bot_token",
            refusal=_refused_bot,
        ),
        shown_message_id=shown_message_id,
    )
)
