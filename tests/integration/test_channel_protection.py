"""Channels protect each other and obey their platforms (issue 17), against the real stack and the platforms'
format servers: a WhatsApp outage costs Telegram and Instagram nothing and WhatsApp only the breaker's probes;
a channel set to 5 messages a second is never called faster."""

from __future__ import annotations

import math
import random
import statistics
import threading
import time
import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any

import pytest

from chat4all.adapters.breakers import FAILURE_THRESHOLD, OPEN_SECONDS
from tests.integration.test_channels import agent, disable, instagram_channel, send, telegram_channel, wait_until
from tests.integration.test_group_engine import customer

if TYPE_CHECKING:
    from tests.integration.conftest import Api
    from tests.support.fake_instagram import FakeInstagram
    from tests.support.fake_telegram import FakeTelegram
    from tests.support.fake_whatsapp import FakeWhatsApp, RecordedRequest

OUTAGE_SECONDS = 60.0
PER_CONVERSATION = 4  # messages per Telegram / Instagram conversation in each run


def whatsapp_line(api: Api, rate_limit: int | None = None) -> str:
    credentials = {
        "access_token": f"EAAG-{uuid.uuid4().hex}",
        "phone_number_id": str(random.randrange(10**14, 10**15)),
        "app_secret": uuid.uuid4().hex,
        "verify_token": uuid.uuid4().hex,
    }
    body: dict[str, Any] = {"platform": "WHATSAPP", "name": "protected line", "credentials": credentials}
    if rate_limit is not None:
        body["rate_limit"] = rate_limit
    channel = api.created("/v1/channels", body)
    assert channel["rate_limit"] == (rate_limit or 80)
    return str(channel["channel_id"])


def conversation(api: Api, agent_id: str, customer_id: str, platform: str, channel_id: str) -> str:
    body = {
        "conversation_type": "ONE_TO_ONE",
        "participants": [agent_id, customer_id],
        "primary_channel": platform,
        "channel_id": channel_id,
    }
    return str(api.created("/v1/conversations", body)["conversation_id"])


def settled(api: Api, message_id: str) -> dict[str, Any] | None:
    body = api.call("GET", f"/v1/messages/{message_id}/status").json()
    return body if body.get("status") in ("SENT", "FAILED") else None


def accept_to_sent(api: Api, message_ids: list[str]) -> list[float]:
    """Each message's seconds from acceptance (its PENDING entry) to SENT, from the platform's own history."""
    seconds = []
    for message_id in message_ids:
        body = wait_until(lambda m=message_id: settled(api, m), timeout=90)
        assert body["status"] == "SENT", body
        at = {h["status"]: datetime.fromisoformat(h["at"]) for h in body["history"]}
        seconds.append((at["SENT"] - at["PENDING"]).total_seconds())
    return seconds


# A platform that held the others back would slow every sample by its seconds of retries, or hold one until the
# breaker's 15 s or the outage's 60 s are over. So the median is compared, not the p95: of 24 samples the p95 lies
# between the two largest, and one or two containers started or descheduled on this 2-core machine move it by
# themselves (seen: 0.87 s among ~0.03 s samples; in a full-suite run, 1.87 s and 1.12 s among ~0.06 s ones).
SCHEDULING_SLACK_SECONDS = 0.25
HELD_BACK_SECONDS = 10.0


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[-1]


def send_paced(api: Api, agent_id: str, conversations: list[str], label: str) -> list[str]:
    """PER_CONVERSATION messages to each conversation, one round every 0.5 s, as an agent typing to several people."""
    sent = []
    for n in range(PER_CONVERSATION):
        for conversation_id in conversations:
            sent.append(send(api, conversation_id, agent_id, f"{label} {n}"))
        time.sleep(0.5)
    return sent


