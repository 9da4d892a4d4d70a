"""GROUP conversations deliver (issue 16, contract v1.2), black box: real servers, the platform's own functions,
and the three platform-format servers of tests/support as the platforms.

A GROUP message goes to every participant but its sender as they were when it was accepted, each on their own
platform; each recipient gets the group's messages once and in `sequence` order; one recipient's failing
platform holds back no other; `GET /v1/messages/{id}` shows one delivery per recipient and the aggregate status.
Every wait is on something observable (a count at a platform server, a status through the API, a drained
queue), never a sleep followed by a check that something did not happen.
"""

from __future__ import annotations

import random
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import pytest

from tests.integration.conftest import wait_until_drained
from tests.integration.test_channels import instagram_channel, post_instagram, telegram_channel
from tests.integration.test_message_path import post_webhook
from tests.support.fake_instagram import read_webhook
from tests.support.fake_whatsapp import sign, status_webhook

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from devstack.stack import LocalPlatform
    from tests.integration.conftest import Api
    from tests.support.fake_instagram import FakeInstagram
    from tests.support.fake_telegram import FakeTelegram
    from tests.support.fake_whatsapp import FakeWhatsApp

# how long the WhatsApp-format server answers 500 in the isolation test (the minute)
OUTAGE_SECONDS = 60.0
SETTLED = {"SENT", "DELIVERED", "READ", "FAILED"}


# ---------------------------------------------------------------------------------------------- the world
@dataclass
class Channels:
    """The one enabled channel of each platform these tests deliver through, with its credentials."""

    whatsapp_id: str
    whatsapp: dict[str, str]
    telegram_id: str
    telegram: dict[str, str]
    instagram_id: str
    instagram: dict[str, str]


@dataclass
class Member:
    user_id: str
    platform: str | None  # where it is reached (None: no identity on any enabled channel)
    address: str | None  # its id there: E.164 digits, Telegram chat id, Instagram-scoped id
    key: str | None = None  # an agent key of its own, when it has one


@dataclass
class Group:
    conversation_id: str
    sender: Member
    members: list[Member] = field(default_factory=list)


@pytest.fixture(scope="module")
def channels(
    api: Api, whatsapp_channel: tuple[dict[str, Any], dict[str, str]], fake_instagram: FakeInstagram
) -> Iterator[Channels]:
    # a recipient off the conversation's platform is reached through its platform's only enabled channel:
    # a Telegram or Instagram channel left enabled by an earlier test would make that ambiguous
    for channel in api.call("GET", "/v1/channels").json()["items"]:
        if channel["platform"] in ("TELEGRAM", "INSTAGRAM") and channel["enabled"]:
            api.call("PATCH", f"/v1/channels/{channel['channel_id']}", json={"enabled": False})
    telegram_id, telegram = telegram_channel(api)
    instagram_id, instagram = instagram_channel(api, fake_instagram)
    whatsapp, whatsapp_credentials = whatsapp_channel
    yield Channels(whatsapp["channel_id"], whatsapp_credentials, telegram_id, telegram, instagram_id, instagram)
    for channel_id in (telegram_id, instagram_id):
        api.call("PATCH", f"/v1/channels/{channel_id}", json={"enabled": False})


def member(api: Api, platform: str | None, *, user_type: str = "CUSTOMER", with_key: bool = False) -> Member:
    address = None
    if platform == "WHATSAPP":
        address = "55119" + str(uuid.uuid4().int)[:8]
    elif platform == "TELEGRAM":
        address = str(random.randrange(10**8, 10**9))
    elif platform == "INSTAGRAM":
        address = str(random.randrange(10**15, 10**16))
    body: dict[str, Any] = {"display_name": f"{platform or 'nowhere'} {user_type.lower()}", "user_type": user_type}
    if platform == "WHATSAPP":
        body["phone"] = f"+{address}"
    user_id = str(api.created("/v1/users", body)["user_id"])
    if platform is not None:
        api.created(f"/v1/users/{user_id}/identities", {"platform": platform, "platform_user_id": address})
    key = None
    if with_key:
        key = str(api.created("/v1/api-keys", {"name": "member", "role": "agent", "user_id": user_id})["api_key"])
    return Member(user_id, platform, address, key)


