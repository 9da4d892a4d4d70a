"""Telegram and Instagram end to end, and webhooks attributed to the one channel they name (contract v1.1).

Real servers and the platform's own functions; the platforms are the fake servers in tests/support, which speak
each platform's documented format.
"""

from __future__ import annotations

import random
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import pytest

from chat4all import bootstrap
from chat4all.domain.models import Platform
from chat4all.prepare_databases import backfill_channel_keys
from chat4all.services.inbound import inbound_message_id
from tests.integration.conftest import wait_until_drained
from tests.integration.test_message_path import post_webhook, wait_for_status
from tests.support.fake_instagram import SERVER_ERROR, messaging_webhook, read_webhook
from tests.support.fake_telegram import BOT_BLOCKED, TOO_MANY_REQUESTS, update
from tests.support.fake_whatsapp import message_webhook, sign, status_webhook

if TYPE_CHECKING:
    from devstack.stack import LocalPlatform
    from tests.integration.conftest import Api, WhatsAppSetup
    from tests.support.fake_instagram import FakeInstagram
    from tests.support.fake_telegram import FakeTelegram
    from tests.support.fake_whatsapp import FakeWhatsApp


# ---------------------------------------------------------------------------------------------- helpers
def agent(api: Api) -> str:
    return str(api.created("/v1/users", {"display_name": "Ana Agent", "user_type": "AGENT"})["user_id"])


def telegram_channel(api: Api, default_agent_id: str | None = None) -> tuple[str, dict[str, str]]:
    bot_id = str(random.randrange(10**9, 10**10))
    credentials = {"bot_token": f"{bot_id}:AAH{uuid.uuid4().hex}", "secret_token": f"tg_{uuid.uuid4().hex}"}
    body: dict[str, Any] = {"platform": "TELEGRAM", "name": f"bot {bot_id}", "credentials": credentials}
    if default_agent_id:
        body["default_agent_id"] = default_agent_id
    return str(api.created("/v1/channels", body)["channel_id"]), credentials


def instagram_channel(api: Api, fake: FakeInstagram, default_agent_id: str | None = None) -> tuple[str, dict[str, str]]:
    credentials = {
        "access_token": f"IGAA{uuid.uuid4().hex}",
        "ig_user_id": str(random.randrange(10**16, 10**17)),
        "app_secret": uuid.uuid4().hex,
        "verify_token": uuid.uuid4().hex,
    }
    fake.add_account(credentials["access_token"], credentials["ig_user_id"])
    body: dict[str, Any] = {"platform": "INSTAGRAM", "name": "shop", "credentials": credentials}
    if default_agent_id:
        body["default_agent_id"] = default_agent_id
    return str(api.created("/v1/channels", body)["channel_id"]), credentials


def whatsapp_line(api: Api, phone_number_id: str | None = None) -> tuple[str, dict[str, str]]:
    credentials = {
        "access_token": f"EAAG-{uuid.uuid4().hex}",
        "phone_number_id": phone_number_id or str(random.randrange(10**14, 10**15)),
        "app_secret": uuid.uuid4().hex,
        "verify_token": uuid.uuid4().hex,
    }
    channel = api.created("/v1/channels", {"platform": "WHATSAPP", "name": "second line", "credentials": credentials})
    return str(channel["channel_id"]), credentials


def disable(api: Api, channel_id: str) -> None:
    """Later tests rely on one enabled channel per platform where a conversation names none."""
    response = api.call("PATCH", f"/v1/channels/{channel_id}", json={"enabled": False})
    assert response.status_code == 200, response.text


def post_telegram(api: Api, body: bytes, secret: str | None) -> int:
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers["X-Telegram-Bot-Api-Secret-Token"] = secret
    return api.client.post("/webhooks/telegram", content=body, headers=headers).status_code


def post_instagram(api: Api, body: bytes, signature: str) -> int:
    headers = {"X-Hub-Signature-256": signature, "Content-Type": "application/json"}
    return api.client.post("/webhooks/instagram", content=body, headers=headers).status_code


def message(api: Api, platform: Platform, platform_message_id: str) -> dict[str, Any]:
    response = api.call("GET", f"/v1/messages/{inbound_message_id(platform, platform_message_id)}")
    assert response.status_code == 200, response.text
    return dict(response.json())


def history(api: Api, conversation_id: str) -> list[dict[str, Any]]:
    return list(api.call("GET", f"/v1/conversations/{conversation_id}/messages").json()["items"])


