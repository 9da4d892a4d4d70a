"""The seed's load test replayed on the local stack: `python -m bench.load [--rate 167] [--duration 60]`.

Starts the whole platform as `make test` does (own servers, fresh databases) with a WhatsApp-format server
(tests/support/fake_whatsapp.py) in a process of its own, sets up conversations, and then runs, each phase
with the generator of bench/load_client.py in a separate process:

1. keep-alive: sequential GET /health and history pages of 50 on one kept-alive connection each;
2. the seed's mix at a constant arrival rate (k6's drop rule), then the check that every accepted message
   reached the WhatsApp-format server exactly once and in `sequence` order per conversation;
3. a hot conversation: 16 clients sending back to back to one conversation (order, duplicates, gaps, errors).

For phases 2 and 3 it reads the CPU time of every process of the stack from /proc (from the phase's start
until every accepted message was delivered) and counts LocalStack's calls in its request log. It prints
Markdown for docs/BENCHMARKS.md. All traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from devstack.stack import throwaway_platform

if TYPE_CHECKING:
    from devstack.stack import LocalPlatform

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
LOCALSTACK_CALL = re.compile(r"localstack\.request\.aws\s*: AWS (\w+)\.(\w+) =>")
RUNTIME_THREAD_PREFIXES = ("local-runtime", "sqs-")
EXPECTED = {"send": "202", "history": "200", "health": "200", "webhook": "200"}
DRAIN_TIMEOUT_SECONDS = 300.0
# Lambda invocations by function, counted where the local runtime's Lambda service takes them (every
# invocation, whoever makes it: the HTTP API, an SQS poller, a schedule)
INVOCATIONS: Counter[str] = Counter()


def count_invocations() -> None:
    """Wrap the local Lambda service's Invoke so that each invocation is counted in INVOCATIONS."""
    from devstack.lambda_service import LambdaService

    invoke = LambdaService.invoke

    async def counted(self: LambdaService, function: str, payload: bytes) -> Any:
        INVOCATIONS[function] += 1
        return await invoke(self, function, payload)

    LambdaService.invoke = counted  # type: ignore[method-assign]


# ------------------------------------------------------------------ processes and CPU


def _stat(pid: int) -> tuple[int, float, float] | None:
    """(process group, own CPU seconds, reaped children's CPU seconds) of a process, None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    own = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    children = (int(fields[13]) + int(fields[14])) / CLOCK_TICKS
    return int(fields[2]), own, children


def cpu_by_group() -> dict[int, float]:
    """CPU seconds of every process group: its live members' own time and what they reaped."""
    totals: dict[int, float] = defaultdict(float)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))):
            group, own, children = stat
            totals[group] += own + children
    return totals


def runtime_threads_cpu() -> dict[int, float]:
    """CPU seconds of the runtime's threads in this process: its event loop (HTTP API, Runtime API, event
    sources) and the SQS pollers' boto3 threads, apart from this benchmark's own threads."""
    found = {}
    for thread in threading.enumerate():
        if thread.native_id is not None and thread.name.startswith(RUNTIME_THREAD_PREFIXES):
            with contextlib.suppress(OSError):
                raw = Path(f"/proc/self/task/{thread.native_id}/stat").read_text()
                fields = raw[raw.rindex(")") + 2 :].split()
                found[thread.native_id] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return found


@dataclass
class CpuSample:
    groups: dict[int, float]
    runtime: dict[int, float]
    at: float = field(default_factory=time.monotonic)

    @classmethod
    def take(cls) -> CpuSample:
        return cls(cpu_by_group(), runtime_threads_cpu())


def stack_processes(platform: LocalPlatform) -> dict[str, list[int]]:
    """Process groups of the stack by what they are (each server and container leads a group of its own)."""
    named = {p.name: [p.pid] for p in platform.group.processes if p.pid is not None and p.is_running()}
    assert platform.runtime is not None
    for function, pids in platform.runtime.container_pids().items():
        named[f"{function} containers"] = pids
    return named


def cpu_between(before: CpuSample, after: CpuSample, groups: dict[str, list[int]]) -> dict[str, float]:
    used = {
        name: sum(after.groups.get(pid, 0.0) - before.groups.get(pid, 0.0) for pid in pids)
        for name, pids in groups.items()
    }
    runtime = sum(seconds - before.runtime.get(thread, 0.0) for thread, seconds in after.runtime.items())
    used["runtime (HTTP API, Runtime API, SQS pollers)"] = runtime
    return used


