"""TelegramConnector and InstagramConnector: webhook verification and parsing, the send request, error classes."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from chat4all.channels.instagram import InstagramConnector
from chat4all.channels.telegram import TelegramConnector
from chat4all.domain.errors import (
    BadRequestError,
    ChannelOutcomeUnknownError,
    ChannelRejectedError,
    ChannelRetryableError,
)
from chat4all.domain.models import InboundMessage, MessageStatus, OutboundMessage, Platform, StatusReport
from tests.support.fake_instagram import messaging_webhook, read_webhook
from tests.support.fake_telegram import update

TELEGRAM = {"bot_token": "7012345678:AAH" + "x" * 32, "secret_token": "s3cret_T"}
INSTAGRAM = {
    "access_token": "IGAA-token",
    "ig_user_id": "17841400000000001",
    "app_secret": "s3cret",
    "verify_token": "vt",
}


def telegram(handler: Any = None) -> TelegramConnector:
    transport = httpx.MockTransport(handler or (lambda request: httpx.Response(500)))
    return TelegramConnector("https://tg.example", httpx.Client(transport=transport))


def instagram(handler: Any = None) -> InstagramConnector:
    transport = httpx.MockTransport(handler or (lambda request: httpx.Response(500)))
    return InstagramConnector("https://ig.example/v21.0", httpx.Client(transport=transport))


def test_telegram_secret_token_header() -> None:
    tg = telegram()
    assert tg.verify_webhook(TELEGRAM, {"x-telegram-bot-api-secret-token": "s3cret_T"}, b"{}")
    assert not tg.verify_webhook(TELEGRAM, {"x-telegram-bot-api-secret-token": "s3cret_t"}, b"{}")
    assert not tg.verify_webhook(TELEGRAM, {}, b"{}")


def test_telegram_text_media_location_and_reaction_updates() -> None:
    tg = telegram()
    text = json.loads(update(1, chat_id=4242, message_id=7, first_name="Ana", text="Oi", date=1750000000))
    assert tg.parse_webhook(text, account_id="7012345678") == [
        InboundMessage(
            Platform.TELEGRAM,
            "7012345678:4242:7",
            "4242",
            "Ana",
            "Oi",
            datetime.fromtimestamp(1750000000, UTC),
            account_id="7012345678",
        )
    ]
    photo = json.loads(update(2, chat_id=4242, message_id=8, photo=True, caption="this one"))
    [event] = tg.parse_webhook(photo, account_id="7012345678")
    assert isinstance(event, InboundMessage)
    assert (event.message_type, event.text) == ("image", "this one")
    place = json.loads(update(3, chat_id=4242, message_id=9, location=(-23.5, -46.6)))
    [event] = tg.parse_webhook(place, account_id="7012345678")
    assert isinstance(event, InboundMessage)
    assert (event.message_type, event.text) == ("location", "-23.5,-46.6")
    reaction = {
        "update_id": 4,
        "message_reaction": {
            "chat": {"id": 4242, "type": "private"},
            "message_id": 7,
            "user": {"id": 4242, "is_bot": False, "first_name": "Ana"},
            "date": 1750000100,
            "old_reaction": [],
            "new_reaction": [{"type": "emoji", "emoji": "\U0001f44d"}],
        },
    }
    [event] = tg.parse_webhook(reaction, account_id="7012345678")
    assert isinstance(event, InboundMessage)
    assert (event.message_type, event.text, event.platform_message_id) == (
        "reaction",
        "\U0001f44d",
        "7012345678:4242:7:reaction:1750000100",
    )
    group = json.loads(update(5, chat_id=-100123, message_id=1, text="hi all", chat_type="group"))
    assert tg.parse_webhook(group, account_id="7012345678") == []
    with pytest.raises(BadRequestError):
        tg.parse_webhook({"message": {"text": "no update_id"}}, account_id="7012345678")


def test_telegram_send_request_and_receipt() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        result = {"message_id": 55, "date": 1750000000, "chat": {"id": 4242, "type": "private"}, "text": "hello"}
        return httpx.Response(200, json={"ok": True, "result": result})

    receipt = telegram(handler).send(TELEGRAM, OutboundMessage("m1", "4242", "hello"))
    assert receipt.platform_message_id == "7012345678:4242:55"
    assert str(seen[0].url) == f"https://tg.example/bot{TELEGRAM['bot_token']}/sendMessage"
    assert json.loads(seen[0].content) == {"chat_id": 4242, "text": "hello"}


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (429, ChannelRetryableError),
        (502, ChannelRetryableError),
        (400, ChannelRejectedError),
        (403, ChannelRejectedError),
    ],
)
def test_telegram_and_instagram_failures_are_classified(status: int, error: type[Exception]) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json={"ok": False, "error_code": status, "description": "nope"})

    with pytest.raises(error):
        telegram(answer).send(TELEGRAM, OutboundMessage("m1", "4242", "hello"))
    with pytest.raises(error):
        instagram(answer).send(INSTAGRAM, OutboundMessage("m1", "9001", "hello"))


@pytest.mark.parametrize(
    "reply",
    [{"ok": True, "result": {"chat": {"id": 4242}}}, {"ok": True}, {"ok": False}, {}, {"message_id": ""}],
)
def test_a_2xx_answer_without_a_message_id_is_an_unknown_outcome_never_a_retry(reply: dict[str, object]) -> None:
    """The platform may have sent it: sending again could deliver it twice (as WhatsApp's connector decides)."""
    calls: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(200, json=reply)

    with pytest.raises(ChannelOutcomeUnknownError):
        telegram(answer).send(TELEGRAM, OutboundMessage("m1", "4242", "hello"))
    with pytest.raises(ChannelOutcomeUnknownError):
        instagram(answer).send(INSTAGRAM, OutboundMessage("m1", "9001", "hello"))
    assert len(calls) == 2  # one call each, no retry inside the connector


def test_instagram_signature_accounts_and_events() -> None:
    ig = instagram()
    body = messaging_webhook(INSTAGRAM["ig_user_id"], "9001", "aWdfmid1", text="Olá", timestamp_ms=1750000000123)
    signature = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert ig.verify_webhook(INSTAGRAM, {"x-hub-signature-256": signature}, body)
    assert not ig.verify_webhook(INSTAGRAM, {"x-hub-signature-256": signature}, body + b" ")
    payload = json.loads(body)
    assert ig.account_ids(payload) == [INSTAGRAM["ig_user_id"]]
    assert ig.parse_webhook(payload) == [
        InboundMessage(
            Platform.INSTAGRAM,
            "aWdfmid1",
            "9001",
            None,
            "Olá",
            datetime.fromtimestamp(1750000000.123, UTC),
            account_id=INSTAGRAM["ig_user_id"],
        )
    ]
    image = json.loads(messaging_webhook(INSTAGRAM["ig_user_id"], "9001", "aWdfmid2", attachment="image"))
    [event] = ig.parse_webhook(image)
    assert isinstance(event, InboundMessage)
    assert (event.message_type, event.text) == ("image", None)
    read = json.loads(read_webhook(INSTAGRAM["ig_user_id"], "9001", "aWdfsent1", timestamp_ms=1750000001000))
    assert ig.parse_webhook(read) == [
        StatusReport(
            Platform.INSTAGRAM,
            "aWdfsent1",
            MessageStatus.READ,
            datetime.fromtimestamp(1750000001, UTC),
            account_id=INSTAGRAM["ig_user_id"],
        )
    ]
    # the account's own messages come back as echoes: not inbound
    echo = json.loads(messaging_webhook(INSTAGRAM["ig_user_id"], INSTAGRAM["ig_user_id"], "aWdfmid3", text="ours"))
    assert ig.parse_webhook(echo) == []
    # before verification a body only names what it names; its shape is judged after
    assert ig.account_ids({"entry": [{"messaging": []}, {"id": 5}, "x"]}) == []
    with pytest.raises(BadRequestError):
        ig.parse_webhook({"entry": [{"messaging": []}]})


def test_instagram_send_request_and_receipt() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"recipient_id": "9001", "message_id": "aWdfX"})

    receipt = instagram(handler).send(INSTAGRAM, OutboundMessage("m1", "9001", "hello"))
    assert receipt.platform_message_id == "aWdfX"
    assert str(seen[0].url) == f"https://ig.example/v21.0/{INSTAGRAM['ig_user_id']}/messages"
    assert seen[0].headers["authorization"] == "Bearer IGAA-token"
    assert json.loads(seen[0].content) == {"recipient": {"id": "9001"}, "message": {"text": "hello"}}
