"""What each kind of request costs: `python -m bench.op_cost [--requests 300] [--mongo-operations]`.

Starts the platform as bench/load.py does (with pg_stat_statements turned on in its own PostgreSQL), then
sends one kind of request at a time, sequentially on one kept-alive connection (the sends also from 8 clients
at once, with the admin key and with each conversation's agent's own key), and divides by the number of
requests what the stack spent until every message was delivered: the CPU of each process (from /proc), the
Lambda invocations of each function, the AWS calls (LocalStack's request log), the functions' PostgreSQL
statements and the Redis commands. `--mongo-operations` then repeats each kind with the MongoDB server's
profiler on and counts its operations per request. Without a profiler's own cost in the figures: where the
mix's cost per message goes.
"""

from __future__ import annotations

import argparse
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import cycle
from typing import TYPE_CHECKING, Any

import httpx

from bench.load import Meter, WhatsAppServer, count_invocations, count_postgres_statements, set_up, wait_delivered
from devstack.stack import throwaway_platform
from tests.support.fake_whatsapp import message_webhook, sign

if TYPE_CHECKING:
    from devstack.stack import LocalPlatform

Request = Callable[[httpx.Client, dict[str, Any]], dict[str, Any] | None]


@dataclass(frozen=True)
class Kind:
    label: str
    request: Request
    clients: int = 1


def health(client: httpx.Client, _conversation: dict[str, Any]) -> None:
    client.get("/health").raise_for_status()


def history(client: httpx.Client, conversation: dict[str, Any]) -> None:
    client.get(f"/v1/conversations/{conversation['conversation_id']}/messages?limit=50").raise_for_status()


def send(client: httpx.Client, conversation: dict[str, Any], *, as_agent: bool = False) -> dict[str, Any]:
    content = f"cost {uuid.uuid4().hex}"
    body = {"conversation_id": conversation["conversation_id"], "sender_id": conversation["agent_id"]}
    headers = {"Authorization": f"Bearer {conversation['agent_key']}"} if as_agent else None
    client.post("/v1/messages", json={**body, "content": content}, headers=headers).raise_for_status()
    return {"content": content}


def send_as_agent(client: httpx.Client, conversation: dict[str, Any]) -> dict[str, Any]:
    return send(client, conversation, as_agent=True)


def give_agents_keys(platform: LocalPlatform, plan: dict[str, Any]) -> None:
    """An API key of each conversation's agent (role agent, bound to that user), in the plan."""
    headers = {"Authorization": f"Bearer {platform.admin_api_key}"}
    with httpx.Client(base_url=platform.api_url, headers=headers, timeout=60) as api:
        for conversation in plan["conversations"]:
            body = {"name": "op-cost agent", "role": "agent", "user_id": conversation["agent_id"]}
            response = api.post("/v1/api-keys", json=body)
            response.raise_for_status()
            conversation["agent_key"] = response.json()["api_key"]


def webhook_of(channel: dict[str, str]) -> Request:
    def webhook(client: httpx.Client, conversation: dict[str, Any]) -> None:
        raw = message_webhook(
            channel["phone_number_id"], f"wamid.cost.{uuid.uuid4().hex}", conversation["customer_phone"], "C", "hi"
        )
        headers = {"X-Hub-Signature-256": sign(channel["app_secret"], raw), "Content-Type": "application/json"}
        client.post("/webhooks/whatsapp", content=raw, headers=headers).raise_for_status()

    return webhook


@dataclass
class Cost:
    """Per request: CPU ms by process, Lambda invocations by function, AWS calls by operation, the functions'
    PostgreSQL statements (None: not counted), Redis commands by name, MongoDB operations by operation and
    collection (a pass of its own)."""

    cpu_ms: dict[str, float]
    invocations: dict[str, float]
    aws_calls: dict[str, float]
    postgres_statements: float | None
    redis_commands: dict[str, float]
    mongo_operations: dict[str, float] = field(default_factory=dict)


def measure(platform: LocalPlatform, whatsapp: WhatsAppServer, plan: dict[str, Any], kind: Kind, count: int) -> Cost:
    """`count` requests of one kind from `kind.clients` kept-alive connections, until all were delivered."""
    headers = {"Authorization": f"Bearer {platform.admin_api_key}"}
    conversations = cycle(plan["conversations"])
    jobs = [next(conversations) for _ in range(count)]
    sessions = [httpx.Client(base_url=platform.api_url, headers=headers, timeout=60) for _ in range(kind.clients)]
    for session in sessions:
        health(session, {})  # the connection is open before the measurement
    meter = Meter(platform)
    with ThreadPoolExecutor(max_workers=kind.clients) as pool:
        chunks = [jobs[i :: kind.clients] for i in range(kind.clients)]
        results = pool.map(lambda pair: [kind.request(pair[0], c) for c in pair[1]], zip(sessions, chunks, strict=True))
        accepted = [r for chunk in results for r in chunk if r is not None]
    wait_delivered(whatsapp, accepted, 120)
    time.sleep(0.5)  # route's unmark and the events' publication follow the delivery
    usage = meter.read()
    for session in sessions:
        session.close()
    return Cost(
        {name: seconds * 1000 / count for name, seconds in usage.cpu.items() if seconds > 0},
        {name: n / count for name, n in usage.invocations.most_common()},
        {name: n / count for name, n in usage.aws_calls.most_common()},
        None if usage.postgres_statements is None else usage.postgres_statements / count,
        {name: n / count for name, n in usage.redis_commands.most_common()},
    )


