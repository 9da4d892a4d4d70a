"""Fault injection: `python -m bench.chaos [--messages 10000] [--clients 8] [--conversations 50]`.

Starts the whole platform as `make test` does (own servers, fresh databases) with a WhatsApp-format server
(tests/support/fake_whatsapp.py) in a process of its own. Several concurrent clients send N messages over
many conversations (each with its own `message_id`, retried with the same id after a 5xx or a dropped
connection, as a careful client does) while, one at a time, the harness

- SIGKILLs PostgreSQL, the MongoDB server (SecantusDB), Redis and LocalStack and starts each again on its port
  (LocalStack keeps nothing across a restart and localstack-core has no persistence: the stack redeploys the
  template to it, with the same queue names and the pinned KMS keys, and runs its start-up sweep, as `make dev`
  does at start: see LocalPlatform.restart_server),
- SIGKILLs function containers in the middle of an invocation (devstack/lambda_service.py runs each container
  as a process),
- SIGKILLs the WhatsApp-format server and starts it again, and makes it slow, or answer 429 or 500, for a while.

Some of the conversations are GROUPs (--groups, each an agent and --group-recipients customers on WhatsApp):
a message there is one delivery per recipient, each sent on its own.

Then it waits until no accepted message is PENDING (or the drain timeout) and checks every accepted message,
per recipient (a one-to-one message has one, a GROUP message one per customer of its group), at the
WhatsApp-format server and through the API (a GROUP message's `deliveries`): delivered exactly once and in
`sequence` order per conversation and recipient, or FAILED with a reason; every 202 is a stored message;
nothing stuck PENDING. It prints a Markdown summary and the same figures as JSON (--json FILE writes them to a
file). All traffic is on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from bench.load import WhatsAppServer, set_up
from devstack.stack import throwaway_platform

if TYPE_CHECKING:
    from collections.abc import Callable

    from devstack.stack import LocalPlatform

SERVERS = ("postgres", "mongo", "redis", "localstack")
# the status function only works when platforms report statuses, which this traffic does not make
FUNCTIONS = ("RouteFunction", "IngestFunction")
PLATFORM_FAULTS = ("platform-kill", "platform-slow", "platform-429", "platform-500")
ALL_FAULTS = (*SERVERS, *(f"kill-{f}" for f in FUNCTIONS), *PLATFORM_FAULTS)
REQUEST_TIMEOUT_SECONDS = 15.0
RESTART_ATTEMPTS = 3
OWN_SERVER_VARIABLES = ("DATABASE_URL", "MONGODB_URI", "REDIS_URL", "AWS_ENDPOINT_URL", "CHAT4ALL_STATE_DIR")
# set on SIGINT/SIGTERM: clients stop sending, the faults stop, the stack is stopped
ABORT = threading.Event()


@dataclass
class ChaosOptions:
    messages: int = 10_000
    clients: int = 8
    conversations: int = 50
    groups: int = 5  # GROUP conversations besides the one-to-one ones
    group_recipients: int = 4  # customers of each group (the agent sends)
    faults: tuple[str, ...] = ALL_FAULTS
    down_seconds: float = 4.0  # how long a killed server stays down
    platform_fault_seconds: float = 8.0  # how long the platform is slow or failing
    gap_seconds: float = 4.0  # between one fault's end and the next fault
    give_up_seconds: float = 180.0  # a client retries one message this long
    drain_timeout_seconds: float = 900.0
    sweep_pending_after_seconds: int = 30
    rate: float = 0.0  # messages per second over all clients; 0: as fast as they go
    seed: int = 7


# ------------------------------------------------------------------ killing


def descendants(pid: int) -> list[int]:
    """`pid`'s children, grandchildren ... from /proc (PostgreSQL's backends leave its process group)."""
    children: dict[int, list[int]] = defaultdict(list)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            children[int(stat.read_text().rsplit(")", 1)[1].split()[1])].append(int(stat.parent.name))
    found, pending = [], [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


def sigkill_tree(pid: int) -> None:
    family = descendants(pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(os.getpgid(pid), signal.SIGKILL)
    for each in (pid, *family):
        with contextlib.suppress(ProcessLookupError):
            os.kill(each, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in (pid, *family)):
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# ------------------------------------------------------------------ faults


@dataclass
class FaultRecord:
    name: str
    started: float
    ended: float = 0.0
    detail: str = ""


class Faults:
    """Injects the faults one at a time, in turn, until told to stop and each has been injected once."""

    def __init__(self, platform: LocalPlatform, whatsapp: WhatsAppServer, options: ChaosOptions, t0: float) -> None:
        self.platform = platform
        self.whatsapp = whatsapp
        self.options = options
        self.t0 = t0
        self.records: list[FaultRecord] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="chaos-faults", daemon=True)

    def _run(self) -> None:
        index = 0
        while self.options.faults and not (self.stop.is_set() and index >= len(self.options.faults)):
            if ABORT.is_set():
                return
            name = self.options.faults[index % len(self.options.faults)]
            record = FaultRecord(name, time.monotonic() - self.t0)
            try:
                record.detail = self.inject(name)
            except Exception as exc:  # a fault that could not be injected is reported, not fatal
                record.detail = f"not injected: {type(exc).__name__}: {exc}"
            record.ended = time.monotonic() - self.t0
            self.records.append(record)
            print(f"[{record.ended:7.1f}s] fault {name}: {record.detail}", file=sys.stderr, flush=True)
            index += 1
            time.sleep(self.options.gap_seconds)

    def inject(self, name: str) -> str:
        options = self.options
        if name in SERVERS:
            process = self.platform.server_process(name)
            assert process.pid is not None
            sigkill_tree(process.pid)
            process.stop(timeout=5)  # reaps it: PostgreSQL refuses to start while its old pid is a zombie
            time.sleep(options.down_seconds)
            started = time.monotonic()
            for attempt in range(1, RESTART_ATTEMPTS + 1):
                try:
                    self.platform.restart_server(name)
                    break
                except Exception:
                    if attempt == RESTART_ATTEMPTS:
                        raise
                    time.sleep(1.0)
            return f"SIGKILL, down {options.down_seconds:g} s, back in {time.monotonic() - started:.1f} s"
        if name.startswith("kill-"):
            return self._kill_container(name.removeprefix("kill-"))
        if name == "platform-kill":
            self.whatsapp.kill()
            time.sleep(options.down_seconds)
            self.whatsapp.start()
            return f"SIGKILL, down {options.down_seconds:g} s"
        status = {"platform-429": 429, "platform-500": 500}.get(name)
        delay = 2.0 if name == "platform-slow" else 0.0
        self.whatsapp.fault(options.platform_fault_seconds, status=status, delay=delay)
        time.sleep(options.platform_fault_seconds)
        what = f"answers {status}" if status else f"answers after {delay:g} s"
        return f"{what} for {options.platform_fault_seconds:g} s"

    def _kill_container(self, function: str) -> str:
        runtime = self.platform.runtime
        assert runtime is not None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            busy = runtime.busy_container_pids().get(function, [])
            if busy:
                pid = random.choice(busy)  # noqa: S311 - a victim, not a secret
                sigkill_tree(pid)
                return f"SIGKILL of container {pid} mid-invocation"
            time.sleep(0.01)
        return "no container was busy: none killed"


# ------------------------------------------------------------------ GROUP conversations


def set_up_groups(platform: LocalPlatform, groups: int, recipients: int) -> list[dict[str, Any]]:
    """GROUP conversations of an agent and `recipients` customers with a WhatsApp number each (through the one
    enabled WhatsApp channel `set_up` installed); each as a plan conversation with its recipients' numbers."""
    headers = {"Authorization": f"Bearer {platform.admin_api_key}"}
    with httpx.Client(base_url=platform.api_url, headers=headers, timeout=60) as api:

        def created(path: str, body: dict[str, Any]) -> dict[str, Any]:
            response = api.post(path, json=body)
            if response.status_code != 201:
                raise RuntimeError(f"{path}: {response.status_code} {response.text}")
            return dict(response.json())

        def group(n: int) -> dict[str, Any]:
            agent = created("/v1/users", {"display_name": f"Group agent {n}", "user_type": "AGENT"})["user_id"]
            members = []
            for r in range(recipients):
                phone = f"5521{n:03d}{r:02d}{uuid.uuid4().int % 10**4:04d}"
                body = {"display_name": f"Group {n} customer {r}", "user_type": "CUSTOMER"}
                customer = created("/v1/users", body)["user_id"]
                created(f"/v1/users/{customer}/identities", {"platform": "WHATSAPP", "platform_user_id": phone})
                members.append({"user_id": customer, "phone": phone})
            body = {
                "conversation_type": "GROUP",
                "participants": [agent, *(m["user_id"] for m in members)],
                "primary_channel": "WHATSAPP",
            }
            conversation_id = created("/v1/conversations", body)["conversation_id"]
            return {"conversation_id": conversation_id, "agent_id": agent, "group": True, "recipients": members}

        with ThreadPoolExecutor(max_workers=4) as pool:
            return list(pool.map(group, range(groups)))


