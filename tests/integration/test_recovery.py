"""Recovery on the real stack: the dead-letter consumer, the sweeper and the redrive command.

Records are put where SQS itself would put them (a route record moved to the route dead-letter queue, a
route record lost with the queue), with the route function's event source mapping disabled meanwhile, as
an operator would disable it (UpdateEventSourceMapping) to look at a queue.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import pytest

from tests.integration.conftest import wait_until_drained
from tests.integration.test_message_path import send, send_until_sent, wait_for_status
from tests.support.waiting import wait_until

if TYPE_CHECKING:
    from collections.abc import Iterator

    from devstack.stack import LocalPlatform
    from tests.integration.conftest import Api, WhatsAppSetup
    from tests.support.fake_whatsapp import FakeWhatsApp

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sqs(platform: LocalPlatform) -> Any:
    return boto3.client("sqs", endpoint_url=platform.urls["aws"], region_name="us-east-1")


def queue_url(platform: LocalPlatform, logical_id: str) -> str:
    assert platform.stack is not None
    return platform.stack.resolve({"Ref": logical_id})


@contextlib.contextmanager
def disabled(platform: LocalPlatform, *functions: str) -> Iterator[None]:
    assert platform.runtime is not None
    for function in functions:
        platform.runtime.set_event_sources_enabled(function, False)
    try:
        yield
    finally:
        for function in functions:
            platform.runtime.set_event_sources_enabled(function, True)


def take_route_record(sqs: Any, platform: LocalPlatform, message_id: str) -> dict[str, Any]:
    """Receive and delete the route queue's record of `message_id` (what a lost or moved record leaves)."""
    url = queue_url(platform, "RouteQueue")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        reply = sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1, MessageSystemAttributeNames=["All"]
        )
        for message in reply.get("Messages", []):
            if json.loads(message["Body"])["message_id"] == message_id:
                sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
                return dict(message)
            sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0)
    raise AssertionError(f"no route record of {message_id}")


def dead_letter_log(platform: LocalPlatform, needle: str) -> list[dict[str, Any]]:
    """The DeadLetterFunction's structured log entries that mention `needle`."""
    assert platform.runtime is not None
    path = platform.runtime.log_dir / "DeadLetterFunction.log"
    lines = path.read_text().splitlines() if path.is_file() else []
    return [json.loads(line) for line in lines if needle in line and line.startswith("{")]


def logged(platform: LocalPlatform, needle: str, message: str) -> bool:
    return any(entry.get("message") == message for entry in dead_letter_log(platform, needle))


@pytest.fixture(scope="module")
def failed_events(platform: LocalPlatform, sqs: Any) -> Iterator[Any]:
    """Every MessageFailed event on the bus, collected in a queue of the test's own through a rule."""
    events = boto3.client("events", endpoint_url=platform.urls["aws"], region_name="us-east-1")
    name = f"test-failed-{uuid.uuid4().hex[:8]}"
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    pattern = {"source": ["chat4all"], "detail-type": ["MessageFailed"]}
    events.put_rule(Name=name, EventBusName="chat4all", EventPattern=json.dumps(pattern))
    events.put_targets(Rule=name, EventBusName="chat4all", Targets=[{"Id": "q", "Arn": arn}])

    def received(message_id: str) -> list[dict[str, Any]]:
        found = []
        for _ in range(5):
            reply = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
            for message in reply.get("Messages", []):
                found.append(json.loads(message["Body"]))
        return [event for event in found if event["detail"]["message_id"] == message_id]

    yield received
    events.remove_targets(Rule=name, EventBusName="chat4all", Ids=["q"])
    events.delete_rule(Name=name, EventBusName="chat4all")
    sqs.delete_queue(QueueUrl=url)


