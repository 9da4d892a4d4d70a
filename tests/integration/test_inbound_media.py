"""Media in against the real stack (issue 18): a PNG a person sends as an image to a WhatsApp number, a Telegram bot
and an Instagram account (signed webhooks, the platforms' formats served by the fakes in tests/support) is in the
conversation's history at once with a file_id; the files function fetches it from the platform by its reference,
and the ordinary checks make it CLEAN with a thumbnail; its download URL gives the same bytes. A reference the
platform answers 404 for ends REJECTED, the message staying in history."""

from __future__ import annotations

import hashlib
import random
import time
import urllib.parse
import uuid
from typing import TYPE_CHECKING, Any

from chat4all.domain.models import Platform
from tests.integration.test_channels import (
    agent,
    disable,
    history,
    instagram_channel,
    message,
    post_instagram,
    post_telegram,
    telegram_channel,
)
from tests.integration.test_files import download, png_bytes, settled
from tests.integration.test_message_path import post_webhook
from tests.support.fake_instagram import messaging_webhook
from tests.support.fake_whatsapp import message_webhook, sign

if TYPE_CHECKING:
    from tests.integration.conftest import Api, WhatsAppSetup
    from tests.support.fake_instagram import FakeInstagram
    from tests.support.fake_telegram import FakeTelegram
    from tests.support.fake_whatsapp import FakeWhatsApp


def clean_with_thumbnail(api: Api, file_id: str, data: bytes, key: str | None = None) -> dict[str, Any]:
    """The file once checked: CLEAN, a thumbnail, and a download URL that gives `data` back."""
    view = settled(api, file_id)
    assert view["status"] == "CLEAN", view
    assert view["size"] == len(data)
    assert view["mime_type"] == "image/png"
    assert view["thumbnail"]["url"]
    assert hashlib.sha256(download(view["download_url"])).digest() == hashlib.sha256(data).digest()
    assert download(view["thumbnail"]["url"])[:3] == b"\xff\xd8\xff"  # a JPEG
    return view


def whatsapp_image(
    api: Api, setup: WhatsAppSetup, media_id: str, caption: str = "esta foto", mime_type: str = "image/png"
) -> str:
    wamid = f"wamid.{uuid.uuid4().hex}"
    body = message_webhook(
        setup.credentials["phone_number_id"],
        wamid,
        setup.customer_phone,
        "Carl",
        caption,
        media=("image", media_id, mime_type),
    )
    assert post_webhook(api, body, sign(setup.credentials["app_secret"], body)) == 200
    return wamid


def test_an_image_sent_to_a_whatsapp_number_becomes_a_clean_file_of_the_conversation(
    api: Api, whatsapp_conversation: WhatsAppSetup, fake_whatsapp: FakeWhatsApp
) -> None:
    setup = whatsapp_conversation
    data = png_bytes(800, 600)
    token = setup.credentials["access_token"]
    media_id = fake_whatsapp.add_media(data, "image/png", token)

    # the webhook does not wait for the fetch: the platform's media download takes 3 s here
    warm = message_webhook(setup.credentials["phone_number_id"], f"wamid.{uuid.uuid4().hex}", "5511", "W", "oi")
    assert post_webhook(api, warm, sign(setup.credentials["app_secret"], warm)) == 200
    fake_whatsapp.media_delay = 3.0
    try:
        started = time.monotonic()
        wamid = whatsapp_image(api, setup, media_id)
        answered = time.monotonic() - started
        stored = message(api, Platform.WHATSAPP, wamid)
        assert answered < 1.0, answered
        # at once in history: the caption, the type, and the file it carries
        [item] = [m for m in history(api, setup.conversation_id) if m["message_id"] == stored["message_id"]]
        assert (item["content"], item["message_type"], item["direction"]) == ("esta foto", "image", "INBOUND")
        file_id = item["file_id"]
        assert file_id and stored["file_id"] == file_id
        assert api.call("GET", f"/v1/files/{file_id}").json()["status"] == "UPLOADING"
        clean_with_thumbnail(api, file_id, data)
    finally:
        fake_whatsapp.media_delay = 0.0

    # fetched the documented way: GET /{media id} with the number's token, then the URL it gave, with the token
    reads = [(path, auth) for path, auth in fake_whatsapp.media_reads if media_id in path]
    assert [path.split("?")[0] for path, _ in reads] == [f"/v21.0/{media_id}", "/whatsapp_business/attachments/"]
    assert {auth for _, auth in reads} == {f"Bearer {token}"}

    # the conversation's participants read it; an agent of another conversation does not
    own = api.created("/v1/api-keys", {"name": "media-in", "role": "agent", "user_id": setup.agent_id})["api_key"]
    assert api.call("GET", f"/v1/files/{file_id}", key=own).json()["status"] == "CLEAN"
    stranger = agent(api)
    other = api.created("/v1/api-keys", {"name": "media-out", "role": "agent", "user_id": stranger})["api_key"]
    assert api.call("GET", f"/v1/files/{file_id}", key=other).status_code == 403


