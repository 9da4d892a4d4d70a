"""Instagram messaging (Instagram API with Instagram Login): text sending, signed `entry[].messaging[]` webhooks
with messages, reactions and read receipts."""

from __future__ import annotations

import urllib.parse
from typing import TYPE_CHECKING, Any, ClassVar

from chat4all.channels.bodies import Lenient, parse_body, unix_time
from chat4all.channels.meta import GraphErrorCodes, MetaWebhookConnector, strings_at
from chat4all.domain.credentials import ChannelCredentials, InstagramCredentials
from chat4all.domain.errors import ChannelOutcomeUnknownError, ChannelRejectedError
from chat4all.domain.models import InboundMedia, InboundMessage, MessageStatus, Platform, ProviderReceipt, StatusReport
from chat4all.domain.platforms import CredentialCheck, PlatformDefinition, register

if TYPE_CHECKING:
    from collections.abc import Mapping

    from chat4all.domain.models import FetchedMedia, OutboundMessage

# Instagram messaging answers with the Messenger Platform's Graph errors (developers.facebook.com/docs/
# messenger-platform/error-codes, updated Mar 18, 2026) and the Graph API's throttling codes
# (developers.facebook.com/docs/graph-api/overview/rate-limiting: 4 application, 17 user, 32 page, 613 custom,
# 80002 the Instagram business use case). Rate limits hold the account for the answer's Retry-After, else a minute
# (Meta: "pause requests until current requests drop below the limit"). Any other refusal (10/2018278 "sent outside
# of allowed window", 100 bad parameters ...) is permanent for this message.
ERROR_CODES = GraphErrorCodes(
    platform="Instagram",
    rate_limits={code: (60.0, True) for code in (4, 17, 32, 613, 80002)},
    credentials=frozenset({190}),  # "Invalid OAuth access token"
    # 551 "This person isn't available right now"; 100/2018001 "No matching user found"
    recipients=frozenset({(551, None), (100, 2018001)}),
    # 1 "An unknown error occurred", 2 "Temporary send message failure. Please try again later."
    retryable=frozenset({1, 2}),
)

# Instagram's attachment types, as message types where the names differ
ATTACHMENT_TYPES = {"file": "document"}
# the attachments fetched as files (by their payload.url); audio, stickers and shares keep their type only
MEDIA_KINDS = frozenset({"image", "document", "video"})


class _Party(Lenient):
    id: str


class _Payload(Lenient):
    url: str | None = None


class _Attachment(Lenient):
    type: str
    payload: _Payload | None = None


class _Message(Lenient):
    mid: str
    text: str | None = None
    attachments: list[_Attachment] = []
    is_echo: bool = False
    is_deleted: bool = False


class _Read(Lenient):
    mid: str


class _Reaction(Lenient):
    mid: str
    action: str | None = None
    emoji: str | None = None
    reaction: str | None = None


class _Messaging(Lenient):
    sender: _Party
    recipient: _Party
    timestamp: int
    message: _Message | None = None
    read: _Read | None = None
    reaction: _Reaction | None = None


class _Entry(Lenient):
    id: str
    messaging: list[_Messaging] = []


class _Envelope(Lenient):
    object: str | None = None
    entry: list[_Entry]


class InstagramConnector(MetaWebhookConnector):
    platform = Platform.INSTAGRAM
    credentials_model: ClassVar[type[ChannelCredentials]] = InstagramCredentials
    codes = ERROR_CODES

    def account_ids(self, payload: dict[str, Any]) -> list[str]:
        return sorted(set(strings_at(payload, "entry", "id")))

    def parse_webhook(
        self, payload: dict[str, Any], account_id: str | None = None
    ) -> list[InboundMessage | StatusReport]:
        events: list[InboundMessage | StatusReport] = []
        for entry in parse_body(_Envelope, payload, "an Instagram messaging webhook body").entry:
            for item in entry.messaging:
                # the account's own messages come back as echoes (sender is the account): not inbound
                if item.sender.id == entry.id:
                    continue
                event = self._event(item, entry.id)
                if event is not None:
                    events.append(event)
        return events

    def _event(self, item: _Messaging, account: str) -> InboundMessage | StatusReport | None:
        at = unix_time(item.timestamp, "timestamp", milliseconds=True)
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
            at=unix_time(item.timestamp, "timestamp", milliseconds=True),
            message_type=kind,
            account_id=account,
            media=media,
        )

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
        return self.fetched(response, mime_type=response.headers.get("content-type"), filename=None)


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