def test_a_pending_message_moved_to_the_route_dead_letter_queue_ends_failed_with_a_reason(
    api: Api,
    platform: LocalPlatform,
    sqs: Any,
    whatsapp_conversation: WhatsAppSetup,
    fake_whatsapp: FakeWhatsApp,
    failed_events: Any,
) -> None:
    setup = whatsapp_conversation
    with disabled(platform, "RouteFunction"):
        accepted = send(api, setup, "stranded")
        record = take_route_record(sqs, platform, accepted["message_id"])
        # what SQS does when the receive count runs out: the same body, in the same group, on the DLQ
        sqs.send_message(
            QueueUrl=queue_url(platform, "RouteDeadLetterQueue"),
            MessageBody=record["Body"],
            MessageGroupId=setup.conversation_id,
            MessageDeduplicationId=record["MessageId"],
        )
        status = wait_for_status(api, accepted["message_id"], "FAILED", timeout=60)
    assert "dead-lettered" in status["history"][-1]["detail"]
    assert [h["status"] for h in status["history"]] == ["PENDING", "FAILED"]
    message = api.call("GET", f"/v1/messages/{accepted['message_id']}").json()
    assert "dead-lettered" in message["error"]
    events = failed_events(accepted["message_id"])
    assert [e["detail"]["status"] for e in events] == ["FAILED"]
    wait_until(lambda: logged(platform, accepted["message_id"], "route dead letter"), 30, "the consumer's log entry")
    # settled: the next message of the conversation goes out, the stranded one never does
    send_until_sent(api, setup, fake_whatsapp, "after it")
    assert [r.body["text"]["body"] for r in fake_whatsapp.sent_to(setup.customer_phone)] == ["after it"]


def test_a_dead_lettered_record_of_a_sent_message_changes_nothing(
    api: Api, platform: LocalPlatform, sqs: Any, whatsapp_conversation: WhatsAppSetup, fake_whatsapp: FakeWhatsApp
) -> None:
    setup = whatsapp_conversation
    accepted, _ = send_until_sent(api, setup, fake_whatsapp, "delivered already")
    body = json.dumps({"message_id": accepted["message_id"], "conversation_id": setup.conversation_id})
    dlq = queue_url(platform, "RouteDeadLetterQueue")
    sqs.send_message(QueueUrl=dlq, MessageBody=body, MessageGroupId=setup.conversation_id, MessageDeduplicationId="x")
    wait_until(lambda: logged(platform, accepted["message_id"], "route dead letter"), 60, "the DLQ consumed")
    entry = next(e for e in dead_letter_log(platform, accepted["message_id"]) if e["message"] == "route dead letter")
    assert entry["failed_now"] is False
    status = api.call("GET", f"/v1/messages/{accepted['message_id']}/status").json()
    assert [h["status"] for h in status["history"]] == ["PENDING", "SENT"]
    assert len(fake_whatsapp.sent_to(setup.customer_phone)) == 1


def status_envelope(wamid: str, status: str) -> str:
    """A status report as the ChannelStatusRule puts it on the status queue (and SQS then on its DLQ)."""
    detail = {
        "platform": "WHATSAPP",
        "platform_message_id": wamid,
        "status": status,
        "at": datetime.now(UTC).isoformat(),
    }
    return json.dumps(
        {"version": "0", "source": "chat4all.channels", "detail-type": "ChannelStatusReported", "detail": detail}
    )


def test_a_dead_lettered_status_report_is_applied_once_more_or_dropped_with_its_reason(
    api: Api, platform: LocalPlatform, sqs: Any, whatsapp_conversation: WhatsAppSetup, fake_whatsapp: FakeWhatsApp
) -> None:
    setup = whatsapp_conversation
    accepted, wamid = send_until_sent(api, setup, fake_whatsapp, "report on me")
    dlq = queue_url(platform, "StatusDeadLetterQueue")
    unknown = f"wamid.unknown-{uuid.uuid4().hex}"
    sqs.send_message(QueueUrl=dlq, MessageBody=status_envelope(wamid, "delivered".upper()))
    sqs.send_message(QueueUrl=dlq, MessageBody=status_envelope(unknown, "READ"))
    wait_for_status(api, accepted["message_id"], "DELIVERED", timeout=60)
    wait_until(lambda: logged(platform, unknown, "dead-lettered status report dropped"), 60, "the report dropped")
    dropped = [e for e in dead_letter_log(platform, unknown) if e["message"] == "dead-lettered status report dropped"]
    assert unknown in str(dropped[0]["reason"])


