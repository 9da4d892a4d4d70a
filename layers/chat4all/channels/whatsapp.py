"""WhatsApp Cloud API: text sending, signed webhooks with messages and statuses."""

from __future__ import annotations

import urllib.parse
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import ConfigDict

from chat4all.channels.bodies import Lenient, parse_body, unix_time
from chat4all.channels.meta import GraphErrorCodes, MetaWebhookConnector, strings_at
from chat4all.domain.credentials import ChannelCredentials, WhatsAppCredentials
from chat4all.domain.errors import ChannelOutcomeUnknownError, ChannelRejectedError
from chat4all.domain.models import InboundMedia, InboundMessage, MessageStatus, Platform, ProviderReceipt, StatusReport
from chat4all.domain.platforms import CredentialCheck, PlatformDefinition, register

if TYPE_CHECKING:
    from collections.abc import Mapping

    from chat4all.domain.models import FetchedMedia, OutboundMessage

# The Cloud API's error codes by class (developers.facebook.com/documentation/business-messaging/whatsapp/support/
# error-codes, updated Jun 18, 2026; throughput: .../whatsapp/throughput). Rate limits, with the wait when the
# answer names none, and whether the whole number is held or only this recipient waits:
# Any other refusal (131047 "Re-engagement message", 131008/131009 bad parameters, 100 ...) is permanent for this
# message.
ERROR_CODES = GraphErrorCodes(
    platform="WhatsApp",
    rate_limits={
        4: (60.0, True),  # "API Too Many Calls": the app's call rate
        80007: (60.0, True),  # "Rate limit issues": the WhatsApp Business Account's limit
        130429: (1.0, True),  # "Rate limit hit": the number's throughput (80 mps by default)
        131056: (6.0, False),  # "(Business Account, Consumer Account) pair rate limit hit": about 1 message / 6 s
    },
    credentials=frozenset({190}),  # OAuthException "Access token has expired" / invalid token
    # "Message Undeliverable": not a WhatsApp user, has not accepted the terms, or too old a client
    recipients=frozenset({(131026, None)}),
    # "Unknown API" / "API Service" / "Something went wrong" / "Service unavailable": Meta's side, worth retrying
    retryable=frozenset({1, 2, 131000, 131016}),
)

STATUS_MAP = {
    "sent": MessageStatus.SENT,
    "delivered": MessageStatus.DELIVERED,
    "read": MessageStatus.READ,
    "failed": MessageStatus.FAILED,
}


class _Text(Lenient):
    body: str


class _Contact(Lenient):
    wa_id: str
    profile: dict[str, Any] = {}


class _Media(Lenient):
    id: str | None = None
    caption: str | None = None
    mime_type: str | None = None
    filename: str | None = None  # a document's


class _Location(Lenient):
    latitude: float | None = None
    longitude: float | None = None
    name: str | None = None
    address: str | None = None


class _Reaction(Lenient):
    message_id: str | None = None
    emoji: str | None = None


class _InboundMessage(Lenient):
    id: str
    from_: str
    timestamp: str
    type: str
    text: _Text | None = None
    image: _Media | None = None
    video: _Media | None = None
    document: _Media | None = None
    audio: _Media | None = None
    sticker: _Media | None = None
    location: _Location | None = None
    reaction: _Reaction | None = None

    model_config = ConfigDict(extra="ignore", populate_by_name=True, alias_generator=lambda f: f.rstrip("_"))

    def content(self) -> str | None:
        """The text, or what stands for it in a message of another type (caption, place, emoji)."""
        if self.text is not None:
            return self.text.body
        media = self.image or self.video or self.document or self.audio or self.sticker
        if media is not None:
            return media.caption
        if self.location is not None:
            return location_text(self.location.latitude, self.location.longitude, self.location.name)
        if self.reaction is not None:
            return self.reaction.emoji or None
        return None

    def media(self) -> InboundMedia | None:
        """A photo, document or video: its media id (GET /{media id} gives its URL), type and name."""
        media = self.image or self.document or self.video
        if media is None or not media.id:
            return None
        return InboundMedia(media.id, media.mime_type, media.filename)


class _StatusError(Lenient):
    code: int | None = None
    title: str | None = None
    message: str | None = None


class _Status(Lenient):
    id: str
    status: str
    timestamp: str
    recipient_id: str | None = None
    errors: list[_StatusError] = []


class _Metadata(Lenient):
    phone_number_id: str


class _Value(Lenient):
    # absent from changes of other webhook fields (template status and the like), which name no number
    metadata: _Metadata | None = None
    contacts: list[_Contact] = []
    messages: list[_InboundMessage] = []
    statuses: list[_Status] = []


class _Change(Lenient):
    field: str | None = None
    value: _Value


class _Entry(Lenient):
    changes: list[_Change] = []


class _Envelope(Lenient):
    object: str | None = None
    entry: list[_Entry]


def location_text(latitude: float | None, longitude: float | None, name: str | None = None) -> str | None:
    """A shared place as stored in a message's content: "lat,long" and its name when it has one."""
    if latitude is None or longitude is None:
        return name
    return f"{latitude},{longitude}" + (f" {name}" if name else "")


