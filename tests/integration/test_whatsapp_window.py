"""WhatsApp templates and the 24-hour window end to end, over HTTP, against the real servers and the
WhatsApp-format server: the window is measured from the timestamp WhatsApp gave the customer's last message
(a signed inbound webhook), text outside it is refused at acceptance, templates go out in the Cloud API's
format, and WhatsApp's own 131047 ends a message FAILED with its reason."""

from __future__ import annotations

import json
import random
import time
import uuid
from typing import TYPE_CHECKING, Any

from tests.integration.test_message_path import post_webhook, wait_for_status
from tests.support.fake_whatsapp import RE_ENGAGEMENT, message_webhook, sign, status_webhook

if TYPE_CHECKING:
    from tests.integration.conftest import Api, WhatsAppSetup
    from tests.support.fake_whatsapp import FakeWhatsApp

TEMPLATE: dict[str, Any] = {
    "name": "order_ready",
    "language": "pt_BR",
    "components": [
        {"type": "header", "parameters": [{"type": "image", "image": {"link": "https://cdn.example.com/8812.jpg"}}]},
        {
            "type": "body",
            "parameters": [
                {"type": "text", "text": "Carlos"},
                {"type": "currency", "currency": {"fallback_value": "R$ 129,90", "code": "BRL", "amount_1000": 129900}},
            ],
        },
        {"type": "button", "sub_type": "quick_reply", "index": 0, "parameters": [{"type": "payload", "payload": "OK"}]},
    ],
}
DAY = 24 * 3600


def customer_writes(api: Api, setup: WhatsAppSetup, at: int, text: str) -> None:
    """The customer's message, as WhatsApp's signed webhook delivers it, with WhatsApp's timestamp `at`."""
    phone_number_id = setup.credentials["phone_number_id"]
    body = message_webhook(phone_number_id, f"wamid.{uuid.uuid4().hex}", setup.customer_phone, "Carlos", text, at)
    assert post_webhook(api, body, sign(setup.credentials["app_secret"], body)) == 200


def history(api: Api, setup: WhatsAppSetup) -> list[dict[str, Any]]:
    response = api.call("GET", f"/v1/conversations/{setup.conversation_id}/messages", params={"limit": 200})
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


def post(api: Api, setup: WhatsAppSetup, **fields: Any) -> Any:
    body = {"conversation_id": setup.conversation_id, "sender_id": setup.agent_id, **fields}
    return api.call("POST", "/v1/messages", json=body)