def count_mongo_operations(
    platform: LocalPlatform, whatsapp: WhatsAppServer, plan: dict[str, Any], kind: Kind, count: int
) -> dict[str, float]:
    """The same requests again with the server's profiler on (it costs the server several times the CPU, so
    this is a pass of its own): MongoDB operations per request."""
    from chat4all import bootstrap  # the layer is importable once the platform is up

    database = bootstrap.mongo().client[bootstrap.mongo().name]
    started = datetime.now(UTC)
    database.command("profile", 2)
    try:
        measure(platform, whatsapp, plan, kind, count)
    finally:
        database.command("profile", 0)
    operations = Counter(
        f"{entry['op']} {entry.get('ns', '').split('.', 1)[-1]}"
        for entry in database.system.profile.find({"ts": {"$gte": started}})
        if entry.get("command", {}).get("profile") is None
    )
    return {name: round(n / count, 2) for name, n in operations.most_common()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--mongo-operations", action="store_true", help="also count MongoDB operations per request")
    arguments = parser.parse_args()
    count_invocations()
    whatsapp = WhatsAppServer()
    try:
        with throwaway_platform("opcost", {"WHATSAPP_API_BASE": whatsapp.url}) as platform:
            counted = count_postgres_statements(platform)
            print(f"PostgreSQL statements {'counted' if counted else 'not counted: no pg_stat_statements'}")
            plan = set_up(platform, 8, 50, whatsapp)
            give_agents_keys(platform, plan)
            kinds = [
                Kind("GET /health", health),
                Kind("history page of 50", history),
                Kind("signed inbound webhook", webhook_of(plan["channel"])),
                Kind("send, one at a time", send),
                Kind("send, 8 clients at once", send, clients=8),
                Kind("send with the agent's key, 8 clients", send_as_agent, clients=8),
            ]
            costs = {kind.label: measure(platform, whatsapp, plan, kind, arguments.requests) for kind in kinds}
            if arguments.mongo_operations:
                for kind in kinds:
                    costs[kind.label].mongo_operations = count_mongo_operations(
                        platform, whatsapp, plan, kind, arguments.requests
                    )
    finally:
        whatsapp.close()
    report(costs, arguments.requests)


def report(costs: dict[str, Cost], requests: int) -> None:
    rows = [cost.cpu_ms for cost in costs.values()]
    names = sorted({name for row in rows for name in row}, key=lambda name: -sum(row.get(name, 0) for row in rows))
    print(f"\n### CPU per request, by process ({requests} requests of each kind)\n")
    print("| ms per request | " + " | ".join(costs) + " |")
    print("| --- |" + " --- |" * len(costs))
    for name in names:
        print(f"| {name} | " + " | ".join(f"{row.get(name, 0):.2f}" for row in rows) + " |")
    print("| **all** | " + " | ".join(f"{sum(row.values()):.2f}" for row in rows) + " |")
    print(f"\n### Calls per request ({requests} requests of each kind)\n")
    print("| per request | " + " | ".join(costs) + " |")
    print("| --- |" + " --- |" * len(costs))
    print("| Lambda invocations | " + " | ".join(_counts(cost.invocations) for cost in costs.values()) + " |")
    print("| AWS calls | " + " | ".join(_counts(cost.aws_calls) for cost in costs.values()) + " |")
    statements = [cost.postgres_statements for cost in costs.values()]
    print("| PostgreSQL statements | " + " | ".join("-" if n is None else f"{n:.2f}" for n in statements) + " |")
    print("| Redis commands | " + " | ".join(_counts(cost.redis_commands) for cost in costs.values()) + " |")
    for label, cost in costs.items():
        if cost.mongo_operations:
            print(f"\nMongoDB operations per request, {label}: {cost.mongo_operations}")


def _counts(per_request: dict[str, float]) -> str:
    """The total, then each name's share: `2.03 (IngestFunction 1.00, RouteFunction 1.03)`."""
    detail = ", ".join(f"{name.split('.')[-1]} {n:.2f}" for name, n in per_request.items())
    return f"{sum(per_request.values()):.2f}" + (f" ({detail})" if detail else "")


if __name__ == "__main__":
    main()
