"""GROUP fan-out: `python -m bench.groups [--recipients 99] [--messages 50]`.

Starts the whole platform as `make test` does (own servers, fresh databases) with the three platform-format
servers of tests/support, each as a process of its own (so neither they nor the sender are counted as the
stack), makes one GROUP of an agent and `--recipients` customers spread evenly over WhatsApp, Telegram and
Instagram (100 people: the contract's largest group, the issue's normal case), and sends `--messages`
messages from the agent as fast as they are accepted (one client, back to back). Then it waits until every
delivery is settled and reports:

- accept-to-every-delivery-SENT per message, p50/p95 (from the API's own times: the message's `created_at`,
  each delivery's SENT entry), and deliveries per second (first accept to last SENT);
- CPU per delivery by process (from /proc, bench/load.py's helpers: from the first send until the last
  delivery settled), Lambda invocations per delivery by function (bench/load.py's count_invocations), AWS calls
  per delivery as LocalStack's request log counts them (target: at most 0.3);
- with `--mongo-operations` (default on), MongoDB operations per delivery from SecantusDB's profiler, in a
  second pass of its own (`--profiled-messages`; the profiler costs the server several times the CPU).

It prints Markdown for docs/BENCHMARKS.md. All traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx

from bench.load import Meter, WhatsAppServer, count_invocations, percentile
from devstack.stack import throwaway_platform

if TYPE_CHECKING:
    from devstack.stack import LocalPlatform

PLATFORMS = ("WHATSAPP", "TELEGRAM", "INSTAGRAM")
SETTLED = {"SENT", "DELIVERED", "READ", "FAILED"}
DRAIN_TIMEOUT_SECONDS = 600.0


class FormatServer:
    """A platform-format server of tests/support run as `python -m <module> 0 [args]`: its URL from the first
    line it prints; nothing else is read from it."""

    def __init__(self, module: str, *args: str) -> None:
        self.process = subprocess.Popen(  # noqa: S603 - this interpreter, this repository's module
            [sys.executable, "-u", "-m", module, "0", *args],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert self.process.stdout is not None
        self.url = self.process.stdout.readline().strip().split("=", 1)[1]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


# ------------------------------------------------------------------ set-up


def set_up(platform: LocalPlatform, recipients: int, instagram: dict[str, str]) -> dict[str, Any]:
    """The three channels (the only enabled one of each platform) and the group; its members by platform."""
    headers = {"Authorization": f"Bearer {platform.admin_api_key}"}
    with httpx.Client(base_url=platform.api_url, headers=headers, timeout=60) as api:

        def created(path: str, body: dict[str, Any]) -> dict[str, Any]:
            response = api.post(path, json=body)
            if response.status_code != 201:
                raise RuntimeError(f"{path}: {response.status_code} {response.text}")
            return dict(response.json())

        whatsapp = {
            "access_token": "EAAG-bench",
            "phone_number_id": "106540352242922",
            "app_secret": uuid.uuid4().hex,
            "verify_token": "vt",
        }
        telegram = {
            "bot_token": f"{random.randrange(10**9, 10**10)}:AAH{uuid.uuid4().hex}",  # noqa: S311 - an id
            "secret_token": f"tg_{uuid.uuid4().hex}",
        }
        for platform_name, credentials in (("WHATSAPP", whatsapp), ("TELEGRAM", telegram), ("INSTAGRAM", instagram)):
            body = {"platform": platform_name, "name": f"bench {platform_name.lower()}", "credentials": credentials}
            created("/v1/channels", body)

        def member(n: int) -> dict[str, Any]:
            platform_name = PLATFORMS[n % len(PLATFORMS)]
            address = {
                "WHATSAPP": f"5531{n:04d}{uuid.uuid4().int % 10**5:05d}",
                "TELEGRAM": str(10**8 + n),
                "INSTAGRAM": str(10**15 + n),
            }[platform_name]
            user = created("/v1/users", {"display_name": f"Member {n}", "user_type": "CUSTOMER"})["user_id"]
            created(f"/v1/users/{user}/identities", {"platform": platform_name, "platform_user_id": address})
            return {"user_id": user, "platform": platform_name, "address": address}

        agent = created("/v1/users", {"display_name": "Bench agent", "user_type": "AGENT"})["user_id"]
        with ThreadPoolExecutor(max_workers=8) as pool:
            members = list(pool.map(member, range(recipients)))
        body = {
            "conversation_type": "GROUP",
            "participants": [agent, *(m["user_id"] for m in members)],
            "primary_channel": "WHATSAPP",
        }
        conversation_id = created("/v1/conversations", body)["conversation_id"]
    return {"conversation_id": conversation_id, "agent_id": agent, "members": members}


# ------------------------------------------------------------------ one pass


@dataclass
class Pass:
    messages: list[dict[str, Any]]  # GET /v1/messages/{id} of each, settled
    seconds: float  # first send to the last delivery settled (as this client saw it)
    cpu: dict[str, float] = field(default_factory=dict)
    localstack_calls: Counter[str] = field(default_factory=Counter)
    invocations: Counter[str] = field(default_factory=Counter)
    mongo_operations: Counter[str] = field(default_factory=Counter)

    @property
    def deliveries(self) -> int:
        return sum(len(m["deliveries"]) for m in self.messages)


def settled(view: dict[str, Any]) -> bool:
    deliveries = view.get("deliveries") or []
    return bool(deliveries) and all(d["status"] in SETTLED for d in deliveries)


def send_and_settle(platform: LocalPlatform, group: dict[str, Any], count: int, label: str) -> Pass:
    """`count` messages back to back, then wait until the last one's deliveries are settled: a recipient's
    lane sends message n+1 only after n is settled, so then every earlier one is too (checked afterwards)."""
    headers = {"Authorization": f"Bearer {platform.admin_api_key}"}
    with httpx.Client(base_url=platform.api_url, headers=headers, timeout=60) as api:
        api.get("/health").raise_for_status()  # the connection is open before the measurement
        started = time.monotonic()
        ids = []
        for n in range(count):
            body = {
                "conversation_id": group["conversation_id"],
                "sender_id": group["agent_id"],
                "content": f"{label} {n} {uuid.uuid4().hex[:8]}",
            }
            response = api.post("/v1/messages", json=body)
            if response.status_code != 202:
                raise RuntimeError(f"send: {response.status_code} {response.text}")
            ids.append(response.json()["message_id"])
        deadline = time.monotonic() + DRAIN_TIMEOUT_SECONDS
        while not settled(api.get(f"/v1/messages/{ids[-1]}").json()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the last message's deliveries were not settled in {DRAIN_TIMEOUT_SECONDS} s")
            time.sleep(0.5)
        seconds = time.monotonic() - started
        time.sleep(1.0)  # the lanes' unmarks and the events' publication follow the last SENT
        views = [api.get(f"/v1/messages/{message_id}").json() for message_id in ids]
    unsettled = [v["message_id"] for v in views if not settled(v)]
    if unsettled:
        raise RuntimeError(f"settled after the last message: {unsettled}")
    return Pass(views, seconds)


def measured(platform: LocalPlatform, group: dict[str, Any], count: int) -> Pass:
    meter = Meter(platform)
    result = send_and_settle(platform, group, count, "bench")
    usage = meter.read()
    result.cpu, result.localstack_calls, result.invocations = usage.cpu, usage.aws_calls, usage.invocations
    return result


def profiled(platform: LocalPlatform, group: dict[str, Any], count: int) -> Pass:
    """The same again with SecantusDB's profiler on: MongoDB operations by kind and collection."""
    from chat4all import bootstrap  # the layer is importable once the platform is up

    database = bootstrap.mongo().client[bootstrap.mongo().name]
    started = datetime.now(UTC)
    database.command("profile", 2)
    try:
        result = send_and_settle(platform, group, count, "profiled")
    finally:
        database.command("profile", 0)
    result.mongo_operations = Counter(
        f"{entry['op']} {entry.get('ns', '').split('.', 1)[-1]}"
        for entry in database.system.profile.find({"ts": {"$gte": started}})
        if entry.get("command", {}).get("profile") is None
    )
    return result


