"""Instagram messaging (Instagram API with Instagram Login): text sending, signed `entry[].messaging[]` webhooks
with messages, reactions and read receipts."""

from __future__ import annotations

import urllib.parse
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from chat4all.channels.http import by_status, content_length
from chat4all.channels.meta import MetaWebhookConnector, graph_error, strings_at
from chat4all.domain.credentials import ChannelCredentials, InstagramCredentials
from chat4all.domain.errors import (
    BadRequestError,
    ChannelCredentialsRejectedError,
    ChannelError,
    ChannelOutcomeUnknownError,
    ChannelRateLimitedError,
    ChannelRecipientRejectedError,
    ChannelRejectedError,
    ChannelRetryableError,
)
from chat4all.domain.models import (
    FetchedMedia,
    InboundMedia,
    InboundMessage,
    MessageStatus,
    Platform,
    ProviderReceipt,
    StatusReport,
)
from chat4all.domain.platforms import CredentialCheck, PlatformDefinition, register

if TYPE_CHECKING:
    from collections.abc import Mapping

    from chat4all.domain.models import OutboundMessage

# Instagram messaging answers with the Messenger Platform's Graph errors (developers.facebook.com/docs/
# messenger-platform/error-codes, updated Mar 18, 2026) and the Graph API's throttling codes
# (developers.facebook.com/docs/graph-api/overview/rate-limiting: 4 application, 17 user, 32 page, 613 custom,
# 80002 the Instagram business use case). Rate limits hold the account for the answer's Retry-After, else a minute
# (Meta: "pause requests until current requests drop below the limit"):
RATE_LIMIT_CODES = frozenset({4, 17, 32, 613, 80002})
RATE_LIMIT_PAUSE_SECONDS = 60.0
CREDENTIALS_CODES = frozenset({190})  # "Invalid OAuth access token"
# 551 "This person isn't available right now"; 100/2018001 "No matching user found"
RECIPIENT_CODES = frozenset({(551, None), (100, 2018001)})
# 1 "An unknown error occurred", 2 "Temporary send message failure. Please try again later."
RETRYABLE_CODES = frozenset({1, 2})

# Instagram's attachment types, as message types where the names differ
ATTACHMENT_TYPES = {"file": "document"}
# the attachments fetched as files (by their payload.url); audio, stickers and shares keep their type only
MEDIA_KINDS = frozenset({"image", "document", "video"})


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Party(_Lenient):
    id: str


class _Payload(_Lenient):
    url: str | None = None


class _Attachment(_Lenient):
    type: str
    payload: _Payload | None = None


class _Message(_Lenient):
    mid: str
    text: str | None = None
    attachments: list[_Attachment] = []
    is_echo: bool = False
    is_deleted: bool = False


class _Read(_Lenient):
    mid: str


class _Reaction(_Lenient):
    mid: str
    action: str | None = None
    emoji: str | None = None
    reaction: str | None = None


class _Messaging(_Lenient):
    sender: _Party
    recipient: _Party
    timestamp: int
    message: _Message | None = None
    read: _Read | None = None
    reaction: _Reaction | None = None


class _Entry(_Lenient):
    id: str
    messaging: list[_Messaging] = []


class _Envelope(_Lenient):
    object: str | None = None
    entry: list[_Entry]


def _envelope(payload: dict[str, Any]) -> _Envelope:
    try:
        return _Envelope.model_validate(payload)
    except ValidationError as exc:
        raise BadRequestError(f"not an Instagram messaging webhook body: {exc.errors()[0]['msg']}") from exc


def _at(milliseconds: int) -> datetime:
    try:
        return datetime.fromtimestamp(milliseconds / 1000, UTC)
    except (ValueError, OverflowError, OSError) as exc:
        raise BadRequestError(f"timestamp {milliseconds!r} is not a UNIX time in milliseconds") from exc


