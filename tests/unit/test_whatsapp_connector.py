"""WhatsAppConnector: webhook signatures and parsing, the send request, and error classification."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from chat4all.channels import http as channels_http
from chat4all.channels.whatsapp import WhatsAppConnector
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

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "whatsapp"
CREDENTIALS = {
    "access_token": "EAAG-token",
    "phone_number_id": "106540352242922",
    "app_secret": "s3cret",
    "verify_token": "vt",
}


def connector(handler: Any = None) -> WhatsAppConnector:
    transport = httpx.MockTransport(handler or (lambda request: httpx.Response(500)))
    return WhatsAppConnector("https://graph.example/v21.0", httpx.Client(transport=transport))


def signature(body: bytes, secret: str = "s3cret") -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def test_signature_over_the_raw_body() -> None:
    body = (FIXTURES / "status_delivered.json").read_bytes()
    wa = connector()
    assert wa.verify_webhook(CREDENTIALS, {"x-hub-signature-256": signature(body)}, body)
    assert not wa.verify_webhook(CREDENTIALS, {"x-hub-signature-256": signature(body, "other")}, body)
    assert not wa.verify_webhook(CREDENTIALS, {"x-hub-signature-256": signature(body)}, body + b" ")
    assert not wa.verify_webhook(CREDENTIALS, {}, body)
    assert not wa.verify_webhook(CREDENTIALS, {"x-hub-signature-256": signature(body).removeprefix("sha256=")}, body)


def test_parses_statuses_with_errors() -> None:
    payload = json.loads((FIXTURES / "status_delivered.json").read_text())
    events = connector().parse_webhook(payload)
    assert events == [
        StatusReport(
            Platform.WHATSAPP,
            "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBJDQjZCMzlEQUE4OTJBMTE4RTUA",
            MessageStatus.DELIVERED,
            datetime.fromtimestamp(1750263773, UTC),
            account_id="106540352242922",
        ),
        StatusReport(
            Platform.WHATSAPP,
            "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBJDQjZCMzlEQUE4OTJBMTE4RTUB",
            MessageStatus.FAILED,
            datetime.fromtimestamp(1750263774, UTC),
            "131047: Re-engagement message",
            account_id="106540352242922",
        ),
    ]


def test_parses_inbound_text() -> None:
    payload = json.loads((FIXTURES / "message_text.json").read_text())
    assert connector().parse_webhook(payload) == [
        InboundMessage(
            Platform.WHATSAPP,
            "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=",
            "16505551234",
            "Sheena Nelson",
            "Does it come in another color?",
            datetime.fromtimestamp(1749416383, UTC),
            account_id="106540352242922",
        )
    ]


def test_the_account_a_webhook_names() -> None:
    payload = json.loads((FIXTURES / "message_text.json").read_text())
    assert connector().account_ids(payload) == ["106540352242922"]
    # a change without metadata names no number and carries nothing to attribute
    del payload["entry"][0]["changes"][0]["value"]["metadata"]
    assert connector().account_ids(payload) == []
    assert connector().parse_webhook(payload) == []


@pytest.mark.parametrize(
    ("message", "kind", "content"),
    [
        (
            {"type": "image", "image": {"id": "MEDIA1", "mime_type": "image/jpeg", "caption": "the red one"}},
            "image",
            "the red one",
        ),
        ({"type": "document", "document": {"id": "MEDIA2", "filename": "invoice.pdf"}}, "document", None),
        (
            {"type": "location", "location": {"latitude": -23.5, "longitude": -46.6, "name": "Loja"}},
            "location",
            "-23.5,-46.6 Loja",
        ),
        ({"type": "reaction", "reaction": {"message_id": "wamid.X", "emoji": "\U0001f44d"}}, "reaction", "\U0001f44d"),
        ({"type": "unsupported", "errors": [{"code": 131051}]}, "unsupported", None),
    ],
)
def test_non_text_messages_are_kept_with_their_type(message: dict[str, Any], kind: str, content: str | None) -> None:
    payload = json.loads((FIXTURES / "message_text.json").read_text())
    original = payload["entry"][0]["changes"][0]["value"]["messages"][0]
    payload["entry"][0]["changes"][0]["value"]["messages"] = [
        {"from": original["from"], "id": original["id"], "timestamp": original["timestamp"], **message}
    ]
    [event] = connector().parse_webhook(payload)
    assert isinstance(event, InboundMessage)
    assert (event.message_type, event.text, event.platform_user_id) == (kind, content, "16505551234")


@pytest.mark.parametrize(
    "payload", [{}, {"entry": "nope"}, {"entry": [{"changes": [{"value": {"statuses": [{"id": 1}]}}]}]}]
)
def test_malformed_payload_is_bad_request(payload: dict[str, Any]) -> None:
    with pytest.raises(BadRequestError):
        connector().parse_webhook(payload)


def test_bad_timestamp_is_bad_request() -> None:
    payload = json.loads((FIXTURES / "status_delivered.json").read_text())
    payload["entry"][0]["changes"][0]["value"]["statuses"][0]["timestamp"] = "yesterday"
    with pytest.raises(BadRequestError):
        connector().parse_webhook(payload)


def test_subscription_challenge() -> None:
    wa = connector()
    params = {"hub.mode": "subscribe", "hub.verify_token": "vt", "hub.challenge": "42"}
    assert wa.subscription_challenge(CREDENTIALS, params) == "42"
    assert wa.subscription_challenge(CREDENTIALS, {**params, "hub.verify_token": "no"}) is None
    assert wa.subscription_challenge(CREDENTIALS, {**params, "hub.mode": "unsubscribe"}) is None


def test_send_request_and_receipt() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"messaging_product": "whatsapp", "messages": [{"id": "wamid.X"}]})

    receipt = connector(handler).send(CREDENTIALS, OutboundMessage("m1", "+5511999990000", "hello"))
    assert receipt.platform_message_id == "wamid.X"
    assert str(seen[0].url) == "https://graph.example/v21.0/106540352242922/messages"
    assert seen[0].headers["authorization"] == "Bearer EAAG-token"
    assert json.loads(seen[0].content) == {
        "messaging_product": "whatsapp",
        "to": "5511999990000",
        "type": "text",
        "text": {"body": "hello"},
    }


def test_an_http_client_is_made_on_the_first_send_only(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[httpx.Client] = []

    def make_client() -> httpx.Client:
        reply = {"messaging_product": "whatsapp", "messages": [{"id": "wamid.X"}]}
        made.append(httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(200, json=reply))))
        return made[-1]

    monkeypatch.setattr(channels_http, "http_client", make_client)
    wa = WhatsAppConnector("https://graph.example/v21.0")
    body = (FIXTURES / "message_text.json").read_bytes()
    assert wa.verify_webhook(CREDENTIALS, {"x-hub-signature-256": signature(body)}, body)
    assert wa.parse_webhook(json.loads(body))
    assert made == []  # a webhook needs no client (ingest never sends)
    for n in range(3):
        assert wa.send(CREDENTIALS, OutboundMessage(f"m{n}", "+5511999990000", "hi")).platform_message_id == "wamid.X"
    assert len(made) == 1


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (429, ChannelRetryableError),
        (500, ChannelRetryableError),
        (503, ChannelRetryableError),
        (400, ChannelRejectedError),
        (401, ChannelRejectedError),
        (404, ChannelRejectedError),
    ],
)
def test_error_classification(status: int, error: type[Exception]) -> None:
    wa = connector(lambda request: httpx.Response(status, json={"error": {"message": "x"}}))
    with pytest.raises(error):
        wa.send(CREDENTIALS, OutboundMessage("m1", "1", "hi"))


def test_no_connection_is_retryable_and_no_answer_is_an_unknown_outcome() -> None:
    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    def connect_timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectTimeout("no route", request=request)

    def read_timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    def dropped(request: httpx.Request) -> httpx.Response:
        raise httpx.RemoteProtocolError("peer closed the connection", request=request)

    # the request never left: it can be sent again
    for handler in (refused, connect_timeout):
        with pytest.raises(ChannelRetryableError):
            connector(handler).send(CREDENTIALS, OutboundMessage("m1", "1", "hi"))
    # it left and no answer came: it may have been taken, and must never be sent twice
    for handler in (read_timeout, dropped):
        with pytest.raises(ChannelOutcomeUnknownError):
            connector(handler).send(CREDENTIALS, OutboundMessage("m1", "1", "hi"))


def test_a_success_without_a_message_id_is_an_unknown_outcome() -> None:
    for reply in (httpx.Response(200, json={"messages": []}), httpx.Response(200, text="<html>ok</html>")):
        wa = connector(lambda request, reply=reply: reply)
        with pytest.raises(ChannelOutcomeUnknownError):
            wa.send(CREDENTIALS, OutboundMessage("m1", "1", "hi"))


# ---------------------------------------------------------------- error classes by the Cloud API's codes


@pytest.mark.parametrize(
    ("status", "error_body", "error", "wait", "channel_wide"),
    [
        (429, {"code": 130429, "message": "(#130429) Rate limit hit"}, ChannelRateLimitedError, 1.0, True),
        (400, {"code": 131056, "message": "(#131056) pair rate limit hit"}, ChannelRateLimitedError, 6.0, False),
        (400, {"code": 4, "message": "(#4) Application request limit reached"}, ChannelRateLimitedError, 60.0, True),
        (
            401,
            {"code": 190, "type": "OAuthException", "message": "Error validating access token"},
            ChannelCredentialsRejectedError,
            None,
            None,
        ),
        (400, {"code": 131026, "message": "Message undeliverable"}, ChannelRecipientRejectedError, None, None),
        (400, {"code": 131047, "message": "Re-engagement message"}, ChannelRejectedError, None, None),
        (400, {"code": 100, "message": "Invalid parameter"}, ChannelRejectedError, None, None),
        (500, {"code": 131000, "message": "Something went wrong"}, ChannelRetryableError, None, None),
        (503, {"code": 2, "message": "Service temporarily unavailable"}, ChannelRetryableError, None, None),
    ],
)
def test_cloud_api_errors_by_class_keep_the_code_and_message(
    status: int, error_body: dict[str, Any], error: type[ChannelError], wait: float | None, channel_wide: bool | None
) -> None:
    body = {"error": error_body | {"error_data": {"messaging_product": "whatsapp", "details": "why"}}}
    with pytest.raises(ChannelError) as caught:
        connector(lambda request: httpx.Response(status, json=body)).send(
            CREDENTIALS, OutboundMessage("m1", "+5511999990000", "hi")
        )
    raised = caught.value
    assert type(raised) is error
    assert f"error {error_body['code']}" in raised.detail and error_body["message"] in raised.detail
    assert "(why)" in raised.detail
    if isinstance(raised, ChannelRateLimitedError):
        assert (raised.retry_after_seconds, raised.channel_wide) == (wait, channel_wide)


def test_a_retry_after_header_wins_and_the_token_never_reaches_a_detail() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        echoed = {"error": {"code": 130429, "message": f"slow down {request.headers['authorization']}"}}
        return httpx.Response(429, json=echoed, headers={"Retry-After": "3"})

    with pytest.raises(ChannelRateLimitedError) as caught:
        connector(answer).send(CREDENTIALS, OutboundMessage("m1", "+5511999990000", "hi"))
    assert caught.value.retry_after_seconds == 3.0
    assert CREDENTIALS["access_token"] not in caught.value.detail