def send(api: Api, conversation_id: str, sender_id: str, content: str) -> str:
    body = {"conversation_id": conversation_id, "sender_id": sender_id, "content": content}
    response = api.call("POST", "/v1/messages", json=body)
    assert response.status_code == 202, response.text
    return str(response.json()["message_id"])


def wait_until(check: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError("condition not reached")


# ---------------------------------------------------------------------------------------------- Telegram
def test_telegram_end_to_end(api: Api, fake_telegram: FakeTelegram) -> None:
    # GIVEN a Telegram bot installed with a default agent
    agent_id = agent(api)
    channel_id, credentials = telegram_channel(api, agent_id)
    bot_id = credentials["bot_token"].split(":")[0]
    chat_id = random.randrange(10**8, 10**9)

    # WHEN a stranger writes to the bot, then sends a photo
    first_id, body = fake_telegram.incoming(chat_id, 1, text="Olá, vocês entregam?", first_name="Bruna")
    assert post_telegram(api, body, credentials["secret_token"]) == 200
    _, photo = fake_telegram.incoming(chat_id, 2, photo=True, caption="este modelo")
    assert post_telegram(api, photo, credentials["secret_token"]) == 200

    # THEN both are stored, in order, in a new one-to-one conversation on that bot with the default agent
    first = message(api, Platform.TELEGRAM, f"{bot_id}:{chat_id}:{first_id}")
    assert first["platform_message_id"] == str(first_id)
    conversation = api.call("GET", f"/v1/conversations/{first['conversation_id']}").json()
    customer_id = first["sender_id"]
    assert conversation["channel_id"] == channel_id
    assert conversation["conversation_type"] == "ONE_TO_ONE"
    assert [p["user_id"] for p in conversation["participants"]] == [customer_id, agent_id]
    assert [
        (m["content"], m["message_type"], m["channel"], m["direction"])
        for m in history(api, conversation["conversation_id"])
    ] == [
        ("Olá, vocês entregam?", "text", "TELEGRAM", "INBOUND"),
        ("este modelo", "image", "TELEGRAM", "INBOUND"),
    ]
    customer = api.call("GET", f"/v1/users/{customer_id}").json()
    assert (customer["display_name"], customer["user_type"]) == ("Bruna", "CUSTOMER")
    assert [(i["platform"], i["platform_user_id"]) for i in customer["external_identities"]] == [
        ("TELEGRAM", str(chat_id))
    ]

    # WHEN the agent answers, after one 429 from Telegram
    fake_telegram.fail_next(chat_id, TOO_MANY_REQUESTS)
    message_id = send(api, conversation["conversation_id"], agent_id, "Entregamos sim!")

    # THEN Telegram got the documented sendMessage on the bot's token, retried, and the message is SENT
    sent = wait_for_status(api, message_id, "SENT", timeout=60)
    calls = [body for token, body in fake_telegram.called("sendMessage") if token == credentials["bot_token"]]
    assert calls == [{"chat_id": chat_id, "text": "Entregamos sim!"}] * 2
    assert [entry["status"] for entry in sent["history"]] == ["PENDING", "SENT"]
    stored = api.call("GET", f"/v1/messages/{message_id}").json()
    # Telegram numbers a chat's messages in both directions: the answer is the chat's third message
    # the API shows Telegram's own message_id; it is kept with its bot and chat, which make it unique
    assert stored["platform_message_id"] == str(first_id + 2)
    disable(api, channel_id)


def test_telegram_refusal_fails_at_once_and_instagram_5xx_gives_up_after_three(
    api: Api, fake_telegram: FakeTelegram, fake_instagram: FakeInstagram
) -> None:
    agent_id = agent(api)
    tg_id, tg = telegram_channel(api, agent_id)
    ig_id, ig = instagram_channel(api, fake_instagram, agent_id)
    chat_id, igsid = random.randrange(10**8, 10**9), str(random.randrange(10**15, 10**16))
    _, body = fake_telegram.incoming(chat_id, 1, text="oi")
    assert post_telegram(api, body, tg["secret_token"]) == 200
    mid = f"aWdf{uuid.uuid4().hex}"
    body = messaging_webhook(ig["ig_user_id"], igsid, mid, text="oi")
    assert post_instagram(api, body, sign(ig["app_secret"], body)) == 200
    bot_id = tg["bot_token"].split(":")[0]
    on_telegram = message(api, Platform.TELEGRAM, f"{bot_id}:{chat_id}:1")["conversation_id"]
    on_instagram = message(api, Platform.INSTAGRAM, mid)["conversation_id"]

    # the person blocked the bot: Telegram's 403 fails the message at once
    fake_telegram.fail_next(chat_id, BOT_BLOCKED)
    blocked = send(api, on_telegram, agent_id, "ainda aí?")
    failed = wait_for_status(api, blocked, "FAILED", timeout=60)
    assert "blocked" in failed["history"][-1]["detail"]
    # Instagram answers 500 three times: retried with back-off, then FAILED
    fake_instagram.fail_next(igsid, SERVER_ERROR, SERVER_ERROR, SERVER_ERROR)
    doomed = send(api, on_instagram, agent_id, "ainda aí?")
    failed = wait_for_status(api, doomed, "FAILED", timeout=60)
    assert "gave up after 3 attempts" in failed["history"][-1]["detail"]
    assert fake_instagram.sent_to(igsid) == []
    # nothing tries either again: the next message of each conversation goes out right after the first's
    # calls (a conversation's route jobs run in order, so a retry would have come before it)
    for conversation_id in (on_telegram, on_instagram):
        wait_for_status(api, send(api, conversation_id, agent_id, "e agora?"), "SENT", timeout=60)
    telegram_calls = [b for token, b in fake_telegram.called("sendMessage") if token == tg["bot_token"]]
    assert telegram_calls == [{"chat_id": chat_id, "text": "ainda aí?"}, {"chat_id": chat_id, "text": "e agora?"}]
    posts = [c[3] for c in fake_instagram.calls if c[0] == "POST" and c[3].get("recipient") == {"id": igsid}]
    assert [post["message"]["text"] for post in posts] == ["ainda aí?"] * 3 + ["e agora?"]
    disable(api, tg_id)
    disable(api, ig_id)


def test_telegram_webhook_secret_names_the_bot_and_forgeries_change_nothing(api: Api) -> None:
    channel_id, credentials = telegram_channel(api)
    other_id, other = telegram_channel(api)
    chat_id = random.randrange(10**8, 10**9)
    body = update(10, chat_id=chat_id, message_id=1, text="forged")
    bot_id, other_bot = credentials["bot_token"].split(":")[0], other["bot_token"].split(":")[0]

    assert post_telegram(api, body, None) == 401
    assert post_telegram(api, body, credentials["secret_token"] + "x") == 401
    assert post_telegram(api, body, "") == 401
    for pmid in (f"{bot_id}:{chat_id}:1", f"{other_bot}:{chat_id}:1"):
        assert api.call("GET", f"/v1/messages/{inbound_message_id(Platform.TELEGRAM, pmid)}").status_code == 404

    # the same person writes to both bots; Telegram numbers both chats from 1: two conversations, one per bot
    assert (
        post_telegram(api, update(11, chat_id=chat_id, message_id=1, text="to A"), credentials["secret_token"]) == 200
    )
    assert post_telegram(api, update(12, chat_id=chat_id, message_id=1, text="to B"), other["secret_token"]) == 200
    to_a = message(api, Platform.TELEGRAM, f"{bot_id}:{chat_id}:1")
    to_b = message(api, Platform.TELEGRAM, f"{other_bot}:{chat_id}:1")
    assert to_a["sender_id"] == to_b["sender_id"]
    assert to_a["conversation_id"] != to_b["conversation_id"]
    conversation_a = api.call("GET", f"/v1/conversations/{to_a['conversation_id']}").json()
    conversation_b = api.call("GET", f"/v1/conversations/{to_b['conversation_id']}").json()
    assert (conversation_a["channel_id"], conversation_b["channel_id"]) == (channel_id, other_id)
    # without a default agent the customer is alone until an agent is added
    assert [p["user_id"] for p in conversation_a["participants"]] == [to_a["sender_id"]]

    # a replayed update changes nothing
    for _ in range(3):
        assert (
            post_telegram(api, update(11, chat_id=chat_id, message_id=1, text="to A"), credentials["secret_token"])
            == 200
        )
    assert [m["content"] for m in history(api, to_a["conversation_id"])] == ["to A"]
    assert api.call("GET", f"/v1/conversations/{to_a['conversation_id']}").json()["message_count"] == 1

    # a disabled bot's webhooks are refused
    disable(api, other_id)
    assert post_telegram(api, update(13, chat_id=chat_id, message_id=2, text="late"), other["secret_token"]) == 401
    disable(api, channel_id)


def test_concurrent_first_messages_make_one_customer_and_one_conversation(api: Api) -> None:
    agent_id = agent(api)
    channel_id, credentials = telegram_channel(api, agent_id)
    bot_id = credentials["bot_token"].split(":")[0]
    chat_id = random.randrange(10**8, 10**9)
    bodies = [update(100 + n, chat_id=chat_id, message_id=n, text=f"message {n}") for n in range(1, 9)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        codes = list(pool.map(lambda body: post_telegram(api, body, credentials["secret_token"]), bodies))

    assert codes == [200] * 8
    stored = [message(api, Platform.TELEGRAM, f"{bot_id}:{chat_id}:{n}") for n in range(1, 9)]
    assert len({m["sender_id"] for m in stored}) == 1
    assert len({m["conversation_id"] for m in stored}) == 1
    conversation = api.call("GET", f"/v1/conversations/{stored[0]['conversation_id']}").json()
    assert [p["user_id"] for p in conversation["participants"]] == [stored[0]["sender_id"], agent_id]
    assert conversation["message_count"] == 8
    assert sorted(m["sequence"] for m in stored) == list(range(1, 9))
    customer = api.call("GET", f"/v1/users/{stored[0]['sender_id']}").json()
    assert [(i["platform"], i["platform_user_id"]) for i in customer["external_identities"]] == [
        ("TELEGRAM", str(chat_id))
    ]
    disable(api, channel_id)


def test_a_second_channel_for_the_same_account_or_secret_is_409(api: Api, fake_instagram: FakeInstagram) -> None:
    tg_id, tg = telegram_channel(api)
    same_bot = {"bot_token": tg["bot_token"], "secret_token": f"tg_{uuid.uuid4().hex}"}
    body = {"platform": "TELEGRAM", "name": "again", "credentials": same_bot}
    refused = api.call("POST", "/v1/channels", json=body)
    assert refused.status_code == 409, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    other_id, _ = telegram_channel(api)
    same_secret = {
        "bot_token": f"{random.randrange(10**9, 10**10)}:AAH{uuid.uuid4().hex}",
        "secret_token": tg["secret_token"],
    }
    rotated = api.call("PATCH", f"/v1/channels/{other_id}", json={"credentials": same_secret})
    assert rotated.status_code == 409, rotated.text

    ig_id, ig = instagram_channel(api, fake_instagram)
    token = f"IGAA{uuid.uuid4().hex}"
    fake_instagram.add_account(token, ig["ig_user_id"])
    again = {**ig, "access_token": token}
    refused = api.call("POST", "/v1/channels", json={"platform": "INSTAGRAM", "name": "again", "credentials": again})
    assert refused.status_code == 409, refused.text
    # rotating a channel's own credentials keeps its account: not a conflict
    assert api.call("PATCH", f"/v1/channels/{ig_id}", json={"credentials": again}).status_code == 200
    for channel_id in (tg_id, other_id, ig_id):
        disable(api, channel_id)


# ---------------------------------------------------------------------------------------------- Instagram
def test_instagram_end_to_end(api: Api, fake_instagram: FakeInstagram) -> None:
    # GIVEN an Instagram account installed with a default agent
    agent_id = agent(api)
    channel_id, credentials = instagram_channel(api, fake_instagram, agent_id)
    ig_user_id, secret = credentials["ig_user_id"], credentials["app_secret"]
    challenge = api.client.get(
        "/webhooks/instagram",
        params={
            "hub.mode": "subscribe",
            "hub.verify_token": credentials["verify_token"],
            "hub.challenge": "1158201444",
        },
    )
    assert (challenge.status_code, challenge.text) == (200, "1158201444")
    wrong = api.client.get(
        "/webhooks/instagram", params={"hub.mode": "subscribe", "hub.verify_token": "guess", "hub.challenge": "1"}
    )
    assert wrong.status_code == 403

    # WHEN a person writes, then sends an image
    igsid = str(random.randrange(10**15, 10**16))
    text = messaging_webhook(ig_user_id, igsid, f"aWdf{uuid.uuid4().hex}", text="Tem no tamanho M?")
    image_mid = f"aWdf{uuid.uuid4().hex}"
    image = messaging_webhook(ig_user_id, igsid, image_mid, attachment="image")
    assert post_instagram(api, text, sign(secret, text)) == 200
    assert post_instagram(api, image, sign(secret, image)) == 200

    # THEN both are in a new conversation on that account, with the default agent
    stored = message(api, Platform.INSTAGRAM, image_mid)
    conversation = api.call("GET", f"/v1/conversations/{stored['conversation_id']}").json()
    assert conversation["channel_id"] == channel_id
    assert [p["user_id"] for p in conversation["participants"]] == [stored["sender_id"], agent_id]
    assert [(m["content"], m["message_type"]) for m in history(api, conversation["conversation_id"])] == [
        ("Tem no tamanho M?", "text"),
        (None, "image"),
    ]

    # WHEN the agent answers
    message_id = send(api, conversation["conversation_id"], agent_id, "Temos sim")

    # THEN Instagram got the documented request and the message is SENT with Instagram's message_id
    wait_for_status(api, message_id, "SENT", timeout=60)
    [(recipient, sent_text, mid)] = fake_instagram.sent_to(igsid)
    assert (recipient, sent_text) == (igsid, "Temos sim")
    request = next(c for c in fake_instagram.calls if c[0] == "POST" and c[3].get("recipient") == {"id": igsid})
    assert request[1] == f"/v21.0/{ig_user_id}/messages"
    assert request[2]["authorization"] == f"Bearer {credentials['access_token']}"
    assert request[3] == {"recipient": {"id": igsid}, "message": {"text": "Temos sim"}}
    assert api.call("GET", f"/v1/messages/{message_id}").json()["platform_message_id"] == mid

    # WHEN Instagram reports it read (and the report is replayed)
    read = read_webhook(ig_user_id, igsid, mid)
    for _ in range(2):
        assert post_instagram(api, read, sign(secret, read)) == 200

    # THEN the message is READ, once
    status = wait_for_status(api, message_id, "READ", timeout=60)
    assert [entry["status"] for entry in status["history"]] == ["PENDING", "SENT", "READ"]
    disable(api, channel_id)


def test_instagram_signatures_verify_only_with_the_named_accounts_secret(
    api: Api, fake_instagram: FakeInstagram
) -> None:
    a_id, a = instagram_channel(api, fake_instagram)
    b_id, b = instagram_channel(api, fake_instagram)
    mid = f"aWdf{uuid.uuid4().hex}"
    names_a = messaging_webhook(a["ig_user_id"], "1234567", mid, text="which channel?")

    assert post_instagram(api, names_a, sign("guessed", names_a)) == 401
    assert post_instagram(api, names_a, "") == 401
    # signed with B's secret, naming A's account: B cannot speak for A
    assert post_instagram(api, names_a, sign(b["app_secret"], names_a)) == 401
    # naming an account no channel has
    stranger = messaging_webhook("99999999999", "1234567", mid, text="nobody")
    assert post_instagram(api, stranger, sign(a["app_secret"], stranger)) == 401
    assert api.call("GET", f"/v1/messages/{inbound_message_id(Platform.INSTAGRAM, mid)}").status_code == 404

    assert post_instagram(api, names_a, sign(a["app_secret"], names_a)) == 200
    stored = message(api, Platform.INSTAGRAM, mid)
    assert api.call("GET", f"/v1/conversations/{stored['conversation_id']}").json()["channel_id"] == a_id
    disable(api, a_id)
    disable(api, b_id)


# ---------------------------------------------------------------------------------------------- WhatsApp
def test_whatsapp_webhooks_are_attributed_to_the_number_they_name(
    api: Api, platform: LocalPlatform, whatsapp_conversation: WhatsAppSetup, fake_whatsapp: FakeWhatsApp
) -> None:
    setup = whatsapp_conversation
    line_a = setup.credentials
    b_id, line_b = whatsapp_line(api)
    try:
        # a body naming A's number signed with B's secret is refused, and stores nothing
        wamid = f"wamid.{uuid.uuid4().hex}"
        names_a = message_webhook(line_a["phone_number_id"], wamid, setup.customer_phone, "Carl", "spoofed")
        assert post_webhook(api, names_a, sign(line_b["app_secret"], names_a)) == 401
        assert history(api, setup.conversation_id) == []

        # the customer writes to B: a new conversation on B, not the one on A; an image is kept with its type
        on_b = message_webhook(line_b["phone_number_id"], wamid, setup.customer_phone, "Carl", "hi B")
        assert post_webhook(api, on_b, sign(line_b["app_secret"], on_b)) == 200
        stored = message(api, Platform.WHATSAPP, wamid)
        assert stored["sender_id"] == setup.customer_id
        assert stored["conversation_id"] != setup.conversation_id
        conversation_b = api.call("GET", f"/v1/conversations/{stored['conversation_id']}").json()
        assert conversation_b["channel_id"] == b_id
        assert history(api, setup.conversation_id) == []

        # and to A: into the conversation on A
        image_id = f"wamid.{uuid.uuid4().hex}"
        image = message_webhook(line_a["phone_number_id"], image_id, setup.customer_phone, "Carl", "x")
        image = image.replace(
            b'"type": "text", "text": {"body": "x"}', b'"type": "image", "image": {"id": "1", "caption": "foto"}'
        )
        assert post_webhook(api, image, sign(line_a["app_secret"], image)) == 200
        assert [(m["content"], m["message_type"]) for m in history(api, setup.conversation_id)] == [("foto", "image")]

        # a status about A's message reported by B changes nothing; A's own report moves it
        message_id = send(api, setup.conversation_id, setup.agent_id, "sent on A")
        wait_for_status(api, message_id, "SENT", timeout=60)
        sent_wamid = api.call("GET", f"/v1/messages/{message_id}").json()["platform_message_id"]
        by_b = status_webhook(line_b["phone_number_id"], sent_wamid, "read", setup.customer_phone)
        assert post_webhook(api, by_b, sign(line_b["app_secret"], by_b)) == 200
        by_a = status_webhook(line_a["phone_number_id"], sent_wamid, "delivered", setup.customer_phone)
        assert post_webhook(api, by_a, sign(line_a["app_secret"], by_a)) == 200
        wait_for_status(api, message_id, "DELIVERED", timeout=60)
        # the status consumer has applied A's report, posted after B's: once the queue is drained, B's was handled
        wait_until_drained(platform, "StatusQueue")
        status = api.call("GET", f"/v1/messages/{message_id}/status").json()
        assert status["status"] == "DELIVERED"
        assert "READ" not in [entry["status"] for entry in status["history"]]

        # a second channel for A's number is a conflict
        again = {**line_b, "phone_number_id": line_a["phone_number_id"]}
        refused = api.call("PATCH", f"/v1/channels/{b_id}", json={"credentials": again})
        assert refused.status_code == 409, refused.text
    finally:
        disable(api, b_id)


def test_channels_stored_before_the_lookup_keys_are_backfilled(api: Api, whatsapp_channel: Any) -> None:
    # GIVEN a channel whose row has no lookup keys, as every row written before migration 0003
    channel_id, credentials = whatsapp_line(api)
    try:
        with bootstrap.postgres().transaction() as cur:
            cur.execute(
                "UPDATE channels SET account_id = NULL, webhook_secret_digest = NULL WHERE channel_id = %s",
                (channel_id,),
            )
        # WHEN its first webhook arrives
        wamid = f"wamid.{uuid.uuid4().hex}"
        body = message_webhook(credentials["phone_number_id"], wamid, "5511987650000", "Lia", "olá")
        assert post_webhook(api, body, sign(credentials["app_secret"], body)) == 200
        # THEN it is attributed to that channel, and the row has its keys again
        stored = message(api, Platform.WHATSAPP, wamid)
        assert api.call("GET", f"/v1/conversations/{stored['conversation_id']}").json()["channel_id"] == channel_id
        with bootstrap.postgres().transaction() as cur:
            cur.execute("SELECT account_id FROM channels WHERE channel_id = %s", (channel_id,))
            row = cur.fetchone()
        assert row is not None and row["account_id"] == credentials["phone_number_id"]

        # AND the backfill that prepare_databases runs fills such rows too
        with bootstrap.postgres().transaction() as cur:
            cur.execute("UPDATE channels SET account_id = NULL WHERE channel_id = %s", (channel_id,))
        assert backfill_channel_keys(bootstrap.postgres()) >= 1
        with bootstrap.postgres().transaction() as cur:
            cur.execute("SELECT count(*) AS n FROM channels WHERE account_id IS NULL")
            row = cur.fetchone()
        assert row is not None and row["n"] == 0
    finally:
        disable(api, channel_id)


@pytest.mark.parametrize("path", ["/webhooks/telegram", "/webhooks/instagram"])
def test_hostile_webhook_bodies_are_4xx(api: Api, path: str) -> None:
    for body in (b"", b"[]", b'{"entry": NaN}', b"\x00", b"{" * 5000):
        response = api.client.post(path, content=body, headers={"Content-Type": "application/json"})
        assert 400 <= response.status_code < 500, (body[:20], response.status_code, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