def recipients_of(conversation: dict[str, Any]) -> list[dict[str, Any]]:
    """Who a message of the conversation goes to: `{user_id, phone}` each (a one-to-one's customer has no id)."""
    if conversation.get("group"):
        return list(conversation["recipients"])
    return [{"user_id": None, "phone": conversation["customer_phone"]}]


# ------------------------------------------------------------------ clients


@dataclass
class Sent:
    accepted: list[dict[str, Any]] = field(default_factory=list)
    gave_up: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    answers: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def send_all(plan: dict[str, Any], options: ChaosOptions, sent: Sent) -> None:
    conversations = plan["conversations"]
    counter = iter(range(options.messages))
    counter_lock = threading.Lock()
    started = time.monotonic()

    def pace(n: int) -> None:
        if options.rate > 0:
            time.sleep(max(0.0, started + n / options.rate - time.monotonic()))

    def client(number: int) -> None:
        chooser = random.Random(options.seed + number)  # noqa: S311 - a load mix, not a secret
        headers = {"Authorization": f"Bearer {plan['admin_key']}"}
        with httpx.Client(base_url=plan["api_url"], headers=headers, timeout=REQUEST_TIMEOUT_SECONDS) as api:
            while not ABORT.is_set():
                with counter_lock:
                    n = next(counter, None)
                if n is None:
                    return
                pace(n)
                conversation = chooser.choice(conversations)
                message_id = str(uuid.uuid4())
                body = {
                    "message_id": message_id,
                    "conversation_id": conversation["conversation_id"],
                    "sender_id": conversation["agent_id"],
                    "content": f"chaos {n} {message_id[:8]}",
                }
                _send_one(api, body, options, sent, recipients_of(conversation))

    with ThreadPoolExecutor(max_workers=options.clients) as pool:
        list(pool.map(client, range(options.clients)))