class InstagramConnector(MetaWebhookConnector):
    platform = Platform.INSTAGRAM
    credentials_model: ClassVar[type[ChannelCredentials]] = InstagramCredentials

    def account_ids(self, payload: dict[str, Any]) -> list[str]:
        return sorted(set(strings_at(payload, "entry", "id")))

    def parse_webhook(
        self, payload: dict[str, Any], account_id: str | None = None
    ) -> list[InboundMessage | StatusReport]:
        events: list[InboundMessage | StatusReport] = []
        for entry in _envelope(payload).entry:
            for item in entry.messaging:
                # the account's own messages come back as echoes (sender is the account): not inbound
                if item.sender.id == entry.id:
                    continue
                event = self._event(item, entry.id)
                if event is not None:
                    events.append(event)
        return events

    def _event(self, item: _Messaging, account: str) -> InboundMessage | StatusReport | None:
        at = _at(item.timestamp)
        if item.read is not None:
            return StatusReport(Platform.INSTAGRAM, item.read.mid, MessageStatus.READ, at, account_id=account)
        if item.message is not None and not item.message.is_echo and not item.message.is_deleted:
            message = item.message
            kind = "text"
            media = None
            if message.attachments:
                first = message.attachments[0]
                kind = ATTACHMENT_TYPES.get(first.type, first.type)[:40]
                url = first.payload.url if first.payload is not None else None
                if kind in MEDIA_KINDS and url:
                    media = InboundMedia(url)
            return self._inbound(item, message.mid, message.text, kind, account, media)
        if item.reaction is not None and item.reaction.action != "unreact":
            reaction = item.reaction
            # a reaction has no id of its own: the message it is on, who reacted and when
            pmid = f"{reaction.mid}:reaction:{item.sender.id}:{item.timestamp}"
            return self._inbound(item, pmid, reaction.emoji or reaction.reaction, "reaction", account)
        return None

    def _inbound(
        self, item: _Messaging, pmid: str, text: str | None, kind: str, account: str, media: InboundMedia | None = None
    ) -> InboundMessage:
        return InboundMessage(
            platform=Platform.INSTAGRAM,
            platform_message_id=pmid,
            platform_user_id=item.sender.id,
            sender_name=None,
            text=text,
            at=_at(item.timestamp),
            message_type=kind,
            account_id=account,
            media=media,
        )

    def classify(
        self, status: int, payload: dict[str, Any] | None, text: str, retry_after: float | None
    ) -> ChannelError:
        """Any other refusal (10/2018278 "sent outside of allowed window", 100 bad parameters ...) is permanent for
        this message."""
        code, subcode, summary, transient = graph_error(payload)
        detail = f"Instagram answered {status}, {summary}" if summary else f"Instagram answered {status}: {text}"
        if code in RATE_LIMIT_CODES:
            wait = retry_after or RATE_LIMIT_PAUSE_SECONDS
            return ChannelRateLimitedError(detail, retry_after_seconds=wait, status_code=status)
        if code in CREDENTIALS_CODES:
            return ChannelCredentialsRejectedError(detail, status_code=status)
        if (code, None) in RECIPIENT_CODES or (code, subcode) in RECIPIENT_CODES:
            return ChannelRecipientRejectedError(detail, status_code=status)
        if code in RETRYABLE_CODES or transient:
            return ChannelRetryableError(detail, status_code=status)
        return by_status(status, detail, retry_after)

    def send(self, credentials: Mapping[str, str], message: OutboundMessage) -> ProviderReceipt:
        reply = self.post_json(
            f"{self.api_base}/{credentials['ig_user_id']}/messages",
            {"recipient": {"id": message.recipient}, "message": _message_body(message)},
            headers={"Authorization": f"Bearer {credentials['access_token']}"},
        )
        platform_message_id = reply.get("message_id")
        if not isinstance(platform_message_id, str) or not platform_message_id:
            # a 2xx answer: Instagram may have sent it, so it is never sent again (as WhatsApp's)
            raise ChannelOutcomeUnknownError(f"Instagram reply has no message_id: {str(reply)[:300]}")
        return ProviderReceipt(platform_message_id=platform_message_id)

    def fetch_media(self, credentials: Mapping[str, str], reference: str) -> FetchedMedia:
        """GET the attachment's URL (`attachments[].payload.url`, a CDN link that needs no token: none is sent,
        so the account's token never goes to a host the webhook names). Only http(s) URLs."""
        if urllib.parse.urlsplit(reference).scheme not in ("https", "http"):
            raise ChannelRejectedError("Instagram attachment URL is not http(s)")
        response = self.get_stream(reference)
        return FetchedMedia(
            chunks=self.media_chunks(response),
            mime_type=response.headers.get("content-type"),
            filename=None,
            size=content_length(response),
            close=response.close,
        )


def _message_body(message: OutboundMessage) -> dict[str, Any]:
    """A text, or a file as an attachment by URL (Instagram takes no caption with it: the text is not sent)."""
    if message.media is None:
        return {"text": message.text}
    kind = {"image": "image", "video": "video"}.get(message.media.kind, "file")
    return {"attachment": {"type": kind, "payload": {"url": message.media.url}}}


def _refused_account(answer: Mapping[str, Any], credentials: Mapping[str, str]) -> tuple[str, str] | None:
    if credentials["ig_user_id"] not in {str(answer.get("user_id")), str(answer.get("id"))}:
        return "credentials.ig_user_id", "is not the account this access token belongs to"
    return None


# Rate: 300 calls per second per Instagram professional account for text, links, reactions and stickers
# (developers.facebook.com, "Messenger Platform rate limits"; chat4all.domain.channel_limits).
DEFINITION = register(
    PlatformDefinition(
        name=Platform.INSTAGRAM,
        connector=InstagramConnector,
        api_base_variable="INSTAGRAM_API_BASE",
        api_base_default="https://graph.instagram.com/v21.0",
        rate_limit=300,
        account_field="ig_user_id",  # entry[].id names it in every webhook
        credential_check=CredentialCheck(
            path=lambda credentials: "/me",
            refused_field="credentials.access_token",
            bearer_field="access_token",
            params=(("fields", "user_id,username"),),
            refusal=_refused_account,
        ),
        subscription_check=True,
    )
)
