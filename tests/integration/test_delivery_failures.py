"""Delivery when the platform misbehaves, and the platform when a dependency stalls."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from typing import TYPE_CHECKING, Any

import boto3
import pytest

from tests.integration.test_message_path import post_webhook, send, send_after, texts_sent, wait_for_status
from tests.support.fake_whatsapp import INVALID_RECIPIENT, RATE_LIMITED, UNAVAILABLE, sign, status_webhook

if TYPE_CHECKING:
    from devstack.stack import LocalPlatform
    from tests.integration.conftest import Api, WhatsAppSetup
    from tests.support.fake_whatsapp import FakeWhatsApp


def dead_letters(platform: LocalPlatform) -> list[dict[str, Any]]:
    assert platform.stack is not None
    sqs = boto3.client("sqs", endpoint_url=platform.urls["aws"], region_name="us-east-1")
    url = platform.stack.resolve({"Ref": "RouteDeadLetterQueue"})
    found: list[dict[str, Any]] = []
    for _ in range(3):
        reply = sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1, MessageAttributeNames=["All"]
        )
        found.extend(reply.get("Messages", []))
    return found


def test_429_and_503_are_retried_with_backoff_then_sent(
    api: Api, whatsapp_conversation: WhatsAppSetup, fake_whatsapp: FakeWhatsApp
) -> None:
    setup = whatsapp_conversation
    fake_whatsapp.fail_next(setup.customer_phone, RATE_LIMITED, UNAVAILABLE)
    accepted = send(api, setup, "eventually")
    status = wait_for_status(api, accepted["message_id"], "SENT", timeout=40)
    calls = fake_whatsapp.sent_to(setup.customer_phone)
    assert [c.answered for c in calls] == [429, 503, 200]
    # the back-off: 2 s after the first failure, 4 s after the second
    assert [h["status"] for h in status["history"]] == ["PENDING", "SENT"]


def test_three_failures_make_it_failed_and_dead_lettered(
    api: Api, platform: LocalPlatform, whatsapp_conversation: WhatsAppSetup, fake_whatsapp: FakeWhatsApp
) -> None:
    setup = whatsapp_conversation
    assert platform.runtime is not None
    fake_whatsapp.fail_next(setup.customer_phone, UNAVAILABLE, UNAVAILABLE, UNAVAILABLE)
    # the dead-letter consumer would take the record at once (tests/integration/test_recovery.py)
    platform.runtime.set_event_sources_enabled("DeadLetterFunction", False)
    try:
        accepted = send(api, setup, "doomed")
        status = wait_for_status(api, accepted["message_id"], "FAILED", timeout=40)
        assert "gave up after 3 attempts" in status["history"][-1]["detail"]
        assert [c.answered for c in fake_whatsapp.sent_to(setup.customer_phone)] == [503, 503, 503]
        bodies = [json.loads(m["Body"]) for m in dead_letters(platform)]
    finally:
        platform.runtime.set_event_sources_enabled("DeadLetterFunction", True)
    # the dead-letter copy is the message's route job (with the correlation id of the work that made it)
    assert (accepted["message_id"], setup.conversation_id) in {(b["message_id"], b["conversation_id"]) for b in bodies}
    after = send_after(api, setup, fake_whatsapp)  # nothing tried it again before the next message went out
    assert texts_sent(fake_whatsapp, setup) == ["doomed"] * 3 + [after]


def test_a_4xx_fails_at_once(api: Api, whatsapp_conversation: WhatsAppSetup, fake_whatsapp: FakeWhatsApp) -> None:
    setup = whatsapp_conversation
    fake_whatsapp.fail_next(setup.customer_phone, INVALID_RECIPIENT)
    accepted = send(api, setup, "not allowed")
    wait_for_status(api, accepted["message_id"], "FAILED")
    message = api.call("GET", f"/v1/messages/{accepted['message_id']}").json()
    assert "131030" in message["error"]
    after = send_after(api, setup, fake_whatsapp)  # nothing tried it again before the next message went out
    assert texts_sent(fake_whatsapp, setup) == ["not allowed", after]


def test_order_holds_across_a_retry(
    api: Api, whatsapp_conversation: WhatsAppSetup, fake_whatsapp: FakeWhatsApp
) -> None:
    setup = whatsapp_conversation
    fake_whatsapp.fail_next(setup.customer_phone, UNAVAILABLE)
    accepted = [send(api, setup, f"ordered {n}") for n in range(1, 6)]
    delivered = fake_whatsapp.wait_for(setup.customer_phone, 5, timeout=40)
    assert [r.body["text"]["body"] for r in delivered] == [f"ordered {n}" for n in range(1, 6)]
    calls = fake_whatsapp.sent_to(setup.customer_phone)
    assert calls[0].answered == 503
    assert calls[0].body["text"]["body"] == "ordered 1"
    for item in accepted:
        wait_for_status(api, item["message_id"], "SENT")


def test_a_status_report_for_an_unknown_platform_id_is_retried_not_lost(
    api: Api, whatsapp_conversation: WhatsAppSetup, fake_whatsapp: FakeWhatsApp
) -> None:
    # GIVEN a "read" report that arrives before anything is known of its platform message id
    setup = whatsapp_conversation
    wamid = f"wamid.{uuid.uuid4().hex}"
    early = status_webhook(setup.credentials["phone_number_id"], wamid, "read", setup.customer_phone)
    assert post_webhook(api, early, sign(setup.credentials["app_secret"], early)) == 200
    # WHEN the message it belongs to is recorded afterwards (as if the route write had been slow)
    accepted = send(api, setup, "late bookkeeping")
    wait_for_status(api, accepted["message_id"], "SENT")
    from chat4all import bootstrap

    bootstrap.mongo().messages.update_one({"_id": accepted["message_id"]}, {"$set": {"platform_message_id": wamid}})
    # THEN the retried report is applied
    status = wait_for_status(api, accepted["message_id"], "READ", timeout=30)
    assert status["history"][-1]["status"] == "READ"


@pytest.fixture
def redis_process(platform: LocalPlatform) -> Any:
    if platform.options.environ.get("REDIS_URL"):
        pytest.skip("Redis is given by REDIS_URL; the test only stalls a server it started itself")
    process = next(p for p in platform.processes if p.name == "redis")
    assert process.pid is not None
    return process


def test_a_stalled_redis_does_not_stop_sends_nor_replays(
    api: Api, whatsapp_conversation: WhatsAppSetup, fake_whatsapp: FakeWhatsApp, redis_process: Any
) -> None:
    # GIVEN Redis, which holds only the idempotency cache, stopped (SIGSTOP: it neither answers nor refuses)
    setup = whatsapp_conversation
    message_id = str(uuid.uuid4())
    body = {
        "message_id": message_id,
        "conversation_id": setup.conversation_id,
        "sender_id": setup.agent_id,
        "content": "during the outage",
    }
    os.kill(redis_process.pid, signal.SIGSTOP)
    try:
        # WHEN a message is sent, and sent again with the same id, and with the same id and another body
        first = api.call("POST", "/v1/messages", json=body)
        again = api.call("POST", "/v1/messages", json=body)
        other = api.call("POST", "/v1/messages", json={**body, "content": "something else"})
        health = api.client.get("/health")
    finally:
        os.kill(redis_process.pid, signal.SIGCONT)
    # THEN MongoDB's record answers: accepted once, the same 202 again, 409 for the other body
    assert first.status_code == 202, first.text
    assert again.status_code == 202, again.text
    assert again.json() == first.json()
    assert other.status_code == 409, other.text
    assert other.headers["content-type"] == "application/problem+json"
    assert health.status_code == 503
    assert health.json()["dependencies"]["redis"].startswith("DOWN")
    # AND the message is delivered once
    wait_for_status(api, message_id, "SENT")
    assert [r.body["text"]["body"] for r in fake_whatsapp.wait_for(setup.customer_phone, 1)] == ["during the outage"]
    history = api.call("GET", f"/v1/conversations/{setup.conversation_id}/messages").json()
    assert [m["message_id"] for m in history["items"]] == [message_id]
    # /health answers from a result a few seconds old, so it turns UP within a few seconds
    deadline = time.monotonic() + 30
    while api.client.get("/health").status_code != 200:
        assert time.monotonic() < deadline, "/health stayed DOWN after Redis came back"
        time.sleep(0.5)
    assert api.call("POST", "/v1/messages", json=body).json() == first.json()
    assert len(fake_whatsapp.sent_to(setup.customer_phone)) == 1
