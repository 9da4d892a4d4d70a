"""The WhatsApp message path end to end, over HTTP, against the real servers and a WhatsApp-format server."""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any

import redis

from tests.integration.conftest import wait_until_drained
from tests.support.fake_whatsapp import sign, status_webhook

if TYPE_CHECKING:
    from devstack.stack import LocalPlatform
    from tests.integration.conftest import Api, WhatsAppSetup
    from tests.support.fake_whatsapp import FakeWhatsApp


def send(api: Api, setup: WhatsAppSetup, content: str, message_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"conversation_id": setup.conversation_id, "sender_id": setup.agent_id, "content": content}
    if message_id:
        body["message_id"] = message_id
    response = api.call("POST", "/v1/messages", json=body)
    assert response.status_code == 202, response.text
    return dict(response.json())


def wait_for_status(api: Api, message_id: str, status: str, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = api.call("GET", f"/v1/messages/{message_id}/status").json()
        if body.get("status") == status:
            return body
        time.sleep(0.1)
    raise AssertionError(f"message {message_id} stayed {body.get('status')}, expected {status}: {body}")


def wait_for_history(api: Api, message_id: str, entries: int, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = api.call("GET", f"/v1/messages/{message_id}/status").json()
        if len(body.get("history", [])) >= entries:
            return body
        time.sleep(0.1)
    raise AssertionError(f"message {message_id} has {len(body.get('history', []))} history entries, not {entries}")


def send_until_sent(
    api: Api, setup: WhatsAppSetup, fake_whatsapp: FakeWhatsApp, content: str
) -> tuple[dict[str, Any], str]:
    """Send one message and wait until it is SENT; returns the 202 body and the platform's message id."""
    accepted = send(api, setup, content)
    wait_for_status(api, accepted["message_id"], "SENT")
    wamid = fake_whatsapp.wait_for(setup.customer_phone, 1)[0].platform_message_id
    assert wamid is not None
    return accepted, wamid


def send_after(api: Api, setup: WhatsAppSetup, fake_whatsapp: FakeWhatsApp) -> str:
    """Send one more message in the conversation and wait until the platform has it; returns its text.

    A conversation's route jobs run one after another, in the order they were queued (one FIFO message group),
    so by then the jobs queued before it have run, or the run that sent it found nothing earlier left to send:
    a duplicate or a retry of an earlier message would have reached the platform before it.
    """
    text = f"after {uuid.uuid4()}"
    accepted = send(api, setup, text)
    wait_for_status(api, accepted["message_id"], "SENT")  # the platform's 200 is recorded before it answers
    return text


def texts_sent(fake_whatsapp: FakeWhatsApp, setup: WhatsAppSetup) -> list[str]:
    return [str(r.body["text"]["body"]) for r in fake_whatsapp.sent_to(setup.customer_phone)]


def post_webhook(api: Api, body: bytes, signature: str) -> int:
    response = api.client.post(
        "/webhooks/whatsapp",
        content=body,
        headers={"X-Hub-Signature-256": signature, "Content-Type": "application/json"},
    )
    return response.status_code


def test_twenty_messages_arrive_in_order_and_reach_read(
    api: Api, whatsapp_conversation: WhatsAppSetup, fake_whatsapp: FakeWhatsApp
) -> None:
    # GIVEN an agent and a customer in a WhatsApp conversation
    setup = whatsapp_conversation
    # WHEN the agent sends 20 messages
    accepted = [send(api, setup, f"message number {n}") for n in range(1, 21)]
    # THEN they were accepted PENDING with increasing sequences
    assert [a["sequence"] for a in accepted] == list(range(1, 21))
    assert {a["status"] for a in accepted} == {"PENDING"}
    assert all(a["status_url"] == f"/v1/messages/{a['message_id']}/status" for a in accepted)
    # AND the WhatsApp server received all 20, in order, with the body and token the contract names
    requests = fake_whatsapp.wait_for(setup.customer_phone, 20)
    assert [r.body["text"]["body"] for r in requests] == [f"message number {n}" for n in range(1, 21)]
    token = setup.credentials["access_token"]
    for request in requests:
        assert request.path == f"/v21.0/{setup.credentials['phone_number_id']}/messages"
        assert request.headers["authorization"] == f"Bearer {token}"
        assert request.body == {
            "messaging_product": "whatsapp",
            "to": setup.customer_phone,
            "type": "text",
            "text": {"body": request.body["text"]["body"]},
        }
    # AND each message is SENT with the platform's id
    last = accepted[-1]
    wait_for_status(api, last["message_id"], "SENT")
    message = api.call("GET", f"/v1/messages/{last['message_id']}").json()
    assert message["platform_message_id"] == requests[-1].platform_message_id
    assert message["channel"] == "WHATSAPP"
    assert message["sequence"] == 20

    # WHEN WhatsApp reports delivered, then read, with signed webhooks
    wamid = requests[-1].platform_message_id
    assert wamid is not None
    secret = setup.credentials["app_secret"]
    now = int(time.time())
    for offset, state in enumerate(("delivered", "read")):
        body = status_webhook(setup.credentials["phone_number_id"], wamid, state, setup.customer_phone, now + offset)
        assert post_webhook(api, body, sign(secret, body)) == 200
    # THEN the status is READ with the full history. The status queue is a standard queue consumed by
    # concurrent batches, as in AWS: two reports sent a moment apart may be applied in either order.
    wait_for_status(api, last["message_id"], "READ")
    status = wait_for_history(api, last["message_id"], 4)
    assert status["status"] == "READ"
    history = [h["status"] for h in status["history"]]
    assert history[:2] == ["PENDING", "SENT"]
    assert sorted(history[2:]) == ["DELIVERED", "READ"]
    assert all(h["at"].endswith("Z") for h in status["history"])

    # AND the conversation's history returns all 20 in order
    history = api.call("GET", f"/v1/conversations/{setup.conversation_id}/messages").json()
    assert [m["content"] for m in history["items"]] == [f"message number {n}" for n in range(1, 21)]
    assert [m["sequence"] for m in history["items"]] == list(range(1, 21))
    assert history["next_cursor"] is None
    conversation = api.call("GET", f"/v1/conversations/{setup.conversation_id}").json()
    assert conversation["message_count"] == 20


def test_history_pages_backwards_with_a_cursor(api: Api, whatsapp_conversation: WhatsAppSetup) -> None:
    setup = whatsapp_conversation
    for n in range(1, 6):
        send(api, setup, f"m{n}")
    first = api.call("GET", f"/v1/conversations/{setup.conversation_id}/messages", params={"limit": 2}).json()
    assert [m["content"] for m in first["items"]] == ["m4", "m5"]
    second = api.call(
        "GET",
        f"/v1/conversations/{setup.conversation_id}/messages",
        params={"limit": 2, "before": first["next_cursor"]},
    ).json()
    assert [m["content"] for m in second["items"]] == ["m2", "m3"]
    third = api.call(
        "GET",
        f"/v1/conversations/{setup.conversation_id}/messages",
        params={"limit": 2, "before": second["next_cursor"]},
    ).json()
    assert [m["content"] for m in third["items"]] == ["m1"]
    assert third["next_cursor"] is None


def test_same_message_id_twice_is_one_platform_call(
    api: Api, whatsapp_conversation: WhatsAppSetup, fake_whatsapp: FakeWhatsApp
) -> None:
    setup = whatsapp_conversation
    message_id = str(uuid.uuid4())
    first = send(api, setup, "only once", message_id)
    second = send(api, setup, "only once", message_id)
    assert first == second
    wait_for_status(api, message_id, "SENT")
    after = send_after(api, setup, fake_whatsapp)
    assert texts_sent(fake_whatsapp, setup) == ["only once", after]
    third = send(api, setup, "only once", message_id)  # after delivery too
    assert third == first
    again = send_after(api, setup, fake_whatsapp)
    assert texts_sent(fake_whatsapp, setup) == ["only once", after, again]


def test_only_a_message_id_the_client_gave_is_kept_in_the_idempotency_cache(
    api: Api, platform: LocalPlatform, whatsapp_conversation: WhatsAppSetup
) -> None:
    # a message_id the server makes is new: no retry can name it (a retry without one is a new message)
    cache = redis.Redis.from_url(platform.urls["redis"])

    def records() -> set[bytes]:
        return set(cache.scan_iter(match="*accept_message#*", count=1000))

    try:
        before = records()
        made_here = [send(api, whatsapp_conversation, f"no id {n}")["message_id"] for n in range(3)]
        assert records() == before
        given = str(uuid.uuid4())
        send(api, whatsapp_conversation, "with an id", given)
        assert len(records() - before) == 1
        assert len(set(made_here)) == 3 and given not in made_here
    finally:
        cache.close()


def test_same_message_id_with_another_body_is_409(api: Api, whatsapp_conversation: WhatsAppSetup) -> None:
    setup = whatsapp_conversation
    message_id = str(uuid.uuid4())
    send(api, setup, "the original", message_id)
    response = api.call(
        "POST",
        "/v1/messages",
        json={
            "message_id": message_id,
            "conversation_id": setup.conversation_id,
            "sender_id": setup.agent_id,
            "content": "changed",
        },
    )
    assert response.status_code == 409
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == 409
    stored = api.call("GET", f"/v1/messages/{message_id}").json()
    assert stored["content"] == "the original"


def test_wrong_signature_is_401_and_changes_nothing(
    api: Api, platform: LocalPlatform, whatsapp_conversation: WhatsAppSetup, fake_whatsapp: FakeWhatsApp
) -> None:
    setup = whatsapp_conversation
    accepted, wamid = send_until_sent(api, setup, fake_whatsapp, "watch my status")
    body = status_webhook(setup.credentials["phone_number_id"], wamid, "read", setup.customer_phone)
    forged = sign("not-the-app-secret", body)
    assert post_webhook(api, body, forged) == 401
    assert post_webhook(api, body, "") == 401
    tampered = body.replace(b'"read"', b'"failed"')
    assert post_webhook(api, tampered, sign(setup.credentials["app_secret"], body)) == 401
    # a genuine report after them: once it is applied and the status queue is drained, any report the
    # refused ones had let through would have been applied too
    genuine = status_webhook(setup.credentials["phone_number_id"], wamid, "delivered", setup.customer_phone)
    assert post_webhook(api, genuine, sign(setup.credentials["app_secret"], genuine)) == 200
    wait_for_status(api, accepted["message_id"], "DELIVERED")
    wait_until_drained(platform, "StatusQueue")
    status = api.call("GET", f"/v1/messages/{accepted['message_id']}/status").json()
    assert status["status"] == "DELIVERED"
    assert [h["status"] for h in status["history"]] == ["PENDING", "SENT", "DELIVERED"]


def test_replayed_and_late_webhooks(
    api: Api, platform: LocalPlatform, whatsapp_conversation: WhatsAppSetup, fake_whatsapp: FakeWhatsApp
) -> None:
    setup = whatsapp_conversation
    accepted, wamid = send_until_sent(api, setup, fake_whatsapp, "read me")
    secret = setup.credentials["app_secret"]
    now = int(time.time())
    read = status_webhook(setup.credentials["phone_number_id"], wamid, "read", setup.customer_phone, now + 5)
    assert post_webhook(api, read, sign(secret, read)) == 200
    wait_for_status(api, accepted["message_id"], "READ")
    # a replay of the same webhook changes nothing; a late "delivered" is kept in history only
    assert post_webhook(api, read, sign(secret, read)) == 200
    late = status_webhook(setup.credentials["phone_number_id"], wamid, "delivered", setup.customer_phone, now + 1)
    assert post_webhook(api, late, sign(secret, late)) == 200
    status = wait_for_history(api, accepted["message_id"], 4, timeout=15)
    # every report posted so far has been consumed: a replay applied late would show now
    wait_until_drained(platform, "StatusQueue")
    again = api.call("GET", f"/v1/messages/{accepted['message_id']}/status").json()
    assert again["status"] == "READ"
    assert [h["status"] for h in again["history"]] == ["PENDING", "SENT", "READ", "DELIVERED"]
    assert again["history"] == status["history"]


def test_subscription_check(api: Api, whatsapp_channel: tuple[dict[str, Any], dict[str, str]]) -> None:
    _, credentials = whatsapp_channel
    params = {"hub.mode": "subscribe", "hub.verify_token": credentials["verify_token"], "hub.challenge": "1158201444"}
    ok = api.client.get("/webhooks/whatsapp", params=params)
    assert ok.status_code == 200
    assert ok.text == "1158201444"
    bad = api.client.get("/webhooks/whatsapp", params={**params, "hub.verify_token": "guess"})
    assert bad.status_code == 403
    assert bad.headers["content-type"] == "application/problem+json"


def test_health_reports_every_dependency(api: Api) -> None:
    response = api.client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "UP"
    assert set(body["dependencies"]) == {"postgresql", "mongodb", "redis", "sqs", "eventbridge", "s3", "scanner"}
    assert set(body["dependencies"].values()) == {"UP"}
