"""The load generator of bench/load.py, in a process of its own so that its CPU is not counted as the stack's.

`python -m bench.load_client PLAN.json RESULT.json` runs one phase of the plan and writes what it saw:

- `mix`: k6's constant-arrival-rate executor as the seed's target-10k-rpm.js used it: iterations start at a
  fixed rate whether or not earlier ones finished, each needs one of `vus` virtual users, and an iteration
  that finds none free is dropped and counted, never queued. The mix: 50% POST /v1/messages, 30% a history
  page of 50, 15% GET /health, 5% a signed inbound WhatsApp webhook.
- `hot`: `clients` clients sending back to back to one conversation for `duration` seconds.
- `keepalive`: `requests` sequential GET /health, then as many history pages of 50, on one kept-alive
  connection each.

It prints `START` when the measured phase begins and `END` when it is over (bench/load.py reads them to take
its CPU samples). Traffic goes to the plan's loopback URLs only.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import random
import sys
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from tests.support.fake_whatsapp import message_webhook, sign

MIX = (("send", 50), ("history", 30), ("health", 15), ("webhook", 5))
REQUEST_TIMEOUT_SECONDS = 60.0  # k6's default


class Recorder:
    def __init__(self) -> None:
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.statuses: dict[str, Counter[str]] = defaultdict(Counter)
        self.accepted: list[dict[str, Any]] = []

    def record(self, operation: str, started: float, status: str) -> None:
        self.latencies[operation].append(time.perf_counter() - started)
        self.statuses[operation][status] += 1


class Traffic:
    """The requests of the mix, against the conversations the plan set up."""

    def __init__(self, plan: dict[str, Any], session: aiohttp.ClientSession, recorder: Recorder) -> None:
        self.plan = plan
        self.session = session
        self.recorder = recorder
        self.url = plan["api_url"]
        self.auth = {"Authorization": f"Bearer {plan['admin_key']}"}
        self.random = random.Random(plan.get("seed", 7))  # noqa: S311 - a load mix, not a secret
        self.sent = 0

    async def _request(self, operation: str, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        started = time.perf_counter()
        try:
            async with self.session.request(method, self.url + path, **kwargs) as response:
                body = await response.read()
                self.recorder.record(operation, started, str(response.status))
                return response.status, body
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.recorder.record(operation, started, type(exc).__name__)
            return 0, None

    async def send(self, conversation: dict[str, Any], label: str) -> None:
        self.sent += 1
        content = f"bench {label} {self.sent} {uuid.uuid4().hex[:12]}"
        body = {"conversation_id": conversation["conversation_id"], "sender_id": conversation["agent_id"]}
        body["content"] = content
        status, answer = await self._request("send", "POST", "/v1/messages", json=body, headers=self.auth)
        if status == 202:
            accepted = json.loads(answer)
            self.recorder.accepted.append(
                {
                    "conversation_id": conversation["conversation_id"],
                    "recipient": conversation["customer_phone"],
                    "message_id": accepted["message_id"],
                    "sequence": accepted["sequence"],
                    "content": content,
                }
            )

    async def history(self, conversation: dict[str, Any]) -> None:
        path = f"/v1/conversations/{conversation['conversation_id']}/messages?limit=50"
        await self._request("history", "GET", path, headers=self.auth)

    async def health(self) -> None:
        await self._request("health", "GET", "/health")

    async def webhook(self, conversation: dict[str, Any]) -> None:
        channel = self.plan["channel"]
        raw = message_webhook(
            channel["phone_number_id"],
            f"wamid.bench.{uuid.uuid4().hex}",
            conversation["customer_phone"],
            "Bench Customer",
            "an inbound message",
        )
        headers = {"X-Hub-Signature-256": sign(channel["app_secret"], raw), "Content-Type": "application/json"}
        await self._request("webhook", "POST", "/webhooks/whatsapp", data=raw, headers=headers)

    async def iteration(self) -> None:
        operation = self.random.choices([m[0] for m in MIX], weights=[m[1] for m in MIX])[0]
        conversation = self.random.choice(self.plan["conversations"])
        if operation == "send":
            await self.send(conversation, "mix")
        elif operation == "history":
            await self.history(conversation)
        elif operation == "health":
            await self.health()
        else:
            await self.webhook(conversation)


async def constant_arrival_rate(plan: dict[str, Any], traffic: Traffic) -> dict[str, Any]:
    rate, duration, vus = float(plan["rate"]), float(plan["duration"]), int(plan["vus"])
    loop = asyncio.get_running_loop()
    free = vus
    dropped = started = 0
    running: set[asyncio.Task[None]] = set()

    async def run_one() -> None:
        nonlocal free
        try:
            await traffic.iteration()
        finally:
            free += 1

    print("START", flush=True)
    begin = loop.time()
    due_count = int(rate * duration)
    issued = 0
    while issued < due_count:
        due = begin + issued / rate
        now = loop.time()
        if due > now:
            await asyncio.sleep(due - now)
            continue
        issued += 1
        if free == 0:
            dropped += 1  # k6: no free VU at the scheduled time, the iteration is dropped
            continue
        free -= 1
        started += 1
        task = asyncio.create_task(run_one())
        running.add(task)
        task.add_done_callback(running.discard)
    issuing_seconds = loop.time() - begin
    await asyncio.gather(*running)
    elapsed = loop.time() - begin
    print("END", flush=True)
    return {
        "offered": due_count,
        "started": started,
        "dropped": dropped,
        "issuing_seconds": issuing_seconds,
        "elapsed_seconds": elapsed,
    }


async def hot_conversation(plan: dict[str, Any], traffic: Traffic) -> dict[str, Any]:
    conversation = plan["hot_conversation"]
    clients, duration = int(plan["clients"]), float(plan["duration"])
    print("START", flush=True)
    begin = time.monotonic()

    async def client() -> None:
        while time.monotonic() - begin < duration:
            await traffic.send(conversation, "hot")

    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.monotonic() - begin
    print("END", flush=True)
    return {"clients": clients, "elapsed_seconds": elapsed}


def keepalive(plan: dict[str, Any]) -> dict[str, Any]:
    """Sequential requests on one connection each: what a kept-alive connection adds to /health and a history page."""
    address = urlsplit(plan["api_url"])
    auth = {"Authorization": f"Bearer {plan['admin_key']}"}
    conversation = plan["conversations"][0]["conversation_id"]
    timings: dict[str, list[float]] = {}
    for name, path, headers in (
        ("health", "/health", {}),
        ("history", f"/v1/conversations/{conversation}/messages?limit=50", auth),
    ):
        connection = http.client.HTTPConnection(address.hostname or "127.0.0.1", address.port, timeout=30)
        samples = []
        for _ in range(int(plan["requests"])):
            started = time.perf_counter()
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            response.read()
            samples.append(time.perf_counter() - started)
            if response.status != 200:
                raise RuntimeError(f"{path} answered {response.status}")
        connection.close()
        timings[name] = samples
    return {"latencies": timings}


async def run_async(plan: dict[str, Any]) -> dict[str, Any]:
    recorder = Recorder()
    connector = aiohttp.TCPConnector(limit=int(plan.get("vus", 200)), limit_per_host=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        traffic = Traffic(plan, session, recorder)
        if plan["mode"] == "mix":
            summary = await constant_arrival_rate(plan, traffic)
        else:
            summary = await hot_conversation(plan, traffic)
    return {
        **summary,
        "latencies": recorder.latencies,
        "statuses": {op: dict(counts) for op, counts in recorder.statuses.items()},
        "accepted": recorder.accepted,
    }


def main() -> None:
    plan = json.loads(Path(sys.argv[1]).read_text())
    result = keepalive(plan) if plan["mode"] == "keepalive" else asyncio.run(run_async(plan))
    Path(sys.argv[2]).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