def group(api: Api, channels: Channels, recipients: list[Member]) -> Group:
    sender = member(api, None, user_type="AGENT", with_key=True)
    body = {
        "conversation_type": "GROUP",
        "participants": [sender.user_id, *(m.user_id for m in recipients)],
        "primary_channel": "WHATSAPP",
        "channel_id": channels.whatsapp_id,
    }
    conversation = api.created("/v1/conversations", body)
    return Group(conversation["conversation_id"], sender, list(recipients))


def send(api: Api, to: Group, content: str) -> dict[str, Any]:
    body = {"conversation_id": to.conversation_id, "sender_id": to.sender.user_id, "content": content}
    response = api.call("POST", "/v1/messages", json=body)
    assert response.status_code == 202, response.text
    return {**response.json(), "content": content}


# ---------------------------------------------------------------------------------------------- reading
def message(api: Api, message_id: str, key: str | None = None) -> dict[str, Any]:
    response = api.call("GET", f"/v1/messages/{message_id}", key=key)
    assert response.status_code == 200, response.text
    return dict(response.json())


def wait_for(
    api: Api, message_id: str, ready: Callable[[dict[str, Any]], bool], what: str, timeout: float = 90
) -> dict[str, Any]:
    """GET the message until `ready(view)`; the last view is in the failure."""
    deadline = time.monotonic() + timeout
    view: dict[str, Any] = {}
    while time.monotonic() < deadline:
        view = message(api, message_id)
        if ready(view):
            return view
        time.sleep(0.1)
    raise AssertionError(f"message {message_id}: {what} not reached within {timeout} s: {view}")


def settled(view: dict[str, Any]) -> bool:
    """Every delivery of a GROUP message is SENT or beyond, or FAILED (none PENDING), and so is the message: its
    aggregate follows its deliveries' moves (written after them)."""
    deliveries = view.get("deliveries")
    return bool(deliveries) and all(d["status"] in SETTLED for d in deliveries) and view["status"] in SETTLED


def wait_settled(api: Api, message_ids: list[str], timeout: float = 120) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    return {
        m: wait_for(api, m, settled, "every delivery settled", max(1.0, deadline - time.monotonic()))
        for m in message_ids
    }


def delivery(view: dict[str, Any], user_id: str) -> dict[str, Any]:
    [found] = [d for d in view["deliveries"] if d["user_id"] == user_id]
    return dict(found)


def delivery_is(user_id: str, status: str) -> Callable[[dict[str, Any]], bool]:
    return lambda view: any(d["user_id"] == user_id and d["status"] == status for d in view.get("deliveries", []))


@dataclass
class Platforms:
    """What the three platform-format servers received, per recipient, in arrival order."""

    whatsapp: FakeWhatsApp
    telegram: FakeTelegram
    instagram: FakeInstagram
    channels: Channels

    def received(self, recipient: Member) -> list[str]:
        """The texts the recipient's platform accepted for it (2xx answers), in the order they arrived."""
        if recipient.platform == "WHATSAPP":
            return [r.body["text"]["body"] for r in self.whatsapp.sent_to(str(recipient.address)) if r.answered == 200]
        if recipient.platform == "TELEGRAM":
            token = self.channels.telegram["bot_token"]
            return [
                str(body.get("text"))
                for used, body in self.telegram.called("sendMessage")
                if used == token and str(body.get("chat_id")) == recipient.address
            ]
        if recipient.platform == "INSTAGRAM":
            return [text for _, text, _ in self.instagram.sent_to(str(recipient.address))]
        return []

    def requests(self, recipient: Member) -> list[dict[str, Any]]:
        """Every request the recipient's platform got for it (refused ones too), as sent."""
        if recipient.platform == "WHATSAPP":
            return [r.body for r in self.whatsapp.sent_to(str(recipient.address))]
        if recipient.platform == "TELEGRAM":
            token = self.channels.telegram["bot_token"]
            return [
                body
                for used, body in self.telegram.called("sendMessage")
                if used == token and str(body.get("chat_id")) == recipient.address
            ]
        if recipient.platform == "INSTAGRAM":
            return [
                call[3]
                for call in self.instagram.calls
                if call[0] == "POST" and call[3].get("recipient") == {"id": recipient.address}
            ]
        return []

    def wait_received(self, recipient: Member, count: int, timeout: float = 120) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.received(recipient)
            if len(got) >= count:
                return got
            time.sleep(0.05)
        raise AssertionError(
            f"{recipient.platform} {recipient.address} got {len(self.received(recipient))}, not {count}"
        )


