"""Inbound WhatsApp messages: matched to a person and a conversation, stored once."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from chat4all.domain.models import Platform
from chat4all.services.inbound import inbound_message_id
from tests.integration.test_message_path import post_webhook
from tests.support.fake_whatsapp import message_webhook, sign

if TYPE_CHECKING:
    from tests.integration.conftest import Api, WhatsAppSetup


def receive(api: Api, setup: WhatsAppSetup, sender: str, text: str, name: str = "Sheena Nelson") -> str:
    wamid = f"wamid.{uuid.uuid4().hex}"
    body = message_webhook(setup.credentials["phone_number_id"], wamid, sender, name, text)
    assert post_webhook(api, body, sign(setup.credentials["app_secret"], body)) == 200
    return wamid


def test_a_known_customer_writes_into_their_conversation(api: Api, whatsapp_conversation: WhatsAppSetup) -> None:
    setup = whatsapp_conversation
    wamid = receive(api, setup, setup.customer_phone, "Does it come in another color?")
    history = api.call("GET", f"/v1/conversations/{setup.conversation_id}/messages").json()
    assert [(m["content"], m["direction"], m["sender_id"], m["channel"]) for m in history["items"]] == [
        ("Does it come in another color?", "INBOUND", setup.customer_id, "WHATSAPP")
    ]
    message = api.call("GET", f"/v1/messages/{inbound_message_id(Platform.WHATSAPP, wamid)}").json()
    assert message["platform_message_id"] == wamid


def test_a_stranger_becomes_a_customer_with_a_new_conversation(api: Api, whatsapp_conversation: WhatsAppSetup) -> None:
    setup = whatsapp_conversation
    stranger = "49151" + str(uuid.uuid4().int)[:8]
    first = receive(api, setup, stranger, "Hallo?", name="Greta")
    second = receive(api, setup, stranger, "Ist jemand da?", name="Greta")
    one = api.call("GET", f"/v1/messages/{inbound_message_id(Platform.WHATSAPP, first)}").json()
    two = api.call("GET", f"/v1/messages/{inbound_message_id(Platform.WHATSAPP, second)}").json()
    assert one["conversation_id"] == two["conversation_id"] != setup.conversation_id
    assert (one["sequence"], two["sequence"]) == (1, 2)
    user = api.call("GET", f"/v1/users/{one['sender_id']}").json()
    assert (user["display_name"], user["user_type"], user["phone"]) == ("Greta", "CUSTOMER", f"+{stranger}")
    assert [(i["platform"], i["platform_user_id"]) for i in user["external_identities"]] == [("WHATSAPP", stranger)]
    conversation = api.call("GET", f"/v1/conversations/{one['conversation_id']}").json()
    assert [p["user_id"] for p in conversation["participants"]] == [user["user_id"]]
    assert conversation["message_count"] == 2


def test_a_replayed_inbound_webhook_changes_nothing(api: Api, whatsapp_conversation: WhatsAppSetup) -> None:
    setup = whatsapp_conversation
    wamid = f"wamid.{uuid.uuid4().hex}"
    body = message_webhook(
        setup.credentials["phone_number_id"], wamid, setup.customer_phone, "Carl", "only once", 1750000000
    )
    for _ in range(3):
        assert post_webhook(api, body, sign(setup.credentials["app_secret"], body)) == 200
    history = api.call("GET", f"/v1/conversations/{setup.conversation_id}/messages").json()
    assert [m["content"] for m in history["items"]] == ["only once"]


def test_a_forged_inbound_webhook_stores_nothing(api: Api, whatsapp_conversation: WhatsAppSetup) -> None:
    setup = whatsapp_conversation
    body = message_webhook(setup.credentials["phone_number_id"], "wamid.forged", setup.customer_phone, "Carl", "forged")
    assert post_webhook(api, body, sign("guessed-secret", body)) == 401
    history = api.call("GET", f"/v1/conversations/{setup.conversation_id}/messages").json()
    assert history["items"] == []
