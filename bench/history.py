"""History at scale: `python -m bench.history [--sizes 1000,10000,100000,1000000] [--budget-minutes 15]`.

Starts the whole platform as `make test` does (own servers, fresh databases), then grows the `messages`
collection step by step to each size, over 10,000 conversations: one conversation holds exactly 1,000
messages (loaded first), the others share the rest. The documents are the ones the functions write
(chat4all.adapters.mongo.documents.message_doc; the conversation and participation documents
MongoConversationStore writes, with the counters and activity the sequence transaction moves),
inserted in bulk (`insert_many` of 5,000); users are rows in PostgreSQL. At each size, through the API (HTTP,
the admin key, the functions in their containers):

- all 1,000 messages of the big conversation, through the cursor pages (`limit=200`, following `next_cursor`);
- one user's conversation list (`GET /v1/conversations?participant=`, an agent in 100 conversations);
- one history page (`GET /v1/conversations/{id}/messages?limit=50`).

p50 and p95 over `--repeat` runs (after 3 warm-up runs). A size whose load is projected (from the rate of
the loads before it) to overrun `--budget-minutes` is skipped and said so. Prints Markdown and JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform as host
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import httpx
import psycopg
import pymongo
from pymongo import UpdateOne

from bench.load import CpuSample, cpu_between, stack_processes
from devstack.stack import throwaway_platform

if TYPE_CHECKING:
    from collections.abc import Callable

    from devstack.stack import LocalPlatform

CONVERSATIONS = 10_000
BIG = 1_000  # messages in the conversation read whole
CUSTOMERS = 2_000
AGENT_CONVERSATIONS = 100  # the agent whose list is read is in one conversation in a hundred
BATCH = 5_000
PAGE = 200  # the API's largest page
CPU_READS = 10  # whole-conversation reads whose CPU is divided by process


def _documents() -> tuple[Any, Any, Any, Any]:
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "layers"))
    from chat4all.adapters.mongo.conversations import conversation_doc
    from chat4all.adapters.mongo.documents import message_doc
    from chat4all.adapters.mongo.participations import activity_update, participation_docs

    return conversation_doc, participation_docs, activity_update, message_doc


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


class Loader:
    def __init__(self, mongo_uri: str, postgres_url: str) -> None:
        conversation_doc, participation_docs, self.activity_update, self.message_doc = _documents()
        from chat4all.domain.models import (
            Conversation,
            ConversationType,
            Direction,
            Message,
            MessageStatus,
            Participant,
            Platform,
            StatusEntry,
        )

        self.models = (Message, MessageStatus, StatusEntry, Direction, Platform)
        self.client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo_uri, tz_aware=True)
        self.db = self.client.get_default_database()
        self.start = datetime(2025, 1, 1, tzinfo=UTC)
        self.agent = str(uuid.uuid4())
        self.other_agent = str(uuid.uuid4())
        customers = [str(uuid.uuid4()) for _ in range(CUSTOMERS)]
        with psycopg.connect(postgres_url, autocommit=True) as conn, conn.cursor() as cur:
            rows = [(u, "Agent", "AGENT") for u in (self.agent, self.other_agent)]
            rows += [(u, "Customer", "CUSTOMER") for u in customers]
            cur.executemany(
                "INSERT INTO users (user_id, display_name, user_type, created_at, updated_at)"
                " VALUES (%s, %s, %s, now(), now())",
                rows,
            )
        conversations: list[dict[str, Any]] = []
        participations: list[dict[str, Any]] = []
        self.conversations: list[str] = []
        self.members: list[tuple[str, str]] = []
        for index in range(CONVERSATIONS):
            agent = self.agent if index % (CONVERSATIONS // AGENT_CONVERSATIONS) == 0 else self.other_agent
            customer = customers[index % CUSTOMERS]
            at = self.start + timedelta(seconds=index)
            conversation = Conversation(
                str(uuid.uuid4()),
                ConversationType.ONE_TO_ONE,
                [Participant(agent, at), Participant(customer, at)],
                Platform("WHATSAPP"),
                0,
                at,
                at,
            )
            # what MongoConversationStore.add_conversation writes in its transaction, in bulk
            conversations.append(conversation_doc(conversation))
            participations.extend(participation_docs(conversation))
            self.conversations.append(conversation.conversation_id)
            self.members.append((agent, customer))
        self.db.conversations.insert_many(conversations)
        self.db.participations.insert_many(participations)
        self.big = self.conversations[0]
        self.sequences = [0] * CONVERSATIONS
        self.last_at = [self.start] * CONVERSATIONS
        self.loaded = 0

    def _message(self, conversation_index: int) -> dict[str, Any]:
        message_type, status, entry, direction, platform_name = self.models
        self.sequences[conversation_index] += 1
        sequence = self.sequences[conversation_index]
        at = self.start + timedelta(seconds=self.loaded)
        agent, customer = self.members[conversation_index]
        outbound = sequence % 2 == 1
        message = message_type(
            message_id=str(uuid.uuid4()),
            conversation_id=self.conversations[conversation_index],
            sender_id=agent if outbound else customer,
            content=f"message {sequence} of the conversation, some ordinary text of a chat",
            file_id=None,
            channel=platform_name("WHATSAPP"),
            direction=direction.OUTBOUND if outbound else direction.INBOUND,
            sequence=sequence,
            status=status.DELIVERED,
            history=[
                entry(status.PENDING, at),
                entry(status.SENT, at + timedelta(seconds=1)),
                entry(status.DELIVERED, at + timedelta(seconds=2)),
            ],
            created_at=at,
            request_fingerprint="bench",
            platform_message_id=f"wamid.{uuid.uuid4().hex}",
        )
        self.loaded += 1
        self.last_at[conversation_index] = at
        return dict(self.message_doc(message))

    def grow_to(self, size: int) -> float:
        """Insert messages until the collection holds `size`; the seconds it took."""
        started = time.monotonic()
        while self.loaded < size:
            batch = []
            for _ in range(min(BATCH, size - self.loaded)):
                # the big conversation gets its 1,000 first, the others share the rest
                index = 0 if self.loaded < BIG else 1 + (self.loaded % (CONVERSATIONS - 1))
                batch.append(self._message(index))
            self.db.messages.insert_many(batch, ordered=False)
        # the counters and activity the sequence transaction moves: the conversation's and its participations'
        updates, activity = [], []
        for index, (cid, seq) in enumerate(zip(self.conversations, self.sequences, strict=True)):
            if seq:
                at = self.last_at[index]
                updates.append(
                    UpdateOne(
                        {"_id": cid}, {"$set": {"last_sequence": seq, "message_count": seq, "last_activity_at": at}}
                    )
                )
                activity.append(UpdateOne(*self.activity_update(cid, self.members[index], at)))
        for start in range(0, len(updates), BATCH):
            self.db.conversations.bulk_write(updates[start : start + BATCH], ordered=False)
            self.db.participations.bulk_write(activity[start : start + BATCH], ordered=False)
        return time.monotonic() - started


def measure(api: httpx.Client, loader: Loader, stack: LocalPlatform, repeat: int) -> dict[str, dict[str, float]]:
    def whole_conversation() -> None:
        cursor: str | None = None
        read = 0
        while True:
            params: dict[str, Any] = {"limit": PAGE}
            if cursor:
                params["before"] = cursor
            response = api.get(f"/v1/conversations/{loader.big}/messages", params=params)
            response.raise_for_status()
            body = response.json()
            read += len(body["items"])
            cursor = body.get("next_cursor")
            if not cursor:
                break
        assert read == BIG, read

    def conversation_list() -> None:
        response = api.get("/v1/conversations", params={"participant": loader.agent, "limit": 50})
        response.raise_for_status()
        assert response.json()["items"]

    def history_page() -> None:
        response = api.get(f"/v1/conversations/{loader.big}/messages", params={"limit": 50})
        response.raise_for_status()
        assert len(response.json()["items"]) == 50

    results = {}
    checks: dict[str, Callable[[], None]] = {
        "all 1,000 messages (5 pages of 200)": whole_conversation,
        "a user's conversation list (50)": conversation_list,
        "one history page (50)": history_page,
    }
    for name, check in checks.items():
        for _ in range(3):
            check()
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            check()
            times.append((time.perf_counter() - started) * 1000)
        results[name] = {"p50_ms": statistics.median(times), "p95_ms": percentile(times, 0.95), "max_ms": max(times)}
    # where the 1,000 messages' time goes: each process's CPU (from /proc, no profiler) over CPU_READS reads
    before = CpuSample.take()
    for _ in range(CPU_READS):
        whole_conversation()
    used = cpu_between(before, CpuSample.take(), stack_processes(stack))
    results["CPU ms per 1,000-message read"] = {
        name: round(seconds * 1000 / CPU_READS, 1) for name, seconds in used.items() if seconds > 0
    }
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", default="1000,10000,100000,1000000")
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--budget-minutes", type=float, default=15.0, help="the longest a size's load may take")
    arguments = parser.parse_args(argv)
    sizes = [int(s) for s in arguments.sizes.split(",")]
    report: dict[str, Any] = {
        "machine": f"{os.cpu_count()} CPUs, {host.processor() or host.machine()}, Python {host.python_version()}",
        "sizes": [],
    }
    with throwaway_platform("history", {}) as stack:
        loader = Loader(stack.urls["mongo"], stack.urls["postgres"])
        headers = {"Authorization": f"Bearer {stack.admin_api_key}"}
        rate = 0.0  # messages loaded per second so far
        with httpx.Client(base_url=stack.api_url, headers=headers, timeout=60) as api:
            for size in sizes:
                if rate and (size - loader.loaded) / rate > arguments.budget_minutes * 60:
                    projected = (size - loader.loaded) / rate / 60
                    print(f"{size:,}: skipped, the load would take about {projected:.0f} min", file=sys.stderr)
                    report["sizes"].append({"messages": size, "skipped": f"load projected at {projected:.0f} min"})
                    continue
                before = loader.loaded
                seconds = loader.grow_to(size)
                rate = (size - before) / seconds if seconds else rate
                results = measure(api, loader, stack, arguments.repeat)
                entry = {"messages": size, "load_seconds": round(seconds, 1), "results": results}
                report["sizes"].append(entry)
                print(json.dumps(entry), file=sys.stderr, flush=True)
        loader.client.close()
        # printed before the platform's teardown: dropping a database of 10^5 messages outlasted its 120 s
        # timeout once, and the figures printed after it were lost
        print(markdown(report))
        print(json.dumps(report, indent=2), flush=True)
    return 0


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"Machine: {report['machine']}",
        "",
        "| messages | load (s) | what | p50 ms | p95 ms |",
        "| --- | --- | --- | --- | --- |",
    ]
    for entry in report["sizes"]:
        if "skipped" in entry:
            lines.append(f"| {entry['messages']:,} | - | skipped: {entry['skipped']} | | |")
            continue
        for name, figures in entry["results"].items():
            size, load = f"{entry['messages']:,}", entry["load_seconds"]
            if "p50_ms" not in figures:
                shares = ", ".join(f"{k} {v}" for k, v in sorted(figures.items(), key=lambda kv: -kv[1]))
                lines.append(f"| {size} | | {name}: {shares} | | |")
                continue
            lines.append(f"| {size} | {load} | {name} | {figures['p50_ms']:.1f} | {figures['p95_ms']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
