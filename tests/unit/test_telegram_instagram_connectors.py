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
    ChannelCredentialsRejectedError,
    ChannelError,
    ChannelOutcomeUnknownError,
    ChannelRateLimitedError,
    ChannelRecipientRejectedError,
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


# ---------------------------------------------------------------- error classes by the platforms' own codes


def _raised(connector: Any, credentials: dict[str, str], recipient: str) -> ChannelError:
    with pytest.raises(ChannelError) as caught:
        connector.send(credentials, OutboundMessage("m1", recipient, "hello"))
    return caught.value


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (
            429,
            {
                "ok": False,
                "error_code": 429,
                "description": "Too Many Requests: retry after 17",
                "parameters": {"retry_after": 17},
            },
            ChannelRateLimitedError,
        ),
        (401, {"ok": False, "error_code": 401, "description": "Unauthorized"}, ChannelCredentialsRejectedError),
        (
            403,
            {"ok": False, "error_code": 403, "description": "Forbidden: bot was blocked by the user"},
            ChannelRecipientRejectedError,
        ),
        (
            400,
            {"ok": False, "error_code": 400, "description": "Bad Request: chat not found"},
            ChannelRecipientRejectedError,
        ),
        (
            400,
            {"ok": False, "error_code": 400, "description": "Bad Request: message is too long"},
            ChannelRejectedError,
        ),
        (502, {"ok": False, "error_code": 502, "description": "Bad Gateway"}, ChannelRetryableError),
    ],
)
def test_telegram_errors_by_class_keep_telegrams_description(
    status: int, body: dict[str, Any], error: type[ChannelError]
) -> None:
    raised = _raised(telegram(lambda request: httpx.Response(status, json=body)), TELEGRAM, "4242")
    assert type(raised) is error
    assert body["description"] in raised.detail
    if isinstance(raised, ChannelRateLimitedError):
        assert raised.retry_after_seconds == 17 and raised.channel_wide


@pytest.mark.parametrize(
    ("status", "error_body", "error"),
    [
        (400, {"code": 613, "message": "Calls to this api have exceeded the rate limit."}, ChannelRateLimitedError),
        (400, {"code": 4, "message": "Application request limit reached"}, ChannelRateLimitedError),
        (
            400,
            {"code": 80002, "message": "There have been too many calls to this Instagram account."},
            ChannelRateLimitedError,
        ),
        (
            400,
            {"code": 190, "type": "OAuthException", "message": "Invalid OAuth access token."},
            ChannelCredentialsRejectedError,
        ),
        (400, {"code": 551, "message": "This person isn't available right now."}, ChannelRecipientRejectedError),
        (
            400,
            {"code": 100, "error_subcode": 2018001, "message": "No matching user found"},
            ChannelRecipientRejectedError,
        ),
        (
            400,
            {"code": 10, "error_subcode": 2018278, "message": "This message is sent outside of allowed window."},
            ChannelRejectedError,
        ),
        (500, {"code": 2, "message": "Temporary send message failure. Please try again later."}, ChannelRetryableError),
        (400, {"code": 1, "message": "An unknown error occurred", "is_transient": True}, ChannelRetryableError),
    ],
)
def test_instagram_errors_by_class_keep_metas_code_and_message(
    status: int, error_body: dict[str, Any], error: type[ChannelError]
) -> None:
    raised = _raised(instagram(lambda request: httpx.Response(status, json={"error": error_body})), INSTAGRAM, "9001")
    assert type(raised) is error
    assert f"error {error_body['code']}" in raised.detail and error_body["message"] in raised.detail


def test_no_detail_of_a_telegram_failure_carries_the_bot_token() -> None:
    token = TELEGRAM["bot_token"]

    def echo(request: httpx.Request) -> httpx.Response:  # a proxy's page that echoes the URL it was asked for
        return httpx.Response(404, text=f"<html>no route for {request.url}</html>")

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"cannot reach {request.url}", request=request)

    def hang_up(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout(f"no answer from {request.url}", request=request)

    for handler in (echo, refuse, hang_up):
        raised = _raised(telegram(handler), TELEGRAM, "4242")
        assert token not in raised.detail and token not in str(raised), raised.detail
        assert token.split(":", 1)[1] not in raised.detail
        assert raised.__cause__ is None  # no chained exception with the URL in a logged traceback
        assert "[redacted]" in raised.detail