def test_outside_the_window_text_is_refused_a_template_goes_and_a_new_message_reopens_it(
    api: Api, whatsapp_conversation: WhatsAppSetup, fake_whatsapp: FakeWhatsApp
) -> None:
    setup = whatsapp_conversation
    # GIVEN the customer's last message carries a WhatsApp timestamp 25 hours old
    customer_writes(api, setup, int(time.time()) - DAY - 3600, "Meu pedido chegou?")
    stored = history(api, setup)
    assert [(m["direction"], m["content"]) for m in stored] == [("INBOUND", "Meu pedido chegou?")]

    # WHEN the agent sends text THEN 422 naming the window and asking for a template, and nothing is stored
    message_id = str(uuid.uuid4())
    refused = post(api, setup, message_id=message_id, content="Olá! Ainda precisa de ajuda?")
    assert refused.status_code == 422, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    problem = refused.json()
    assert problem["type"].endswith("/whatsapp-window-closed")
    assert "24-hour window" in problem["detail"] and "template" in problem["detail"]
    assert problem["errors"] == [{"field": "content", "message": "outside WhatsApp's 24-hour window: send a template"}]
    assert history(api, setup) == stored
    assert api.call("GET", f"/v1/messages/{message_id}").status_code == 404
    assert fake_whatsapp.sent_to(setup.customer_phone) == []

    # WHEN the agent sends a template THEN it is accepted and reaches WhatsApp in the Cloud API's template format
    template_id = str(uuid.uuid4())
    accepted = post(api, setup, message_id=template_id, template=TEMPLATE)
    assert accepted.status_code == 202, accepted.text
    # the same message_id and body again: the same 202; another template under it: 409
    assert post(api, setup, message_id=template_id, template=TEMPLATE).json() == accepted.json()
    other = {**TEMPLATE, "name": "order_late"}
    assert post(api, setup, message_id=template_id, template=other).status_code == 409
    wait_for_status(api, template_id, "SENT")
    [sent] = fake_whatsapp.wait_for(setup.customer_phone, 1)
    components = json.loads(json.dumps(TEMPLATE["components"]))
    components[2]["index"] = "0"
    assert sent.body == {
        "messaging_product": "whatsapp",
        "to": setup.customer_phone,
        "type": "template",
        "template": {"name": "order_ready", "language": {"code": "pt_BR"}, "components": components},
    }
    # AND the message and the history show it with its template
    message = api.call("GET", f"/v1/messages/{template_id}").json()
    assert (message["message_type"], message["template"], message["content"]) == (
        "template", TEMPLATE, "[template order_ready (pt_BR)]",
    )  # fmt: skip
    assert message["platform_message_id"] == sent.platform_message_id
    assert [m.get("template") for m in history(api, setup)] == [None, TEMPLATE]

    # WHEN the customer writes again (a current WhatsApp timestamp) THEN text goes out again
    customer_writes(api, setup, int(time.time()), "Sim, obrigado!")
    text = post(api, setup, content="Que bom! Seu pedido sai hoje.")
    assert text.status_code == 202, text.text
    wait_for_status(api, text.json()["message_id"], "SENT")
    last = fake_whatsapp.wait_for(setup.customer_phone, 2)[-1]
    assert last.body["type"] == "text" and last.body["text"] == {"body": "Que bom! Seu pedido sai hoje."}


def test_a_late_webhook_of_an_older_message_does_not_close_the_window(
    api: Api, whatsapp_conversation: WhatsAppSetup
) -> None:
    setup = whatsapp_conversation
    customer_writes(api, setup, int(time.time()) - 60, "oi")
    customer_writes(api, setup, int(time.time()) - 3 * DAY, "an old message delivered late")
    assert post(api, setup, content="still inside the window").status_code == 202


def test_whatsapps_131047_ends_the_message_failed_with_its_reason(
    api: Api, whatsapp_conversation: WhatsAppSetup, fake_whatsapp: FakeWhatsApp
) -> None:
    # GIVEN a customer who never wrote (the window is unknown, so the message is sent) and WhatsApp refusing it
    setup = whatsapp_conversation
    fake_whatsapp.fail_next(setup.customer_phone, RE_ENGAGEMENT)
    accepted = post(api, setup, content="Olá, tudo bem?")
    assert accepted.status_code == 202, accepted.text
    # THEN the message ends FAILED with WhatsApp's code and message, after one call (not retried)
    status = wait_for_status(api, accepted.json()["message_id"], "FAILED")
    reason = status["history"][-1]["detail"]
    assert "131047" in reason and "Re-engagement message" in reason, reason
    assert len(fake_whatsapp.sent_to(setup.customer_phone)) == 1
    assert api.call("GET", f"/v1/messages/{accepted.json()['message_id']}").json()["error"] == reason

    # AND when WhatsApp takes a message and reports 131047 later, in a failed status webhook, it ends FAILED too
    later = post(api, setup, content="Podemos ajudar?")
    wait_for_status(api, later.json()["message_id"], "SENT")
    wamid = fake_whatsapp.wait_for(setup.customer_phone, 1)[-1].platform_message_id
    assert wamid is not None
    payload = json.loads(status_webhook(setup.credentials["phone_number_id"], wamid, "failed", setup.customer_phone))
    payload["entry"][0]["changes"][0]["value"]["statuses"][0]["errors"] = [
        {"code": 131047, "title": "Re-engagement message", "message": "Re-engagement message"}
    ]
    body = json.dumps(payload).encode()
    assert post_webhook(api, body, sign(setup.credentials["app_secret"], body)) == 200
    failed = wait_for_status(api, later.json()["message_id"], "FAILED")
    assert failed["history"][-1]["detail"] == "131047: Re-engagement message"