def test_the_sweeper_takes_up_a_message_whose_record_was_lost_once_however_often_it_runs(
    api: Api, platform: LocalPlatform, sqs: Any, whatsapp_conversation: WhatsAppSetup, fake_whatsapp: FakeWhatsApp
) -> None:
    setup = whatsapp_conversation
    with disabled(platform, "RouteFunction"):
        lost = send(api, setup, "lost with its queue")
        take_route_record(sqs, platform, lost["message_id"])
        time.sleep(1.5)  # the message is older than the sweep's pending_after_seconds (1 s): a timer, not an absence
        # two sweeps at once (a retried invocation next to a scheduled one), invoked as EventBridge invokes it
        event = {"pending_after_seconds": 1, "detail-type": "Scheduled Event", "source": "aws.events"}
        sweeps: list[Any] = []
        threads = [
            threading.Thread(target=lambda: sweeps.append(platform.invoke("SweeperFunction", event))) for _ in range(2)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert all(result.ok for result in sweeps), [r.payload for r in sweeps]
        assert all(result.json()["found"] >= 1 for result in sweeps)
    wait_for_status(api, lost["message_id"], "SENT", timeout=60)
    send_until_sent(api, setup, fake_whatsapp, "after it")
    # a second copy, had the two sweeps added one each, has been through the route function once the queue is empty
    wait_until_drained(platform, "RouteQueue")
    texts = [r.body["text"]["body"] for r in fake_whatsapp.sent_to(setup.customer_phone)]
    assert texts == ["lost with its queue", "after it"]


def run_redrive(platform: LocalPlatform) -> str:
    """`python -m chat4all.redrive` as an operator runs it, against this stack's queues."""
    env = {**os.environ, **platform.queue_environment(), "PYTHONPATH": str(REPO_ROOT / "layers")}
    done = subprocess.run(
        [sys.executable, "-m", "chat4all.redrive"], env=env, capture_output=True, text=True, check=True, timeout=120
    )
    return done.stdout


def test_redrive_moves_dead_letters_back_and_running_it_twice_sends_nothing_twice(
    api: Api, platform: LocalPlatform, sqs: Any, whatsapp_conversation: WhatsAppSetup, fake_whatsapp: FakeWhatsApp
) -> None:
    setup = whatsapp_conversation
    sent, wamid = send_until_sent(api, setup, fake_whatsapp, "sent before")
    route_dlq = queue_url(platform, "RouteDeadLetterQueue")
    with disabled(platform, "DeadLetterFunction"):
        with disabled(platform, "RouteFunction"):
            stranded = send(api, setup, "stranded, then redriven")
            record = take_route_record(sqs, platform, stranded["message_id"])
        for body, dedupe in (
            (record["Body"], record["MessageId"]),
            (json.dumps({"message_id": sent["message_id"], "conversation_id": setup.conversation_id}), "again"),
        ):
            sqs.send_message(
                QueueUrl=route_dlq,
                MessageBody=body,
                MessageGroupId=setup.conversation_id,
                MessageDeduplicationId=dedupe,
            )
        sqs.send_message(
            QueueUrl=queue_url(platform, "StatusDeadLetterQueue"), MessageBody=status_envelope(wamid, "READ")
        )
        first = run_redrive(platform)
        second = run_redrive(platform)
        # other tests' dead letters may be there too
        assert moved(first, "route") >= 2 and moved(first, "status") >= 1, first
        assert "refused" in second, second
        wait_for_status(api, stranded["message_id"], "SENT", timeout=60)
        wait_for_status(api, sent["message_id"], "READ", timeout=60)
        # the redriven record of the message sent before has been through the route function
        wait_until_drained(platform, "RouteQueue")
    texts = [r.body["text"]["body"] for r in fake_whatsapp.sent_to(setup.customer_phone)]
    assert texts == ["sent before", "stranded, then redriven"]
    # a third run after everything settled: nothing sent
    run_redrive(platform)
    for queue in ("RouteDeadLetterQueue", "RouteQueue"):
        wait_until_drained(platform, queue)
    assert len(fake_whatsapp.sent_to(setup.customer_phone)) == 2


def moved(output: str, label: str) -> int:
    line = next(line for line in output.splitlines() if line.startswith(f"{label}: "))
    return int(line.split()[1])
