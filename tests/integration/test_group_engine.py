"""GROUP messages through the real stack (issue 16's engine): a message fans out into one delivery per recipient,
each goes out on the recipient's own platform through the platform-format servers of the tests, once, in
`sequence` order per recipient; the message's status is the deliveries' aggregate; a status webhook moves its
own delivery. The API's view of deliveries (and its tests) are tests/integration/test_groups*.py."""

from __future__ import annotations

import random
import uuid
from typing import TYPE_CHECKING, Any

from pymongo import MongoClient

from chat4all.adapters.mongo import DEFAULT_DATABASE
from tests.integration.test_channels import agent, disable, instagram_channel, send, telegram_channel, wait_until
from tests.integration.test_message_path import post_webhook, wait_for_status
from tests.support.fake_whatsapp import sign, status_webhook

if TYPE_CHECKING:
    from pymongo.database import Database

    from devstack.stack import LocalPlatform
    from tests.integration.conftest import Api
    from tests.support.fake_instagram import FakeInstagram
    from tests.support.fake_telegram import FakeTelegram
    from tests.support.fake_whatsapp import FakeWhatsApp


def customer(api: Api, name: str, platform: str | None = None, platform_user_id: str | None = None) -> str:
    user_id = str(api.created("/v1/users", {"display_name": name, "user_type": "CUSTOMER"})["user_id"])
    if platform is not None:
        body = {"platform": platform, "platform_user_id": platform_user_id}
        api.created(f"/v1/users/{user_id}/identities", body)
    return user_id


def deliveries(db: Database[dict[str, Any]], message_id: str) -> dict[str, dict[str, Any]]:
    return {d["user_id"]: d for d in db.deliveries.find({"message_id": message_id})}


def test_a_group_message_reaches_each_recipient_once_on_their_own_platform_and_ends_sent(
    platform: LocalPlatform,
    api: Api,
    whatsapp_channel: tuple[dict[str, Any], dict[str, str]],
    fake_whatsapp: FakeWhatsApp,
    fake_telegram: FakeTelegram,
    fake_instagram: FakeInstagram,
) -> None:
    # GIVEN a group on the WhatsApp line: an agent, one customer on each platform, one reachable on none
    channel, wa = whatsapp_channel
    # a recipient off the conversation's platform is reached through its platform's only enabled channel: a
    # Telegram or Instagram channel an earlier test left enabled would make that ambiguous (and the delivery FAILED)
    for other in api.call("GET", "/v1/channels").json()["items"]:
        if other["platform"] in ("TELEGRAM", "INSTAGRAM") and other["enabled"]:
            disable(api, other["channel_id"])
    tg_channel, tg = telegram_channel(api)
    ig_channel, _ = instagram_channel(api, fake_instagram)
    client: MongoClient[dict[str, Any]] = MongoClient(platform.urls["mongo"], tz_aware=True)
    db = client.get_default_database(DEFAULT_DATABASE)
    try:
        phone = "55119" + str(uuid.uuid4().int)[:8]
        chat_id = random.randrange(10**8, 10**9)
        igsid = str(random.randrange(10**15, 10**16))
        sender = agent(api)
        on_whatsapp = customer(api, "Wanda", "WHATSAPP", phone)
        on_telegram = customer(api, "Tereza", "TELEGRAM", str(chat_id))
        on_instagram = customer(api, "Iris", "INSTAGRAM", igsid)
        nowhere = customer(api, "Nina")
        conversation = api.created(
            "/v1/conversations",
            {
                "conversation_type": "GROUP",
                "participants": [sender, on_whatsapp, on_telegram, on_instagram, nowhere],
                "primary_channel": "WHATSAPP",
                "channel_id": channel["channel_id"],
            },
        )["conversation_id"]

        # WHEN the agent sends two messages to the group
        first = send(api, conversation, sender, "group hello 1")
        second = send(api, conversation, sender, "group hello 2")

        # THEN both end SENT: every delivery that has not failed is SENT
        for message_id in (first, second):
            sent = wait_for_status(api, message_id, "SENT", timeout=90)
            assert [entry["status"] for entry in sent["history"]] == ["PENDING", "SENT"]

        # AND each platform's server got each message once, in sequence order, in its own format
        delivered = wait_until(lambda: [r for r in fake_whatsapp.sent_to(phone) if r.answered == 200])
        assert [r.body["text"]["body"] for r in delivered] == ["group hello 1", "group hello 2"]
        assert all(r.path.endswith(f"/{wa['phone_number_id']}/messages") for r in delivered)
        telegram = [body for token, body in fake_telegram.called("sendMessage") if token == tg["bot_token"]]
        assert telegram == [{"chat_id": chat_id, "text": f"group hello {n}"} for n in (1, 2)]
        assert [text for _, text, _ in fake_instagram.sent_to(igsid)] == ["group hello 1", "group hello 2"]

        # AND the message has one delivery per recipient (not the sender), each with its own route and id;
        # the one reachable on no platform is FAILED with its reason
        stored = deliveries(db, first)
        assert set(stored) == {on_whatsapp, on_telegram, on_instagram, nowhere}
        routes = {user: (d["status"], d["platform"], d["channel_id"]) for user, d in stored.items()}
        assert routes == {
            on_whatsapp: ("SENT", "WHATSAPP", channel["channel_id"]),
            on_telegram: ("SENT", "TELEGRAM", tg_channel),
            on_instagram: ("SENT", "INSTAGRAM", ig_channel),
            nowhere: ("FAILED", None, None),
        }
        assert "has no identity" in stored[nowhere]["history"][-1]["detail"]
        assert stored[on_whatsapp]["platform_message_id"] == delivered[0].platform_message_id
        assert all(d["delivery_attempts"] == 1 for user, d in stored.items() if user != nowhere)
        message = db.messages.find_one({"_id": first})
        assert message is not None and message["fanned_out"] is True
        assert sorted(message["recipients"]) == sorted([on_whatsapp, on_telegram, on_instagram, nowhere])

        # WHEN WhatsApp reports the first message delivered to its recipient
        wamid = delivered[0].platform_message_id
        assert wamid is not None
        body = status_webhook(wa["phone_number_id"], wamid, "delivered", phone)
        assert post_webhook(api, body, sign(wa["app_secret"], body)) == 200

        # THEN that delivery moves on, and the message stays SENT while the others are only SENT
        wait_until(lambda: deliveries(db, first)[on_whatsapp]["status"] == "DELIVERED")
        assert deliveries(db, first)[on_telegram]["status"] == "SENT"
        assert api.call("GET", f"/v1/messages/{first}/status").json()["status"] == "SENT"

        # AND the lanes were released: nothing is left marked once every delivery is settled
        lanes = {lane["user_id"]: lane for lane in db.lanes.find({"conversation_id": conversation})}
        assert set(lanes) == {on_whatsapp, on_telegram, on_instagram}
        wait_until(lambda: all("marked_at" not in lane for lane in db.lanes.find({"conversation_id": conversation})))
        assert {lane["fanned_sequence"] for lane in lanes.values()} == {2}
    finally:
        client.close()
        disable(api, tg_channel)
        disable(api, ig_channel)