def test_a_template_on_a_telegram_conversation_is_refused(api: Api) -> None:
    agent = api.created("/v1/users", {"display_name": "Ana Agent", "user_type": "AGENT"})["user_id"]
    customer = api.created("/v1/users", {"display_name": "Bruna", "user_type": "CUSTOMER"})["user_id"]
    chat_id = str(random.randrange(10**6, 10**9))
    api.created(f"/v1/users/{customer}/identities", {"platform": "TELEGRAM", "platform_user_id": chat_id})
    bot_id = str(random.randrange(10**9, 10**10))
    credentials = {"bot_token": f"{bot_id}:AAH{uuid.uuid4().hex}", "secret_token": f"tg_{uuid.uuid4().hex}"}
    channel = api.created("/v1/channels", {"platform": "TELEGRAM", "name": "bot", "credentials": credentials})
    conversation = api.created(
        "/v1/conversations",
        {
            "conversation_type": "ONE_TO_ONE",
            "participants": [agent, customer],
            "primary_channel": "TELEGRAM",
            "channel_id": channel["channel_id"],
        },
    )["conversation_id"]
    body = {"conversation_id": conversation, "sender_id": agent, "template": TEMPLATE}
    refused = api.call("POST", "/v1/messages", json=body)
    assert refused.status_code == 422, refused.text
    assert [e["field"] for e in refused.json()["errors"]] == ["template"]
    assert "TELEGRAM" in refused.json()["detail"]
    assert api.call("GET", f"/v1/conversations/{conversation}").json()["message_count"] == 0


def test_bad_template_bodies_are_4xx_problems(api: Api, whatsapp_conversation: WhatsAppSetup) -> None:
    setup = whatsapp_conversation
    deep: Any = "x"
    for _ in range(200):
        deep = {"parameters": [deep]}
    bad: list[Any] = [
        {"name": "Order Ready", "language": "pt_BR"},
        {"name": "t", "language": "pt-BR"},
        {"name": "t", "language": "en", "components": [{"type": "body", "parameters": [{"type": "text"}]}] * 5000},
        {"name": "t", "language": "en", "components": [deep]},
        {"name": "t\u0000", "language": "en"},
        {"name": "t", "language": "en", "components": [{"type": "body", "parameters": [{"type": "text", "text": 7}]}]},
        ["order_ready", "en"],
        "order_ready",
    ]
    for template in bad:
        response = post(api, setup, template=template)
        assert 400 <= response.status_code < 500, (template if len(str(template)) < 200 else "...", response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
    # numbers beyond what JSON parsers agree on, and a template with content
    huge = {"fallback_value": "$", "code": "USD", "amount_1000": 0}
    template = {"name": "t", "language": "en", "components": [{"type": "body", "parameters": [huge]}]}
    template["components"][0]["parameters"] = [{"type": "currency", "currency": huge}]
    body = {"conversation_id": setup.conversation_id, "sender_id": setup.agent_id, "template": template}
    raw = json.dumps(body).replace('"amount_1000": 0', '"amount_1000": 1e400')
    assert "1e400" in raw
    response = api.client.post(
        "/v1/messages",
        content=raw,
        headers={"Authorization": f"Bearer {api.admin_key}", "Content-Type": "application/json"},
    )
    assert 400 <= response.status_code < 500, response.text
    both = post(api, setup, template={"name": "t", "language": "en"}, content="hi")
    assert both.status_code == 422, both.text
    assert history(api, setup) == []