def _content(message: OutboundMessage) -> dict[str, Any]:
    """The message's part of a Cloud API send: a text, a media message by link (its caption the text), or a
    template by name and language with its components."""
    if message.media is not None:
        media: dict[str, Any] = {"link": message.media.url}
        if message.text:
            media["caption"] = message.text
        if message.media.kind == "document":
            media["filename"] = message.media.filename
        return {"type": message.media.kind, message.media.kind: media}
    if message.template is None:
        return {"type": "text", "text": {"body": message.text}}
    template: dict[str, Any] = {"name": message.template["name"], "language": {"code": message.template["language"]}}
    if message.template.get("components"):
        template["components"] = [_component(c) for c in message.template["components"]]
    return {"type": "template", "template": template}


def _component(component: dict[str, Any]) -> dict[str, Any]:
    """A component as the Cloud API takes it (a button's index is a string there)."""
    if component.get("index") is None:
        return component
    return {**component, "index": str(component["index"])}


class WhatsAppConnector(MetaWebhookConnector):
    platform = Platform.WHATSAPP
    credentials_model: ClassVar[type[ChannelCredentials]] = WhatsAppCredentials
    codes = ERROR_CODES

    def account_ids(self, payload: dict[str, Any]) -> list[str]:
        return sorted(set(strings_at(payload, "entry", "changes", "value", "metadata", "phone_number_id")))

    def parse_webhook(
        self, payload: dict[str, Any], account_id: str | None = None
    ) -> list[InboundMessage | StatusReport]:
        events: list[InboundMessage | StatusReport] = []
        for entry in parse_body(_Envelope, payload, "a WhatsApp webhook body").entry:
            for change in entry.changes:
                if change.value.metadata is None:
                    continue
                account = change.value.metadata.phone_number_id
                names = {c.wa_id: c.profile.get("name") for c in change.value.contacts}
                events.extend(self._inbound(m, names, account) for m in change.value.messages)
                events.extend(self._status(s, account) for s in change.value.statuses if s.status in STATUS_MAP)
        return events

    def _inbound(self, message: _InboundMessage, names: dict[str, Any], account: str) -> InboundMessage:
        name = names.get(message.from_)
        return InboundMessage(
            platform=Platform.WHATSAPP,
            platform_message_id=message.id,
            platform_user_id=message.from_,
            sender_name=name if isinstance(name, str) else None,
            text=message.content(),
            at=unix_time(message.timestamp, "timestamp"),
            message_type=message.type[:40] or "unknown",
            account_id=account,
            media=message.media(),
        )

    def _status(self, status: _Status, account: str) -> StatusReport:
        detail = "; ".join(f"{e.code}: {e.title or e.message}" for e in status.errors) or None
        return StatusReport(
            platform=Platform.WHATSAPP,
            platform_message_id=status.id,
            status=STATUS_MAP[status.status],
            at=unix_time(status.timestamp, "timestamp"),
            detail=detail,
            account_id=account,
        )

    def send(self, credentials: Mapping[str, str], message: OutboundMessage) -> ProviderReceipt:
        reply = self.post_json(
            f"{self.api_base}/{credentials['phone_number_id']}/messages",
            {"messaging_product": "whatsapp", "to": message.recipient.lstrip("+"), **_content(message)},
            headers={"Authorization": f"Bearer {credentials['access_token']}"},
        )
        try:
            return ProviderReceipt(platform_message_id=str(reply["messages"][0]["id"]))
        except (KeyError, IndexError, TypeError) as exc:
            # a success without the id: it was probably sent, so it must not be sent again
            raise ChannelOutcomeUnknownError(f"WhatsApp reply has no messages[0].id: {str(reply)[:300]}") from exc

    def fetch_media(self, credentials: Mapping[str, str], reference: str) -> FetchedMedia:
        """GET /{media id} with the number's token gives the media's URL (good for minutes), which is read with
        the same token (developers.facebook.com, WhatsApp Cloud API, "Media": retrieve and download media)."""
        auth = {"Authorization": f"Bearer {credentials['access_token']}"}
        answer = self.get_json(f"{self.api_base}/{urllib.parse.quote(reference, safe='')}", auth)
        url = answer.get("url")
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise ChannelRejectedError(f"WhatsApp media {reference} has no URL: {str(answer)[:200]}")
        response = self.get_stream(url, auth)
        mime_type = answer.get("mime_type")
        if not isinstance(mime_type, str):
            mime_type = response.headers.get("content-type")
        return self.fetched(response, [credentials["access_token"]], mime_type=mime_type, filename=None)


def _refused_number(answer: Mapping[str, Any], credentials: Mapping[str, str]) -> tuple[str, str] | None:
    if str(answer.get("id")) != credentials["phone_number_id"]:
        return "credentials.phone_number_id", "is not the number this access token manages"
    return None


# Rate: "For each registered business phone number, Cloud API supports up to 80 messages per second (mps) by
# default" (developers.facebook.com, WhatsApp Business Platform, "Throughput"; chat4all.domain.channel_limits).
DEFINITION = register(
    PlatformDefinition(
        name=Platform.WHATSAPP,
        connector=WhatsAppConnector,
        api_base_variable="WHATSAPP_API_BASE",
        api_base_default="https://graph.facebook.com/v21.0",
        rate_limit=80,
        account_field="phone_number_id",  # value.metadata.phone_number_id names it in every webhook
        credential_check=CredentialCheck(
            path=lambda credentials: f"/{credentials['phone_number_id']}",
            refused_field="credentials.access_token",
            bearer_field="access_token",
            refusal=_refused_number,
        ),
        subscription_check=True,  # GET hub.mode=subscribe&hub.verify_token=..&hub.challenge=..
        user_id_is_phone=True,  # a wa_id is the customer's number, E.164 without the +
    )
)
