"""A channel whose credentials no longer decrypt (real KMS) fails its own messages and blocks no other channel."""

from __future__ import annotations

from typing import TYPE_CHECKING

from chat4all import bootstrap
from tests.integration.conftest import lost_key_line
from tests.integration.test_message_path import post_webhook, send, wait_for_status
from tests.support.fake_whatsapp import sign, status_webhook

if TYPE_CHECKING:
    from devstack.stack import LocalPlatform
    from tests.integration.conftest import Api, WhatsAppSetup
    from tests.support.fake_whatsapp import FakeWhatsApp


def test_unreadable_credentials_fail_their_channel_only(
    platform: LocalPlatform, api: Api, whatsapp_conversation: WhatsAppSetup, fake_whatsapp: FakeWhatsApp
) -> None:
    setup = whatsapp_conversation
    # GIVEN a second WhatsApp line whose stored ciphertext KMS can no longer decrypt (as after losing its key)
    broken_line = lost_key_line(api, platform.urls["postgres"])
    broken_conversation = api.created(
        "/v1/conversations",
        {
            "conversation_type": "ONE_TO_ONE",
            "participants": [setup.agent_id, setup.customer_id],
            "primary_channel": "WHATSAPP",
            "channel_id": broken_line,
        },
    )["conversation_id"]

    # WHEN a message goes out on each line
    on_broken = api.call(
        "POST",
        "/v1/messages",
        json={"conversation_id": broken_conversation, "sender_id": setup.agent_id, "content": "lost"},
    )
    assert on_broken.status_code == 202, on_broken.text
    working = send(api, setup, "still fine")

    # THEN the broken line's message ends FAILED with the reason, the other line's is SENT
    failed = wait_for_status(api, on_broken.json()["message_id"], "FAILED", timeout=60)
    assert "cannot be decrypted" in failed["history"][-1]["detail"]
    wait_for_status(api, working["message_id"], "SENT", timeout=60)
    assert [r.body["text"]["body"] for r in fake_whatsapp.wait_for(setup.customer_phone, 1)] == ["still fine"]

    # AND the working line's webhooks still verify and apply
    wamid = fake_whatsapp.wait_for(setup.customer_phone, 1)[0].platform_message_id
    assert wamid is not None
    body = status_webhook(setup.credentials["phone_number_id"], wamid, "delivered", setup.customer_phone)
    assert post_webhook(api, body, sign(setup.credentials["app_secret"], body)) == 200
    wait_for_status(api, working["message_id"], "DELIVERED", timeout=60)
    challenge = api.client.get(
        "/webhooks/whatsapp",
        params={"hub.mode": "subscribe", "hub.verify_token": setup.credentials["verify_token"], "hub.challenge": "7"},
    )
    assert (challenge.status_code, challenge.text) == (200, "7")

    # the broken line is disabled again so later tests see one working line
    with bootstrap.postgres().transaction() as cur:
        cur.execute("UPDATE channels SET enabled = false WHERE channel_id = %s", (broken_line,))