def test_an_image_sent_to_a_telegram_bot_becomes_a_clean_file(api: Api, fake_telegram: FakeTelegram) -> None:
    agent_id = agent(api)
    channel_id, credentials = telegram_channel(api, agent_id)
    bot_id = credentials["bot_token"].split(":")[0]
    chat_id = random.randrange(10**8, 10**9)
    data = png_bytes(500, 700)
    file_id_on_telegram = fake_telegram.add_file(credentials["bot_token"], data, "photos/file_12.png")
    message_id, body = fake_telegram.incoming(chat_id, 1, photo_file_id=file_id_on_telegram, caption="este")
    assert post_telegram(api, body, credentials["secret_token"]) == 200

    stored = message(api, Platform.TELEGRAM, f"{bot_id}:{chat_id}:{message_id}")
    [item] = history(api, stored["conversation_id"])
    assert (item["content"], item["message_type"]) == ("este", "image")
    clean_with_thumbnail(api, item["file_id"], data)
    # getFile on the bot's token, then /file/bot<token>/<file_path>
    assert "photos/file_12.png" in fake_telegram.downloads
    calls = [body for token, body in fake_telegram.called("getFile") if token == credentials["bot_token"]]
    assert calls == [{"file_id": file_id_on_telegram}]
    disable(api, channel_id)


def test_an_image_sent_to_an_instagram_account_becomes_a_clean_file(api: Api, fake_instagram: FakeInstagram) -> None:
    agent_id = agent(api)
    channel_id, credentials = instagram_channel(api, fake_instagram, agent_id)
    data = png_bytes(300, 300)
    url = fake_instagram.add_attachment(data, "image/png")
    igsid = str(random.randrange(10**15, 10**16))
    mid = f"aWdf{uuid.uuid4().hex}"
    body = messaging_webhook(credentials["ig_user_id"], igsid, mid, attachment="image", attachment_url=url)
    assert post_instagram(api, body, sign(credentials["app_secret"], body)) == 200

    stored = message(api, Platform.INSTAGRAM, mid)
    [item] = history(api, stored["conversation_id"])
    assert item["message_type"] == "image"
    clean_with_thumbnail(api, item["file_id"], data)
    # the CDN link is read as it is, without the account's token
    [(_, headers)] = [read for read in fake_instagram.cdn_reads if read[0] == urllib.parse.urlsplit(url).path]
    assert "authorization" not in headers
    disable(api, channel_id)


def test_a_reference_the_platform_answers_404_for_ends_rejected_and_the_message_stays(
    api: Api, whatsapp_conversation: WhatsAppSetup, fake_whatsapp: FakeWhatsApp, fake_instagram: FakeInstagram
) -> None:
    setup = whatsapp_conversation
    wamid = whatsapp_image(api, setup, fake_whatsapp.missing_media_id(), caption="sumiu")
    stored = message(api, Platform.WHATSAPP, wamid)
    view = settled(api, stored["file_id"])
    assert view["status"] == "REJECTED", view
    assert "404" in view["reason"]
    assert "download_url" not in view and "thumbnail" not in view
    [item] = [m for m in history(api, setup.conversation_id) if m["message_id"] == stored["message_id"]]
    assert (item["content"], item["file_id"]) == ("sumiu", stored["file_id"])

    # an Instagram attachment whose CDN link is gone
    channel_id, credentials = instagram_channel(api, fake_instagram, agent(api))
    mid = f"aWdf{uuid.uuid4().hex}"
    url = fake_instagram.missing_attachment()
    body = messaging_webhook(credentials["ig_user_id"], "1234567", mid, attachment="image", attachment_url=url)
    assert post_instagram(api, body, sign(credentials["app_secret"], body)) == 200
    on_instagram = message(api, Platform.INSTAGRAM, mid)
    assert settled(api, on_instagram["file_id"])["status"] == "REJECTED"
    assert [m["file_id"] for m in history(api, on_instagram["conversation_id"])] == [on_instagram["file_id"]]
    disable(api, channel_id)