def _send_one(
    api: httpx.Client, body: dict[str, Any], options: ChaosOptions, sent: Sent, recipients: list[dict[str, Any]]
) -> None:
    deadline = time.monotonic() + options.give_up_seconds
    pause = 0.2
    while True:
        try:
            response = api.post("/v1/messages", json=body)
            answer = str(response.status_code)
        except httpx.HTTPError as exc:
            response, answer = None, type(exc).__name__
        with sent.lock:
            sent.answers[answer] += 1
        if response is not None and response.status_code == 202:
            accepted = response.json()
            with sent.lock:
                sent.accepted.append(
                    {**body, "sequence": accepted["sequence"], "at": time.monotonic(), "recipients": recipients}
                )
            return
        # 409: the same message_id is still being processed (its first request died with its container)
        if response is not None and 400 <= response.status_code < 500 and response.status_code not in (409, 429):
            with sent.lock:
                sent.rejected.append({**body, "answer": f"{response.status_code} {response.text[:300]}"})
            return
        if time.monotonic() > deadline or ABORT.is_set():
            with sent.lock:
                sent.gave_up.append(body)
            return
        with sent.lock:
            sent.retries += 1
        time.sleep(pause)
        pause = min(pause * 2, 3.0)


# ------------------------------------------------------------------ checking