# ------------------------------------------------------------------ figures


def seconds_between(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def sent_at(delivery: dict[str, Any]) -> str | None:
    return next((e["at"] for e in delivery["history"] if e["status"] == "SENT"), None)


def report(result: Pass, profile: Pass | None, group: dict[str, Any]) -> None:
    deliveries = max(1, result.deliveries)
    statuses = Counter(d["status"] for m in result.messages for d in m["deliveries"])
    latencies = []
    last_sent = []
    for view in result.messages:
        sent = [at for d in view["deliveries"] if (at := sent_at(d))]
        if sent and len(sent) == len(view["deliveries"]):
            latencies.append(seconds_between(view["created_at"], max(sent)))
        last_sent += sent
    span = seconds_between(min(m["created_at"] for m in result.messages), max(last_sent)) if last_sent else 0.0
    by_platform = Counter(m["platform"] for m in group["members"])
    print(
        f"\n### GROUP fan-out: {len(group['members']) + 1} participants "
        f"({', '.join(f'{p} {n}' for p, n in sorted(by_platform.items()))}), {len(result.messages)} messages\n"
    )
    print(
        f"deliveries: {result.deliveries} ({dict(statuses)}); accept-to-every-delivery-SENT p50 "
        f"{percentile(latencies, 0.5):.0f} ms, p95 {percentile(latencies, 0.95):.0f} ms, max "
        f"{percentile(latencies, 1.0):.0f} ms ({len(latencies)} messages all SENT); "
        f"{result.deliveries / span if span else 0:.1f} deliveries/s (first accept to last SENT, {span:.1f} s); "
        f"the client saw the last settled after {result.seconds:.1f} s\n"
    )
    total = sum(result.cpu.values())
    print("| process | CPU s | ms per delivery |")
    print("| --- | --- | --- |")
    for name, seconds in sorted(result.cpu.items(), key=lambda item: -item[1]):
        if seconds > 0:
            print(f"| {name} | {seconds:.2f} | {seconds * 1000 / deliveries:.2f} |")
    print(f"| **all** | {total:.2f} | **{total * 1000 / deliveries:.2f}** |")
    calls = sum(result.localstack_calls.values())
    detail = ", ".join(f"{op} {n}" for op, n in result.localstack_calls.most_common())
    print(f"\nAWS calls (LocalStack's request log): {calls}, **{calls / deliveries:.3f} per delivery**: {detail}")
    invoked = sum(result.invocations.values())
    detail = ", ".join(f"{function} {n} ({n / deliveries:.3f})" for function, n in result.invocations.most_common())
    print(f"\nLambda invocations: {invoked}, {invoked / deliveries:.3f} per delivery: {detail}")
    if profile is not None:
        profiled_deliveries = max(1, profile.deliveries)
        operations = sum(profile.mongo_operations.values())
        detail = ", ".join(
            f"{name} {n / profiled_deliveries:.2f}" for name, n in profile.mongo_operations.most_common()
        )
        print(
            f"\nMongoDB operations ({len(profile.messages)} messages, {profile.deliveries} deliveries, profiler "
            f"on): {operations}, **{operations / profiled_deliveries:.2f} per delivery**: {detail}"
        )
    print(flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--recipients", type=int, default=99, help="customers in the group besides the agent")
    parser.add_argument("--messages", type=int, default=50)
    parser.add_argument("--profiled-messages", type=int, default=10, help="messages of the profiler's pass")
    parser.add_argument("--no-mongo-operations", action="store_true", help="skip the profiler's pass")
    arguments = parser.parse_args()
    count_invocations()
    instagram = {
        "access_token": f"IGAA{uuid.uuid4().hex}",
        "ig_user_id": "17841400000000001",
        "app_secret": uuid.uuid4().hex,
        "verify_token": "vt",
    }
    whatsapp = WhatsAppServer()
    telegram = FormatServer("tests.support.fake_telegram")
    instagram_server = FormatServer("tests.support.fake_instagram", instagram["access_token"], instagram["ig_user_id"])
    bases = {
        "WHATSAPP_API_BASE": whatsapp.url,
        "TELEGRAM_API_BASE": telegram.url,
        "INSTAGRAM_API_BASE": instagram_server.url,
    }
    try:
        with throwaway_platform("groups", bases) as platform:
            group = set_up(platform, arguments.recipients, instagram)
            print(f"group of {arguments.recipients + 1} set up; sending", file=sys.stderr, flush=True)
            send_and_settle(platform, group, 2, "warm-up")  # containers started, connections open
            result = measured(platform, group, arguments.messages)
            profile = None
            if not arguments.no_mongo_operations:
                profile = profiled(platform, group, arguments.profiled_messages)
            report(result, profile, group)
    finally:
        for server in (whatsapp, telegram, instagram_server):
            server.close()


if __name__ == "__main__":
    main()