@pytest.fixture
def platforms(
    fake_whatsapp: FakeWhatsApp, fake_telegram: FakeTelegram, fake_instagram: FakeInstagram, channels: Channels
) -> Platforms:
    return Platforms(fake_whatsapp, fake_telegram, fake_instagram, channels)


def in_sequence_order(texts: list[str], accepted: list[dict[str, Any]]) -> list[str]:
    """`accepted`'s texts among `texts`, ordered by their sequence (what a recipient must get, in this order)."""
    wanted = set(texts)
    return [a["content"] for a in sorted(accepted, key=lambda a: a["sequence"]) if a["content"] in wanted]


def texts(accepted: list[dict[str, Any]]) -> list[str]:
    return [a["content"] for a in sorted(accepted, key=lambda a: a["sequence"])]


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def seconds_between(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def sent_at(item: dict[str, Any]) -> str:
    return str(next(entry["at"] for entry in item["history"] if entry["status"] == "SENT"))


# ---------------------------------------------------------------------------------------------- five people
def test_a_group_of_five_reaches_each_on_their_own_platform_and_follows_the_aggregate(
    api: Api, platform: LocalPlatform, channels: Channels, platforms: Platforms
) -> None:
    # GIVEN an agent, a customer on each of WhatsApp, Telegram and Instagram, and one reachable nowhere
    on_whatsapp, on_telegram, on_instagram = (member(api, p) for p in ("WHATSAPP", "TELEGRAM", "INSTAGRAM"))
    nowhere = member(api, None)
    five = group(api, channels, [on_whatsapp, on_telegram, on_instagram, nowhere])
    reached = [on_whatsapp, on_telegram, on_instagram]

    # WHEN the agent sends three messages
    tag = uuid.uuid4().hex[:8]
    accepted = [send(api, five, f"group {tag} #{n}") for n in range(1, 4)]
    views = wait_settled(api, [a["message_id"] for a in accepted])

    # THEN each platform server got its own format, once per message, in sequence order
    for recipient in reached:
        assert platforms.wait_received(recipient, 3) == texts(accepted), recipient
    whatsapp = platforms.whatsapp.sent_to(str(on_whatsapp.address))
    assert [r.body for r in whatsapp] == [
        {"messaging_product": "whatsapp", "to": on_whatsapp.address, "type": "text", "text": {"body": t}}
        for t in texts(accepted)
    ]
    assert {r.path for r in whatsapp} == {f"/v21.0/{channels.whatsapp['phone_number_id']}/messages"}
    assert {r.headers["authorization"] for r in whatsapp} == {f"Bearer {channels.whatsapp['access_token']}"}
    assert [{**b, "chat_id": str(b["chat_id"])} for b in platforms.requests(on_telegram)] == [
        {"chat_id": on_telegram.address, "text": t} for t in texts(accepted)
    ]
    assert platforms.requests(on_instagram) == [
        {"recipient": {"id": on_instagram.address}, "message": {"text": t}} for t in texts(accepted)
    ]

    # AND the API shows one delivery per recipient, by user_id, each on its own platform and channel; the one
    # reachable nowhere FAILED with its reason; the message is SENT (the furthest state every live delivery has)
    first = views[accepted[0]["message_id"]]
    assert [d["user_id"] for d in first["deliveries"]] == sorted(m.user_id for m in five.members)
    assert five.sender.user_id not in {d["user_id"] for d in first["deliveries"]}
    expected_routes = {
        on_whatsapp.user_id: ("WHATSAPP", channels.whatsapp_id),
        on_telegram.user_id: ("TELEGRAM", channels.telegram_id),
        on_instagram.user_id: ("INSTAGRAM", channels.instagram_id),
    }
    for view in views.values():
        assert view["status"] == "SENT", view
        assert view["delivery_counts"] == {"PENDING": 0, "SENT": 3, "DELIVERED": 0, "READ": 0, "FAILED": 1}, view
        for user_id, (platform_name, channel_id) in expected_routes.items():
            item = delivery(view, user_id)
            assert (item["platform"], item["channel_id"], item["status"]) == (platform_name, channel_id, "SENT")
            assert item["platform_message_id"]
            assert [e["status"] for e in item["history"]] == ["PENDING", "SENT"]
        failed = delivery(view, nowhere.user_id)
        assert failed["status"] == "FAILED" and failed["platform_message_id"] is None, failed
        assert failed["history"][-1]["status"] == "FAILED" and failed["history"][-1].get("detail"), failed
    # the platform ids are the platforms' own: WhatsApp's wamid, Telegram's message_id, Instagram's message_id
    assert [delivery(views[a["message_id"]], on_whatsapp.user_id)["platform_message_id"] for a in accepted] == [
        r.platform_message_id for r in whatsapp
    ]
    assert [delivery(views[a["message_id"]], on_instagram.user_id)["platform_message_id"] for a in accepted] == [
        mid for _, _, mid in platforms.instagram.sent_to(str(on_instagram.address))
    ]
    telegram_ids = [delivery(views[a["message_id"]], on_telegram.user_id)["platform_message_id"] for a in accepted]
    assert telegram_ids == ["1", "2", "3"]  # the bot's first three messages in that chat
    # a ONE_TO_ONE message has neither field; the role table: the sending agent reads it, an outsider does not
    assert set(message(api, accepted[0]["message_id"], key=five.sender.key)) >= {"deliveries", "delivery_counts"}
    outsider = member(api, None, user_type="AGENT", with_key=True)
    assert api.call("GET", f"/v1/messages/{accepted[0]['message_id']}", key=outsider.key).status_code == 403

    # WHEN each platform reports on the first message in its own webhook format, signed with its own secret
    # (Telegram's Bot API has no delivery or read receipts: its delivery stays SENT)
    target = accepted[0]["message_id"]
    wamid = delivery(first, on_whatsapp.user_id)["platform_message_id"]
    phone_number_id, app_secret = channels.whatsapp["phone_number_id"], channels.whatsapp["app_secret"]
    delivered = status_webhook(phone_number_id, wamid, "delivered", str(on_whatsapp.address))
    assert post_webhook(api, delivered, sign(app_secret, delivered)) == 200
    view = wait_for(api, target, delivery_is(on_whatsapp.user_id, "DELIVERED"), "WhatsApp's delivery DELIVERED")
    # THEN each report moves its own delivery only
    assert delivery(view, on_instagram.user_id)["status"] == "SENT"
    assert delivery(view, on_telegram.user_id)["status"] == "SENT"
    mid = delivery(first, on_instagram.user_id)["platform_message_id"]
    read = read_webhook(channels.instagram["ig_user_id"], str(on_instagram.address), mid)
    assert post_instagram(api, read, sign(channels.instagram["app_secret"], read)) == 200
    view = wait_for(api, target, delivery_is(on_instagram.user_id, "READ"), "Instagram's delivery READ")
    assert delivery(view, on_whatsapp.user_id)["status"] == "DELIVERED"
    read_on_whatsapp = status_webhook(phone_number_id, wamid, "read", str(on_whatsapp.address))
    for _ in range(2):  # replayed: changes nothing more
        assert post_webhook(api, read_on_whatsapp, sign(app_secret, read_on_whatsapp)) == 200
    wait_for(api, target, delivery_is(on_whatsapp.user_id, "READ"), "WhatsApp's delivery READ")
    wait_until_drained(platform, "StatusQueue")
    view = message(api, target)
    assert [e["status"] for e in delivery(view, on_whatsapp.user_id)["history"]] == [
        "PENDING",
        "SENT",
        "DELIVERED",
        "READ",
    ]
    assert [e["status"] for e in delivery(view, on_instagram.user_id)["history"]] == ["PENDING", "SENT", "READ"]
    # AND the message stays SENT: Telegram's delivery, alive, has reached no further
    assert view["status"] == "SENT"
    assert view["delivery_counts"] == {"PENDING": 0, "SENT": 1, "DELIVERED": 0, "READ": 2, "FAILED": 1}
    # the other messages were not touched by reports about the first
    for other in accepted[1:]:
        assert message(api, other["message_id"])["delivery_counts"]["SENT"] == 3


def test_the_message_status_is_the_furthest_state_every_live_delivery_reached(
    api: Api, channels: Channels, platforms: Platforms
) -> None:
    # GIVEN a group of an agent, a WhatsApp customer, an Instagram customer and one reachable nowhere
    on_whatsapp, on_instagram, nowhere = member(api, "WHATSAPP"), member(api, "INSTAGRAM"), member(api, None)
    three = group(api, channels, [on_whatsapp, on_instagram, nowhere])
    accepted = send(api, three, f"aggregate {uuid.uuid4().hex[:8]}")
    view = wait_settled(api, [accepted["message_id"]])[accepted["message_id"]]
    assert view["status"] == "SENT"  # one delivery FAILED: the others decide
    wamid = delivery(view, on_whatsapp.user_id)["platform_message_id"]
    mid = delivery(view, on_instagram.user_id)["platform_message_id"]
    phone_number_id, app_secret = channels.whatsapp["phone_number_id"], channels.whatsapp["app_secret"]

    def whatsapp_reports(status: str) -> None:
        body = status_webhook(phone_number_id, wamid, status, str(on_whatsapp.address))
        assert post_webhook(api, body, sign(app_secret, body)) == 200

    # WhatsApp delivered, Instagram still SENT: the message is SENT
    whatsapp_reports("delivered")
    view = wait_for(api, accepted["message_id"], delivery_is(on_whatsapp.user_id, "DELIVERED"), "DELIVERED")
    assert view["status"] == "SENT"
    # Instagram read: every live delivery has reached DELIVERED at least
    read = read_webhook(channels.instagram["ig_user_id"], str(on_instagram.address), mid)
    assert post_instagram(api, read, sign(channels.instagram["app_secret"], read)) == 200
    wait_for(api, accepted["message_id"], lambda v: v["status"] == "DELIVERED", "the message DELIVERED")
    # WhatsApp read: READ, though one delivery FAILED
    whatsapp_reports("read")
    view = wait_for(api, accepted["message_id"], lambda v: v["status"] == "READ", "the message READ")
    assert view["delivery_counts"] == {"PENDING": 0, "SENT": 0, "DELIVERED": 0, "READ": 2, "FAILED": 1}
    status = api.call("GET", f"/v1/messages/{accepted['message_id']}/status").json()
    assert [e["status"] for e in status["history"]] == ["PENDING", "SENT", "DELIVERED", "READ"]
    assert status["status"] == "READ"


def test_a_group_whose_every_delivery_fails_is_failed(api: Api, channels: Channels) -> None:
    # GIVEN a group whose recipients are reachable nowhere
    lost = group(api, channels, [member(api, None), member(api, None)])
    accepted = send(api, lost, "nobody hears this")
    view = wait_settled(api, [accepted["message_id"]])[accepted["message_id"]]
    # THEN every delivery FAILED with its reason, and so did the message (FAILED only when all failed)
    assert view["delivery_counts"]["FAILED"] == 2
    assert all(d["history"][-1].get("detail") for d in view["deliveries"]), view
    wait_for(api, accepted["message_id"], lambda v: v["status"] == "FAILED", "the message FAILED")


# ---------------------------------------------------------------------------------------------- join point
def test_a_participant_gets_what_came_after_it_joined_and_nothing_after_it_left(
    api: Api, channels: Channels, platforms: Platforms
) -> None:
    # GIVEN a group of an agent, a WhatsApp customer (who will leave) and an Instagram customer
    leaver, stayer = member(api, "WHATSAPP"), member(api, "INSTAGRAM")
    chat = group(api, channels, [leaver, stayer])
    tag = uuid.uuid4().hex[:8]
    accepted = [send(api, chat, f"join {tag} #{n}") for n in range(1, 4)]
    # WHEN an agent on Telegram joins after message 3 was accepted
    joiner = member(api, "TELEGRAM", user_type="AGENT", with_key=True)
    path = f"/v1/conversations/{chat.conversation_id}/participants"
    assert api.call("POST", path, json={"user_id": joiner.user_id}).status_code == 201
    accepted += [send(api, chat, f"join {tag} #{n}") for n in range(4, 6)]
    # AND the WhatsApp customer is removed after message 5
    assert api.call("DELETE", f"{path}/{leaver.user_id}").status_code == 204
    accepted += [send(api, chat, f"join {tag} #{n}") for n in range(6, 8)]
    views = wait_settled(api, [a["message_id"] for a in accepted])

    # THEN each message's recipients are the participants as they were when it was accepted
    recipients = [sorted(d["user_id"] for d in views[a["message_id"]]["deliveries"]) for a in accepted]
    assert recipients[:3] == [sorted([leaver.user_id, stayer.user_id])] * 3
    assert recipients[3:5] == [sorted([leaver.user_id, stayer.user_id, joiner.user_id])] * 2
    assert recipients[5:] == [sorted([stayer.user_id, joiner.user_id])] * 2
    # AND at the platforms: the joiner got 4 and later, never 1-3; the leaver 1-5 only; the stayer all, in order
    # (every delivery of message 7 is settled: the leaver is no recipient of it, nothing more is coming for them)
    all_texts = texts(accepted)
    assert platforms.wait_received(stayer, 7) == all_texts
    assert platforms.wait_received(joiner, 4) == all_texts[3:]
    assert platforms.wait_received(leaver, 5) == all_texts[:5]
    # AND the history the joiner reads with its own key starts at its join point
    page = api.call("GET", f"/v1/conversations/{chat.conversation_id}/messages?limit=50", key=joiner.key)
    assert page.status_code == 200, page.text
    assert [item["content"] for item in page.json()["items"]] == all_texts[3:]
    # it reads a message it received, with its deliveries
    assert delivery(message(api, accepted[3]["message_id"], key=joiner.key), joiner.user_id)["status"] == "SENT"


# ---------------------------------------------------------------------------------------------- races
def test_eight_clients_sending_to_a_group_of_ten_each_recipient_gets_every_message_once_in_order(
    api: Api, channels: Channels, platforms: Platforms
) -> None:
    # GIVEN a group of ten: an agent and three customers on each platform
    recipients = [member(api, p) for p in ("WHATSAPP", "TELEGRAM", "INSTAGRAM") for _ in range(3)]
    ten = group(api, channels, recipients)
    tag = uuid.uuid4().hex[:8]

    # WHEN eight clients send ten messages each, all at once
    def client(number: int) -> list[dict[str, Any]]:
        return [send(api, ten, f"race {tag} c{number} m{n}") for n in range(10)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        accepted = [a for batch in pool.map(client, range(8)) for a in batch]

    # THEN the sequences are 1..80, and every recipient got all 80, each once, in sequence order
    assert sorted(a["sequence"] for a in accepted) == list(range(1, 81))
    for recipient in recipients:
        got = platforms.wait_received(recipient, 80, timeout=240)
        assert got == texts(accepted), (recipient, len(got))
    views = wait_settled(api, [a["message_id"] for a in accepted], timeout=240)
    for view in views.values():
        assert view["delivery_counts"]["SENT"] == 9, view
    # no platform got a second request for anything (nothing retried, nothing repeated)
    for recipient in recipients:
        assert len(platforms.requests(recipient)) == 80, recipient


# ---------------------------------------------------------------------------------------------- isolation
def test_a_failing_platform_holds_back_no_other_recipient(
    api: Api, channels: Channels, platforms: Platforms, fake_whatsapp: FakeWhatsApp
) -> None:
    # GIVEN a group with a recipient on each platform
    on_whatsapp, on_telegram, on_instagram = (member(api, p) for p in ("WHATSAPP", "TELEGRAM", "INSTAGRAM"))
    chat = group(api, channels, [on_whatsapp, on_telegram, on_instagram])
    others = (on_telegram.user_id, on_instagram.user_id)

    def accept_to_sent(accepted: list[dict[str, Any]]) -> list[float]:
        """Accept-to-SENT of the Telegram and Instagram deliveries, waited for, from the API's own times."""
        samples = []
        for a in accepted:
            view = wait_for(
                api,
                a["message_id"],
                lambda v: all(delivery_is(u, "SENT")(v) for u in others),
                "Telegram and Instagram SENT",
            )
            samples += [seconds_between(view["created_at"], sent_at(delivery(view, u))) for u in others]
        return samples

    # the same run without the outage: 20 messages, as fast as they are accepted
    tag = uuid.uuid4().hex[:8]
    calm = [send(api, chat, f"calm {tag} #{n}") for n in range(20)]
    calm_p95 = percentile(accept_to_sent(calm), 0.95)
    wait_settled(api, [a["message_id"] for a in calm])
    assert platforms.wait_received(on_whatsapp, 20) == texts(calm)

    # WHEN the WhatsApp-format server answers 500 to everything for a while, and 20 more messages go out
    fake_whatsapp.fault(OUTAGE_SECONDS, status=500)
    outage_started = time.monotonic()
    try:
        stormy = [send(api, chat, f"storm {tag} #{n}") for n in range(20)]
        # THEN Telegram and Instagram deliveries are all SENT, in order, as fast as without the outage
        stormy_p95 = percentile(accept_to_sent(stormy), 0.95)
        assert time.monotonic() - outage_started < OUTAGE_SECONDS, "the other platforms waited for the outage"
        for recipient in (on_telegram, on_instagram):
            assert platforms.wait_received(recipient, 40) == texts(calm) + texts(stormy)
        assert stormy_p95 <= 2 * calm_p95, (stormy_p95, calm_p95)
        # AND WhatsApp's deliveries settle: SENT in order after it recovers, or FAILED after their 3 attempts
        views = wait_settled(api, [a["message_id"] for a in stormy], timeout=OUTAGE_SECONDS + 240)
    finally:
        fake_whatsapp.fault(0)
    answered: dict[str, list[int]] = {}
    for request in fake_whatsapp.sent_to(str(on_whatsapp.address)):
        answered.setdefault(request.body["text"]["body"], []).append(request.answered)
    outcomes = []
    for a in stormy:
        item = delivery(views[a["message_id"]], on_whatsapp.user_id)
        answers = answered.get(a["content"], [])
        assert answers.count(200) <= 1, (a["content"], answers)  # never twice
        if item["status"] == "FAILED":  # after its 3 attempts, each refused
            assert answers.count(200) == 0 and len(answers) == 3, (a["content"], answers, item)
            assert item["history"][-1].get("detail"), item
        else:
            assert answers.count(200) == 1 and len(answers) <= 3, (a["content"], answers, item)
        outcomes.append(item["status"])
    # the figures, for the record (pytest -s)
    whatsapp_outcomes = {status: outcomes.count(status) for status in sorted(set(outcomes))}
    print(f"accept-to-SENT p95: calm {calm_p95 * 1000:.0f} ms, outage {stormy_p95 * 1000:.0f} ms; {whatsapp_outcomes}")
    assert platforms.received(on_whatsapp)[20:] == [
        a["content"] for a, status in zip(stormy, outcomes, strict=True) if status != "FAILED"
    ]