def stored_messages(plan: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every message of the plan's conversations as the API lists them, by id; raises while the API cannot."""
    found: dict[str, dict[str, Any]] = {}
    headers = {"Authorization": f"Bearer {plan['admin_key']}"}
    with httpx.Client(base_url=plan["api_url"], headers=headers, timeout=REQUEST_TIMEOUT_SECONDS) as api:
        for conversation in plan["conversations"]:
            cursor = None
            while True:
                params = {"limit": 50, **({"before": cursor} if cursor else {})}
                path = f"/v1/conversations/{conversation['conversation_id']}/messages"
                response = api.get(path, params=params)
                response.raise_for_status()
                page = response.json()
                for item in page["items"]:
                    found[item["message_id"]] = item
                cursor = page.get("next_cursor")
                if not cursor:
                    break
    return found


def confirm_missing(plan: dict[str, Any], stored: dict[str, dict[str, Any]], wanted: list[str]) -> None:
    """Look up by id what the history pages did not list: a message stored but missing from its conversation's
    history is a listing fault, not a lost message."""
    headers = {"Authorization": f"Bearer {plan['admin_key']}"}
    with httpx.Client(base_url=plan["api_url"], headers=headers, timeout=REQUEST_TIMEOUT_SECONDS) as api:
        for message_id in wanted:
            if message_id in stored:
                continue
            response = api.get(f"/v1/messages/{message_id}")
            if response.status_code == 200:
                stored[message_id] = {**response.json(), "missing_from_history": True}


def group_views(plan: dict[str, Any], accepted: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """GET /v1/messages/{id} of every accepted GROUP message (its `deliveries`), by id; what is not found is
    left out (check() counts it lost)."""
    groups = {c["conversation_id"] for c in plan["conversations"] if c.get("group")}
    wanted = [a["message_id"] for a in accepted if a["conversation_id"] in groups]
    headers = {"Authorization": f"Bearer {plan['admin_key']}"}
    found: dict[str, dict[str, Any]] = {}
    with httpx.Client(base_url=plan["api_url"], headers=headers, timeout=REQUEST_TIMEOUT_SECONDS) as api:
        for message_id in wanted:
            response = api.get(f"/v1/messages/{message_id}")
            if response.status_code == 200:
                found[message_id] = response.json()
    return found


def recipient_view(item: dict[str, Any] | None, user_id: str | None) -> dict[str, Any] | None:
    """What the API says of one recipient's copy: the message itself (one-to-one) or its delivery (GROUP)."""
    if item is None or user_id is None:
        return item
    for delivery in item.get("deliveries") or []:
        if delivery["user_id"] == user_id:
            return dict(delivery)
    return {"status": "PENDING", "error": None}  # accepted, no delivery for this recipient (yet)


def wait_for_drain(plan: dict[str, Any], accepted: list[dict[str, Any]], timeout: float) -> tuple[bool, float]:
    """Until no accepted message is PENDING; (drained, when)."""
    wanted = {a["message_id"] for a in accepted}
    deadline = time.monotonic() + timeout
    while True:
        try:
            stored = stored_messages(plan)
            # a message the listing does not have is lost, not pending: check() counts it
            pending = [m for m in wanted if stored.get(m, {}).get("status") == "PENDING"]
            if not pending:
                return True, time.monotonic()
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            return False, time.monotonic()
        time.sleep(2.0)


def classify(item: dict[str, Any] | None, at_platform: int) -> str:
    """What became of one accepted message, from the API's view of it and the platform's 2xx answers."""
    if item is None:
        return "lost"
    if item["status"] == "PENDING":
        return "stuck_pending"
    if item["status"] == "FAILED":
        if at_platform:
            return "failed_but_delivered"
        return "failed" if item.get("error") else "failed_without_reason"
    return "delivered" if at_platform else "sent_but_not_at_platform"


def check(
    whatsapp: WhatsAppServer,
    stored: dict[str, dict[str, Any]],
    sent: Sent,
    t0: float,
    groups: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The figures, per recipient: each accepted message's copy for each of its recipients (a one-to-one
    message has one) at the platform (2xx answers only) and in the API (the message, or its GROUP delivery).

    `groups` are the GROUP messages as GET /v1/messages/{id} shows them (with `deliveries`), by id.
    """
    groups = groups or {}
    by_text = {a["content"]: a for a in sent.accepted}
    delivered_at_platform: Counter[tuple[str, str]] = Counter()  # (message_id, phone)
    last_sequence: dict[tuple[str, str], int] = {}  # (conversation_id, phone) -> the last sequence it got
    out_of_order: list[str] = []
    for record in whatsapp.records():
        if record.get("answered") != 200:
            continue
        message = by_text.get(record["body"].get("text", {}).get("body", ""))
        if message is None:
            continue
        phone = str(record["body"].get("to", ""))
        copy = (message["message_id"], phone)
        delivered_at_platform[copy] += 1
        if delivered_at_platform[copy] > 1:
            continue
        lane = (message["conversation_id"], phone)
        if message["sequence"] < last_sequence.get(lane, 0):
            out_of_order.append(f"{message['message_id']} to {phone}")
        last_sequence[lane] = max(last_sequence.get(lane, 0), message["sequence"])
    figures: Counter[str] = Counter()
    examples: dict[str, list[str]] = defaultdict(list)
    for message in sent.accepted:
        message_id = message["message_id"]
        item = groups.get(message_id, stored.get(message_id))
        if message_id in stored and message_id not in groups and len(message["recipients"]) > 1:
            item = {**stored[message_id], "deliveries": []}  # listed, but its deliveries could not be read
        for recipient in message["recipients"]:
            at_platform = delivered_at_platform[(message_id, recipient["phone"])]
            kind = classify(recipient_view(item, recipient["user_id"]), at_platform)
            figures[kind] += 1
            figures["recipients"] += 1
            if at_platform > 1:
                figures["sent_twice"] += 1
                examples["sent_twice"].append(f"{message_id} to {recipient['phone']}")
            if kind not in {"delivered", "failed"}:
                accepted_at = message["at"] - t0
                examples[kind].append(
                    f"{message_id} to {recipient['phone']} (accepted at {accepted_at:.1f} s, "
                    f"platform 2xx: {at_platform})"
                )
        if len(message["recipients"]) > 1:
            figures["group_messages"] += 1
        if (stored.get(message_id) or {}).get("missing_from_history"):
            figures["missing_from_history"] += 1
            examples["missing_from_history"].append(message_id)
    gave_up_stored = sum(1 for body in sent.gave_up if body["message_id"] in stored)
    return {
        "accepted": len(sent.accepted),
        "group_messages": figures["group_messages"],
        "recipients": figures["recipients"],
        "delivered": figures["delivered"],
        "failed": figures["failed"],
        "lost": figures["lost"],
        "sent_twice": figures["sent_twice"],
        "out_of_order": len(out_of_order),
        "stuck_pending": figures["stuck_pending"],
        "failed_without_reason": figures["failed_without_reason"],
        "failed_but_delivered": figures["failed_but_delivered"],
        "sent_but_not_at_platform": figures["sent_but_not_at_platform"],
        "missing_from_history": figures["missing_from_history"],
        "client_gave_up": len(sent.gave_up),
        "rejected": len(sent.rejected),
        "client_gave_up_but_stored": gave_up_stored,
        "client_retries": sent.retries,
        "answers": dict(sent.answers),
        "examples": {kind: ids[:5] for kind, ids in examples.items()}
        | {"out_of_order": out_of_order[:5], "rejected": [r["answer"] for r in sent.rejected[:5]]},
    }


# ------------------------------------------------------------------ run


def run(options: ChaosOptions, log: Callable[[str], None]) -> dict[str, Any]:
    # the harness kills and restarts the servers: always its own, never ones given by URL (nor a test session's)
    for variable in OWN_SERVER_VARIABLES:
        os.environ.pop(variable, None)
    os.environ["CHAT4ALL_SWEEP_PENDING_AFTER_SECONDS"] = str(options.sweep_pending_after_seconds)
    whatsapp = WhatsAppServer()
    started = time.monotonic()
    try:
        with throwaway_platform("chaos", {"WHATSAPP_API_BASE": whatsapp.url}) as platform:
            log(f"stack up in {time.monotonic() - started:.0f} s; setting up {options.conversations} conversations")
            plan = set_up(platform, options.conversations, 0, whatsapp)
            plan["conversations"] += set_up_groups(platform, options.groups, options.group_recipients)
            sent = Sent()
            t0 = time.monotonic()
            faults = Faults(platform, whatsapp, options, t0)
            faults.thread.start()
            send_all(plan, options, sent)
            sending_seconds = time.monotonic() - t0
            log(f"sent for {sending_seconds:.0f} s: {len(sent.accepted)} accepted; finishing the faults")
            faults.stop.set()
            faults.thread.join()
            last_fault_end = time.monotonic()
            drained, drained_at = wait_for_drain(plan, sent.accepted, options.drain_timeout_seconds)
            time.sleep(5.0)  # a send still in flight at the platform is counted too
            stored = stored_messages(plan)
            confirm_missing(plan, stored, [a["message_id"] for a in sent.accepted])
            result = check(whatsapp, stored, sent, t0, group_views(plan, sent.accepted))
            result |= {
                "drained": drained,
                "drain_seconds_after_last_fault": round(drained_at - last_fault_end, 1),
                "sending_seconds": round(sending_seconds, 1),
                "run_seconds": round(time.monotonic() - t0, 1),
                "faults": [asdict(record) for record in faults.records],
                "options": {k: v for k, v in asdict(options).items() if k != "faults"}
                | {"faults": list(options.faults)},
            }
            return result
    finally:
        whatsapp.close()


def markdown(result: dict[str, Any]) -> str:
    figures = (
        "accepted group_messages recipients delivered failed lost sent_twice out_of_order stuck_pending "
        "failed_without_reason failed_but_delivered sent_but_not_at_platform missing_from_history client_gave_up "
        "client_gave_up_but_stored rejected"
    ).split()
    lines = [
        "Per recipient from `recipients` to `sent_but_not_at_platform` (a one-to-one message has one recipient, a "
        "GROUP message one per customer of its group); messages otherwise.",
        "",
        "| figure | count |",
        "| --- | --- |",
        *(f"| {name} | {result[name]} |" for name in figures),
    ]
    lines.append(f"| time to drain after the last fault | {result['drain_seconds_after_last_fault']} s |")
    lines += ["", "| fault | at s | until s | what happened |", "| --- | --- | --- | --- |"]
    lines += [f"| {f['name']} | {f['started']:.1f} | {f['ended']:.1f} | {f['detail']} |" for f in result["faults"]]
    lines += ["", f"client answers: {result['answers']}; retries {result['client_retries']}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    defaults = ChaosOptions()
    parser.add_argument("--messages", type=int, default=defaults.messages)
    parser.add_argument("--clients", type=int, default=defaults.clients)
    parser.add_argument("--conversations", type=int, default=defaults.conversations, help="one-to-one ones")
    parser.add_argument("--groups", type=int, default=defaults.groups, help="GROUP conversations besides")
    parser.add_argument("--group-recipients", type=int, default=defaults.group_recipients)
    parser.add_argument("--faults", default=",".join(defaults.faults), help=f"in turn, of: {','.join(ALL_FAULTS)}")
    parser.add_argument("--down-seconds", type=float, default=defaults.down_seconds)
    parser.add_argument("--platform-fault-seconds", type=float, default=defaults.platform_fault_seconds)
    parser.add_argument("--gap-seconds", type=float, default=defaults.gap_seconds)
    parser.add_argument("--drain-timeout", type=float, default=defaults.drain_timeout_seconds)
    parser.add_argument("--sweep-after", type=int, default=defaults.sweep_pending_after_seconds)
    parser.add_argument("--rate", type=float, default=defaults.rate, help="messages/s over all clients (0: no limit)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    arguments = parser.parse_args(argv)
    faults = tuple(name for name in arguments.faults.split(",") if name)
    unknown = set(faults) - set(ALL_FAULTS)
    if unknown:
        parser.error(f"unknown faults: {', '.join(sorted(unknown))}")
    options = ChaosOptions(
        messages=arguments.messages,
        clients=arguments.clients,
        conversations=arguments.conversations,
        groups=arguments.groups,
        group_recipients=arguments.group_recipients,
        faults=faults,
        down_seconds=arguments.down_seconds,
        platform_fault_seconds=arguments.platform_fault_seconds,
        gap_seconds=arguments.gap_seconds,
        drain_timeout_seconds=arguments.drain_timeout,
        sweep_pending_after_seconds=arguments.sweep_after,
        rate=arguments.rate,
    )

    def abort(signum: int, frame: Any) -> None:
        ABORT.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, abort)
    signal.signal(signal.SIGTERM, abort)
    result = run(options, lambda line: print(line, file=sys.stderr, flush=True))
    print(markdown(result), flush=True)
    print(json.dumps({k: v for k, v in result.items() if k != "faults"}), flush=True)
    if arguments.json:
        arguments.json.write_text(json.dumps(result, indent=2) + "\n")
    clean = all(result[k] == 0 for k in ("lost", "sent_twice", "out_of_order", "stuck_pending"))
    return 0 if clean and result["drained"] else 1


if __name__ == "__main__":
    sys.exit(main())
