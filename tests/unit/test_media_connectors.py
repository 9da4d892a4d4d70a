"""Media in, the connectors' part: each inbound photo, document or video keeps the platform's reference to its
bytes, and `fetch_media` reads them the documented way (WhatsApp media id -> URL -> bytes with the token;
Telegram getFile -> /file/bot<token>/<path>; Instagram the attachment URL), streamed, with refusals classified and
no token in any error."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from chat4all.channels.instagram import InstagramConnector
from chat4all.channels.telegram import TelegramConnector
from chat4all.channels.whatsapp import WhatsAppConnector
from chat4all.domain.errors import ChannelError, ChannelRejectedError, ChannelRetryableError
from chat4all.domain.models import InboundMedia
from tests.support.fake_instagram import messaging_webhook
from tests.support.fake_telegram import update

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40
WHATSAPP = {"access_token": "EAAG-secret-token", "phone_number_id": "106540352242922"}
TELEGRAM = {"bot_token": "7012345678:AAH" + "x" * 32, "secret_token": "s3cret_T"}
INSTAGRAM = {"access_token": "IGAA-token", "ig_user_id": "17841400000000001"}


def client(handler: Any) -> httpx.Client:
    return httpx.Client(transport=httpx.MockTransport(handler))


def whatsapp_media_webhook(kind: str, media: dict[str, Any]) -> dict[str, Any]:
    message = {"from": "5511999", "id": "wamid.1", "timestamp": "1750000000", "type": kind, kind: media}
    value = {"metadata": {"phone_number_id": WHATSAPP["phone_number_id"]}, "messages": [message]}
    return {"object": "whatsapp_business_account", "entry": [{"changes": [{"field": "messages", "value": value}]}]}


# ---------------------------------------------------------------------------------------------- references


@pytest.mark.parametrize(
    ("kind", "media", "expected"),
    [
        ("image", {"id": "1479", "mime_type": "image/jpeg", "sha256": "x", "caption": "c"},
         InboundMedia("1479", "image/jpeg")),
        ("document", {"id": "88", "mime_type": "application/pdf", "filename": "a.pdf"},
         InboundMedia("88", "application/pdf", "a.pdf")),
        ("video", {"id": "99", "mime_type": "video/mp4"}, InboundMedia("99", "video/mp4")),
        ("audio", {"id": "77", "mime_type": "audio/ogg"}, None),
    ],
)  # fmt: skip
def test_whatsapp_keeps_the_media_id_type_and_name(kind: str, media: dict[str, Any], expected: Any) -> None:
    [message] = WhatsAppConnector("https://wa.example").parse_webhook(whatsapp_media_webhook(kind, media))
    assert message.media == expected  # type: ignore[union-attr]
    assert message.message_type == kind


def test_telegram_keeps_the_largest_photo_and_a_documents_file_id() -> None:
    tg = TelegramConnector("https://tg.example")
    [photo] = tg.parse_webhook(json.loads(update(1, chat_id=5, message_id=1, photo=True)), account_id="701")
    assert photo.media == InboundMedia("AgACAgEAAxkBAAI320")  # type: ignore[union-attr]
    document = {
        "update_id": 2,
        "message": {
            "message_id": 2,
            "date": 1750000000,
            "chat": {"id": 5, "type": "private"},
            "from": {"id": 5, "is_bot": False, "first_name": "Ana"},
            "document": {
                "file_id": "BQAC",
                "file_unique_id": "u",
                "file_name": "r.pdf",
                "mime_type": "application/pdf",
            },
        },
    }
    [message] = tg.parse_webhook(document, account_id="701")
    assert (message.message_type, message.media) == ("document", InboundMedia("BQAC", "application/pdf", "r.pdf"))  # type: ignore[union-attr]
    [text] = tg.parse_webhook(json.loads(update(3, chat_id=5, message_id=3, text="oi")), account_id="701")
    assert text.media is None  # type: ignore[union-attr]


def test_instagram_keeps_the_attachment_url() -> None:
    ig = InstagramConnector("https://ig.example/v21.0")
    [image] = ig.parse_webhook(json.loads(messaging_webhook("178", "991", "mid.1", attachment="image")))
    assert image.media == InboundMedia("https://lookaside.example/mid.1")  # type: ignore[union-attr]
    [audio] = ig.parse_webhook(json.loads(messaging_webhook("178", "991", "mid.2", attachment="audio")))
    assert audio.media is None  # type: ignore[union-attr]


# ---------------------------------------------------------------------------------------------- fetching


def read(connector: Any, credentials: dict[str, str], reference: str) -> tuple[bytes, str | None, str | None]:
    with connector.fetch_media(credentials, reference) as media:
        return b"".join(media.chunks), media.mime_type, media.filename


def test_whatsapp_asks_the_media_url_then_reads_it_with_the_token() -> None:
    seen: list[tuple[str, str | None]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((str(request.url), request.headers.get("authorization")))
        if request.url.host == "wa.example":
            url = "https://lookaside.example/whatsapp_business/attachments/?mid=1479&ext=1&hash=abc"
            return httpx.Response(200, json={"messaging_product": "whatsapp", "url": url, "mime_type": "image/png",
                                             "sha256": "x", "file_size": len(PNG), "id": "1479"})  # fmt: skip
        return httpx.Response(200, content=PNG, headers={"content-type": "image/png"})

    wa = WhatsAppConnector("https://wa.example/v21.0", client(handler))
    assert read(wa, WHATSAPP, "1479") == (PNG, "image/png", None)
    bearer = f"Bearer {WHATSAPP['access_token']}"
    assert seen == [
        ("https://wa.example/v21.0/1479", bearer),
        ("https://lookaside.example/whatsapp_business/attachments/?mid=1479&ext=1&hash=abc", bearer),
    ]


def test_telegram_asks_getfile_then_reads_the_file_path_and_never_shows_the_token() -> None:
    token = TELEGRAM["bot_token"]

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == f"/bot{token}/getFile":
            assert json.loads(request.content) == {"file_id": "AgAC"}
            return httpx.Response(
                200, json={"ok": True, "result": {"file_id": "AgAC", "file_path": "photos/file_7.jpg"}}
            )
        if request.url.path == f"/file/bot{token}/photos/file_7.jpg":
            return httpx.Response(200, content=PNG)
        return httpx.Response(404, json={"ok": False, "error_code": 404, "description": f"Not Found {request.url}"})

    tg = TelegramConnector("https://tg.example", client(handler))
    assert read(tg, TELEGRAM, "AgAC") == (PNG, "image/jpeg", "file_7.jpg")

    def gone(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/getFile"):
            return httpx.Response(200, json={"ok": True, "result": {"file_id": "AgAC", "file_path": "photos/x.jpg"}})
        return httpx.Response(404, text=f"no such file at {request.url}")

    with pytest.raises(ChannelRejectedError) as refused:
        TelegramConnector("https://tg.example", client(gone)).fetch_media(TELEGRAM, "AgAC")
    assert token not in str(refused.value) and token.split(":")[1] not in str(refused.value)
    assert "[redacted]" in str(refused.value)


def test_instagram_reads_the_attachment_url_without_the_token() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=PNG, headers={"content-type": "image/png"})

    ig = InstagramConnector("https://ig.example/v21.0", client(handler))
    assert read(ig, INSTAGRAM, "https://cdn.example/a.png?sig=1") == (PNG, "image/png", None)
    assert "authorization" not in seen[0].headers
    with pytest.raises(ChannelRejectedError):
        ig.fetch_media(INSTAGRAM, "file:///etc/passwd")


@pytest.mark.parametrize(("status", "error"), [(404, ChannelRejectedError), (400, ChannelRejectedError),
                                               (503, ChannelRetryableError)])  # fmt: skip
def test_refusals_are_classified(status: int, error: type[ChannelError]) -> None:
    wa = WhatsAppConnector("https://wa.example/v21.0", client(lambda request: httpx.Response(status, json={})))
    with pytest.raises(error) as raised:
        wa.fetch_media(WHATSAPP, "1479")
    assert WHATSAPP["access_token"] not in str(raised.value)


def test_no_connection_is_retryable_and_redirects_are_followed() -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(ChannelRetryableError):
        InstagramConnector("https://ig.example", client(down)).fetch_media(INSTAGRAM, "https://cdn.example/a")

    def moved(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/a":
            return httpx.Response(302, headers={"location": "https://cdn2.example/b"})
        return httpx.Response(200, content=PNG)

    assert read(InstagramConnector("https://ig.example", client(moved)), INSTAGRAM, "https://cdn.example/a")[0] == PNG