def test_a_whatsapp_outage_costs_telegram_and_instagram_nothing_and_whatsapp_only_probes(
    api: Api, fake_whatsapp: FakeWhatsApp, fake_telegram: FakeTelegram, fake_instagram: FakeInstagram
) -> None:
    agent_id = agent(api)
    wa_channel = whatsapp_line(api)
    tg_channel, _ = telegram_channel(api)
    ig_channel, _ = instagram_channel(api, fake_instagram)
    phones = ["55119" + str(random.randrange(10**7, 10**8)) for _ in range(3)]
    on_whatsapp = [
        conversation(api, agent_id, customer(api, f"W{n}", "WHATSAPP", phone), "WHATSAPP", wa_channel)
        for n, phone in enumerate(phones)
    ]
    others = [
        conversation(
            api,
            agent_id,
            customer(api, f"T{n}", "TELEGRAM", str(random.randrange(10**8, 10**9))),
            "TELEGRAM",
            tg_channel,
        )
        for n in range(3)
    ] + [
        conversation(
            api,
            agent_id,
            customer(api, f"I{n}", "INSTAGRAM", str(random.randrange(10**15, 10**16))),
            "INSTAGRAM",
            ig_channel,
        )
        for n in range(3)
    ]

    # warm: a message on each conversation first, so that neither run pays the functions' cold starts
    accept_to_sent(api, [send(api, c, agent_id, "warm") for c in others])
    # a run without the outage, then the same traffic with the WhatsApp-format server answering 500 for 60 s
    calm = accept_to_sent(api, send_paced(api, agent_id, others, "calm"))
    outage_started = time.monotonic()
    fake_whatsapp.fault(OUTAGE_SECONDS, status=500)
    waiting: dict[str, list[tuple[str, str]]] = {phone: [] for phone in phones}
    for n in range(3):
        for phone, conversation_id in zip(phones, on_whatsapp, strict=True):
            text = f"wa {n}"
            waiting[phone].append((send(api, conversation_id, agent_id, text), text))
    stormy = accept_to_sent(api, send_paced(api, agent_id, others, "stormy"))
    print(f"Telegram+Instagram accept-to-SENT p95: calm {p95(calm):.3f} s, WhatsApp outage {p95(stormy):.3f} s")
    median = statistics.median
    if median(stormy) > 1.5 * median(calm) + SCHEDULING_SLACK_SECONDS or max(stormy) > HELD_BACK_SECONDS:
        fake_whatsapp.fault(0)  # end the outage now: later tests share this server
        pytest.fail(f"Telegram/Instagram slowed by the WhatsApp outage: {calm} vs {stormy}")

    # every WhatsApp message goes out once the outage ends, in order, none twice; FAILED only with no attempt left
    every = [m for phone in phones for m, _ in waiting[phone]]
    wait_until(lambda: all(settled(api, m) for m in every), timeout=OUTAGE_SECONDS + 90)
    calls = [r for phone in phones for r in fake_whatsapp.sent_to(phone)]
    refused = [r for r in calls if r.answered == 500]
    # while the breaker is open only its probes reach the platform: one per OPEN_SECONDS (and at most the
    # conversations' calls already under way when it opened)
    allowed = FAILURE_THRESHOLD + len(phones) + math.ceil(OUTAGE_SECONDS / OPEN_SECONDS) + 1
    print(f"WhatsApp calls during the outage: {len(refused)} (allowed {allowed}); total calls {len(calls)}")
    assert len(refused) <= allowed, len(refused)
    for phone in phones:
        statuses = {m: settled(api, m) for m, _ in waiting[phone]}
        for body in statuses.values():
            assert body is not None
            if body["status"] == "FAILED":
                assert "gave up after 3 attempts" in body["history"][-1]["detail"], body
        delivered = [r.body["text"]["body"] for r in fake_whatsapp.sent_to(phone) if r.answered == 200]
        expected = [text for m, text in waiting[phone] if statuses[m]["status"] == "SENT"]  # type: ignore[index]
        assert delivered == expected, (phone, delivered, expected)
    assert time.monotonic() - outage_started >= OUTAGE_SECONDS or not refused
    for channel_id in (wa_channel, tg_channel, ig_channel):
        disable(api, channel_id)


def test_a_channel_at_5_messages_a_second_is_called_no_faster(api: Api, fake_whatsapp: FakeWhatsApp) -> None:
    agent_id = agent(api)
    channel_id = whatsapp_line(api, rate_limit=5)
    phone = "55119" + str(random.randrange(10**7, 10**8))
    conversation_id = conversation(api, agent_id, customer(api, "Rita", "WHATSAPP", phone), "WHATSAPP", channel_id)
    arrivals: list[float] = []
    lock = threading.Lock()
    previous = fake_whatsapp.on_request

    def arrived(request: RecordedRequest) -> None:
        if request.body.get("to") == phone:
            with lock:
                arrivals.append(time.monotonic())
        if previous is not None:
            previous(request)

    fake_whatsapp.on_request = arrived
    try:
        texts = [f"rate {n}" for n in range(200)]
        for text in texts:
            send(api, conversation_id, agent_id, text)
        delivered = fake_whatsapp.wait_for(phone, 200, timeout=120)
    finally:
        fake_whatsapp.on_request = previous
    assert [r.body["text"]["body"] for r in fake_whatsapp.sent_to(phone)] == texts  # all, in order, once each
    assert [r.answered for r in delivered] == [200] * 200
    # at most 5 in any one second, and the bucket's burst (a tenth of a second's calls: 1) on top
    windows = [sum(1 for t in arrivals if start <= t < start + 1.0) for start in arrivals]
    after_burst = [w for start, w in zip(arrivals, windows, strict=True) if start >= arrivals[0] + 1.0]
    rate = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
    print(
        f"rate-limited channel: busiest second {max(windows)} calls (after the first second {max(after_burst)}),"
        f" {rate:.2f} calls/s overall over {arrivals[-1] - arrivals[0]:.1f} s"
    )
    assert max(windows) <= 6
    assert max(after_burst) <= 6
    assert rate <= 5.25
    disable(api, channel_id)