# ------------------------------------------------------------------ what a window of work cost


def count_postgres_statements(platform: LocalPlatform) -> bool:
    """Turn on pg_stat_statements in the stack's own PostgreSQL (it must be preloaded: one restart, before the
    work to measure). False on a server given by URL that does not have it: its statements go uncounted."""
    import psycopg

    with psycopg.connect(platform.urls["postgres"], autocommit=True) as conn:
        preloaded = "pg_stat_statements" in str(conn.execute("SHOW shared_preload_libraries").fetchone())
        if not preloaded and platform.options.environ.get("DATABASE_URL"):
            return False
        if not preloaded:
            conn.execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
    if not preloaded:
        platform.server_process("postgres").stop()
        platform.restart_server("postgres")
    with psycopg.connect(platform.urls["postgres"], autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    return True


def postgres_statements(platform: LocalPlatform) -> int | None:
    """Statements the functions' role has run so far (BEGIN and COMMIT included: each a round trip of its own,
    the functions use no pipelines); None while pg_stat_statements is off."""
    import psycopg

    from chat4all.config import APP_ROLE  # the layer is importable once the platform is up

    query = (
        "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid"
        " WHERE r.rolname = %s"
    )
    try:
        with psycopg.connect(platform.urls["postgres"], autocommit=True) as conn:
            row = conn.execute(query, (APP_ROLE,)).fetchone()
    except psycopg.errors.UndefinedTable:
        return None
    return int(row[0]) if row else None


def redis_commands(platform: LocalPlatform) -> Counter[str]:
    """Commands the Redis server has run so far, by name (INFO commandstats; these INFO calls are left out)."""
    import redis

    client = redis.Redis.from_url(platform.urls["redis"])
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return Counter(
        {name.removeprefix("cmdstat_"): int(row["calls"]) for name, row in stats.items() if name != "cmdstat_info"}
    )


@dataclass
class Usage:
    """What the stack spent in a window: CPU seconds by process, Lambda invocations by function, AWS calls by
    operation (LocalStack's request log), the functions' PostgreSQL statements (None: not counted), Redis
    commands by name."""

    cpu: dict[str, float]
    invocations: Counter[str]
    aws_calls: Counter[str]
    postgres_statements: int | None
    redis_commands: Counter[str]
    seconds: float


class Meter:
    """Readings taken now; `read()` is what was spent since."""

    def __init__(self, platform: LocalPlatform) -> None:
        self.platform = platform
        self.log = platform.options.state_dir / "logs" / "localstack.log"
        self.log_offset = self.log.stat().st_size
        self.invocations = Counter(INVOCATIONS)
        self.statements = postgres_statements(platform)
        self.redis = redis_commands(platform)
        self.cpu = CpuSample.take()

    def read(self) -> Usage:
        cpu = CpuSample.take()
        statements = postgres_statements(self.platform)
        commands = redis_commands(self.platform)
        commands.subtract(self.redis)
        with self.log.open("rb") as stream:
            stream.seek(self.log_offset)
            calls = Counter(f"{m.group(1)}.{m.group(2)}" for m in LOCALSTACK_CALL.finditer(stream.read().decode()))
        invocations = Counter(INVOCATIONS)
        invocations.subtract(self.invocations)
        return Usage(
            cpu_between(self.cpu, cpu, stack_processes(self.platform)),
            +invocations,
            calls,
            None if statements is None or self.statements is None else statements - self.statements,
            +commands,
            cpu.at - self.cpu.at,
        )


# ------------------------------------------------------------------ the WhatsApp-format server


class WhatsAppServer:
    """tests/support/fake_whatsapp.py run as `python -m`, its printed requests collected in arrival order.

    It can be killed (SIGKILL) and started again on the same port, and told to be slow or to fail for a while
    (bench/chaos.py); what it printed before it died is kept.
    """

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self.url = ""
        self.received: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.process: subprocess.Popen[str] | None = None
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(  # noqa: S603 - this interpreter, this repository's module
            [sys.executable, "-u", "-m", "tests.support.fake_whatsapp", str(self.port)],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert self.process.stdout is not None
        first = self.process.stdout.readline().strip()
        self.url = first.removeprefix("WHATSAPP_API_BASE=")
        self.port = int(self.url.split(":")[2].split("/")[0])
        threading.Thread(target=self._read, args=(self.process,), daemon=True).start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            with self._lock:
                self.received.append(json.loads(line))

    def records(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.received)

    def contents(self) -> list[tuple[str, str]]:
        """(recipient, text) of every request received so far, in arrival order."""
        with self._lock:
            return [(r["body"].get("to", ""), r["body"].get("text", {}).get("body", "")) for r in self.received]

    def fault(self, seconds: float, status: int | None = None, delay: float = 0.0) -> None:
        """For `seconds`, every send waits `delay` s and then answers `status` (when given)."""
        body = {"seconds": seconds, "status": status, "delay": delay}
        httpx.post(f"http://127.0.0.1:{self.port}/_fault", json=body, timeout=10).raise_for_status()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


def wait_delivered(whatsapp: WhatsAppServer, accepted: list[dict[str, Any]], timeout: float) -> float:
    wanted = {a["content"] for a in accepted}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if wanted <= {text for _, text in whatsapp.contents()}:
            return time.monotonic()
        time.sleep(0.2)
    return time.monotonic()


def delivery_report(whatsapp: WhatsAppServer, accepted: list[dict[str, Any]]) -> dict[str, int]:
    """Exactly once, and in `sequence` order per conversation, as the WhatsApp-format server saw them."""
    by_content = {a["content"]: a for a in accepted}
    seen: Counter[str] = Counter()
    last_sequence: dict[str, int] = {}
    out_of_order = 0
    for _, text in whatsapp.contents():
        message = by_content.get(text)
        if message is None:
            continue
        seen[text] += 1
        if seen[text] > 1:
            continue
        conversation = message["conversation_id"]
        if message["sequence"] < last_sequence.get(conversation, 0):
            out_of_order += 1
        last_sequence[conversation] = max(last_sequence.get(conversation, 0), message["sequence"])
    return {
        "accepted": len(accepted),
        "delivered": sum(1 for text in by_content if seen[text]),
        "missing": sum(1 for text in by_content if not seen[text]),
        "duplicates": sum(count - 1 for count in seen.values() if count > 1),
        "out_of_order": out_of_order,
    }


# ------------------------------------------------------------------ set-up


def set_up(platform: LocalPlatform, conversations: int, prefill: int, whatsapp: WhatsAppServer) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {platform.admin_api_key}"}
    with httpx.Client(base_url=platform.api_url, headers=headers, timeout=60) as api:

        def created(path: str, body: dict[str, Any]) -> dict[str, Any]:
            response = api.post(path, json=body)
            if response.status_code != 201:
                raise RuntimeError(f"{path}: {response.status_code} {response.text}")
            return dict(response.json())

        channel = {"phone_number_id": "106540352242922", "app_secret": uuid.uuid4().hex}
        credentials = {"access_token": "EAAG-bench", "verify_token": "vt", **channel}
        created("/v1/channels", {"platform": "WHATSAPP", "name": "bench", "credentials": credentials})

        def conversation(n: int) -> dict[str, Any]:
            phone = f"55119{n:04d}{uuid.uuid4().int % 10000:04d}"
            agent = created("/v1/users", {"display_name": f"Agent {n}", "user_type": "AGENT"})["user_id"]
            customer = created("/v1/users", {"display_name": f"Customer {n}", "user_type": "CUSTOMER"})["user_id"]
            created(f"/v1/users/{customer}/identities", {"platform": "WHATSAPP", "platform_user_id": phone})
            body = {"conversation_type": "ONE_TO_ONE", "participants": [agent, customer], "primary_channel": "WHATSAPP"}
            conversation_id = created("/v1/conversations", body)["conversation_id"]
            return {"conversation_id": conversation_id, "agent_id": agent, "customer_phone": phone}

        with ThreadPoolExecutor(max_workers=8) as pool:
            made = list(pool.map(conversation, range(conversations + 1)))
            jobs = [(c, n) for c in made[:conversations] for n in range(prefill)]
            prefilled = list(pool.map(lambda job: _prefill(api, *job), jobs))
    wait_delivered(whatsapp, prefilled, DRAIN_TIMEOUT_SECONDS)
    return {
        "api_url": platform.api_url,
        "admin_key": platform.admin_api_key,
        "channel": channel,
        "conversations": made[:conversations],
        "hot_conversation": made[conversations],
    }


def _prefill(api: httpx.Client, conversation: dict[str, Any], n: int) -> dict[str, Any]:
    content = f"history {n} {uuid.uuid4().hex[:8]}"
    body = {
        "conversation_id": conversation["conversation_id"],
        "sender_id": conversation["agent_id"],
        "content": content,
    }
    response = api.post("/v1/messages", json=body)
    if response.status_code != 202:
        raise RuntimeError(f"prefill: {response.status_code} {response.text}")
    return {"content": content}


# ------------------------------------------------------------------ phases


@dataclass
class Phase:
    result: dict[str, Any]
    usage: Usage
    delivery: dict[str, int]


def run_client(plan: dict[str, Any], on_start: Any = None) -> tuple[dict[str, Any], float | None]:
    with tempfile.TemporaryDirectory() as folder:
        plan_path, result_path = Path(folder) / "plan.json", Path(folder) / "result.json"
        plan_path.write_text(json.dumps(plan))
        process = subprocess.Popen(  # noqa: S603 - this interpreter, this repository's module
            [sys.executable, "-m", "bench.load_client", str(plan_path), str(result_path)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert process.stdout is not None
        for line in process.stdout:
            if line.strip() == "START" and on_start is not None:
                on_start()
        if process.wait() != 0:
            raise RuntimeError("the load generator failed")
        return json.loads(result_path.read_text()), None


def measured_phase(platform: LocalPlatform, whatsapp: WhatsAppServer, plan: dict[str, Any]) -> Phase:
    meters: list[Meter] = []

    def on_start() -> None:
        meters.append(Meter(platform))
        print(f"{plan['mode']} phase started", file=sys.stderr, flush=True)  # a profiler can attach now

    result, _ = run_client(plan, on_start)
    wait_delivered(whatsapp, result["accepted"], DRAIN_TIMEOUT_SECONDS)
    return Phase(result, meters[0].read(), delivery_report(whatsapp, result["accepted"]))


# ------------------------------------------------------------------ report


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))] * 1000 if ordered else 0.0


def latency_table(latencies: dict[str, list[float]], statuses: dict[str, dict[str, int]]) -> str:
    lines = ["| operation | requests | p50 ms | p95 ms | p99 ms | answers |", "| --- | --- | --- | --- | --- | --- |"]
    for operation in ("send", "history", "health", "webhook"):
        samples = latencies.get(operation, [])
        if not samples:
            continue
        answers = ", ".join(f"{status}: {count}" for status, count in sorted(statuses.get(operation, {}).items()))
        lines.append(
            f"| {operation} | {len(samples)} | {percentile(samples, 0.5):.1f} | {percentile(samples, 0.95):.1f} "
            f"| {percentile(samples, 0.99):.1f} | {answers} |"
        )
    return "\n".join(lines)


def cpu_table(phase: Phase) -> str:
    delivered = max(1, phase.delivery["delivered"])
    total = sum(phase.usage.cpu.values())
    lines = [
        f"CPU from the phase's start until every accepted message was delivered ({phase.usage.seconds:.1f} s), "
        f"per delivered message ({phase.delivery['delivered']}):",
        "",
        "| process | CPU s | ms per delivered message |",
        "| --- | --- | --- |",
    ]
    for name, seconds in sorted(phase.usage.cpu.items(), key=lambda item: -item[1]):
        lines.append(f"| {name} | {seconds:.2f} | {seconds * 1000 / delivered:.2f} |")
    functions = sum(s for name, s in phase.usage.cpu.items() if name.endswith("containers"))
    lines.append(f"| **all** | {total:.2f} | **{total * 1000 / delivered:.2f}** |")
    lines.append(f"| of which the functions | {functions:.2f} | {functions * 1000 / delivered:.2f} |")
    calls = sum(phase.usage.aws_calls.values())
    detail = ", ".join(f"{op} {n}" for op, n in phase.usage.aws_calls.most_common())
    lines += ["", f"LocalStack calls: {calls} ({calls / delivered:.2f} per delivered message): {detail}"]
    invoked = sum(phase.usage.invocations.values())
    detail = ", ".join(f"{function} {n / delivered:.2f}" for function, n in phase.usage.invocations.most_common())
    lines += ["", f"Lambda invocations: {invoked} ({invoked / delivered:.2f} per delivered message): {detail}"]
    return "\n".join(lines)


def errors(statuses: dict[str, dict[str, int]]) -> dict[str, int]:
    found: Counter[str] = Counter()
    for operation, counts in statuses.items():
        for status, count in counts.items():
            if status != EXPECTED[operation]:
                found[f"{operation} {status}"] += count
    return dict(found)


def run(arguments: argparse.Namespace) -> None:
    phases = set(arguments.phases.split(","))
    count_invocations()
    whatsapp = WhatsAppServer()
    try:
        with throwaway_platform("bench", {"WHATSAPP_API_BASE": whatsapp.url}) as platform:
            plan = set_up(platform, arguments.conversations, arguments.prefill, whatsapp)
            if "keepalive" in phases:
                keep, _ = run_client({**plan, "mode": "keepalive", "requests": 300})
                report_keepalive(keep)
            if "mix" in phases:
                mix_plan = {**plan, "mode": "mix", "rate": arguments.rate, "duration": arguments.duration}
                mix = measured_phase(platform, whatsapp, {**mix_plan, "vus": arguments.vus})
                report_mix(arguments.rate, arguments.duration, arguments.vus, mix)
            if "hot" in phases:
                hot_plan = {**plan, "mode": "hot", "clients": 16, "duration": arguments.hot_seconds}
                report_hot(measured_phase(platform, whatsapp, hot_plan))
    finally:
        whatsapp.close()


def report_keepalive(keep: dict[str, Any]) -> None:
    health, history = keep["latencies"]["health"], keep["latencies"]["history"]
    print(
        "\n### Keep-alive connection (sequential, one connection each)\n\n"
        f"GET /health median {percentile(health, 0.5):.1f} ms (p95 {percentile(health, 0.95):.1f}); "
        f"history page of 50 median {percentile(history, 0.5):.1f} ms (p95 {percentile(history, 0.95):.1f}), "
        f"{len(health)} requests each",
        flush=True,
    )


def report_mix(rate: float, duration: float, vus: int, mix: Phase) -> None:
    result = mix.result
    completed = sum(len(v) for v in result["latencies"].values())
    print(
        f"\n### The seed's mix at {rate:g} requests/s for {duration:g} s, {vus} virtual users\n\n"
        f"offered {result['offered']}, started {result['started']}, dropped {result['dropped']}, "
        f"completed {completed} ({completed / result['issuing_seconds']:.1f} requests/s achieved); "
        f"errors: {errors(result['statuses']) or 'none'}\n"
    )
    all_samples = [s for v in result["latencies"].values() for s in v]
    print(latency_table(result["latencies"], result["statuses"]))
    print(
        f"\nall requests: p50 {percentile(all_samples, 0.5):.1f} ms, p95 {percentile(all_samples, 0.95):.1f} ms, "
        f"p99 {percentile(all_samples, 0.99):.1f} ms"
    )
    print(f"\ndelivery: {mix.delivery}\n")
    print(cpu_table(mix), flush=True)


def report_hot(hot: Phase) -> None:
    hot_result = hot.result
    sequences = sorted(a["sequence"] for a in hot_result["accepted"])
    gaps = len(set(range(sequences[0], sequences[-1] + 1)) - set(sequences)) if sequences else 0
    print(
        f"\n### Hot conversation: {hot_result['clients']} clients, one conversation, "
        f"{hot_result['elapsed_seconds']:.0f} s\n\n"
        f"accepted {len(sequences)} ({len(sequences) / hot_result['elapsed_seconds']:.1f}/s), "
        f"sequences {sequences[0] if sequences else '-'}..{sequences[-1] if sequences else '-'} with {gaps} gaps, "
        f"errors: {errors(hot_result['statuses']) or 'none'}\n"
    )
    print(latency_table(hot_result["latencies"], hot_result["statuses"]))
    print(f"\ndelivery: {hot.delivery}\n")
    print(cpu_table(hot))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=167.0, help="iterations started per second")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of the mix phase")
    parser.add_argument("--vus", type=int, default=200, help="virtual users (k6 preAllocatedVUs)")
    parser.add_argument("--conversations", type=int, default=20)
    parser.add_argument("--prefill", type=int, default=50, help="messages per conversation before the run")
    parser.add_argument("--hot-seconds", type=float, default=20.0)
    parser.add_argument("--phases", default="keepalive,mix,hot", help="which of keepalive,mix,hot to run")
    run(parser.parse_args())
