"""SQS event source mappings of the local runtime against LocalStack's SQS: concurrency, FIFO groups, failures."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import pytest

from devstack.runtime import LocalRuntime, RuntimeOptions
from devstack.template import load_template
from tests.support.waiting import alive, wait_until

if TYPE_CHECKING:
    from collections.abc import Iterator

    from devstack.stack import LocalPlatform

RUNTIME_TESTS = Path(__file__).resolve().parents[1] / "runtime"
TEMPLATE = load_template(RUNTIME_TESTS / "sqs-template.yaml")


@pytest.fixture(scope="module")
def sqs(platform: LocalPlatform) -> Any:
    return boto3.client("sqs", endpoint_url=platform.urls["aws"], region_name="us-east-1")


@pytest.fixture(scope="module")
def queues(sqs: Any) -> Iterator[dict[str, tuple[str, str]]]:
    """The template's queues, created under names of their own: logical id -> (url, arn)."""
    run = uuid.uuid4().hex[:8]
    created = {}
    for logical_id, resource in TEMPLATE["Resources"].items():
        if resource["Type"] != "AWS::SQS::Queue":
            continue
        props = resource["Properties"]
        fifo = bool(props.get("FifoQueue"))
        attributes = {"VisibilityTimeout": str(props["VisibilityTimeout"])}
        if fifo:
            attributes |= {"FifoQueue": "true", "ContentBasedDeduplication": "true"}
        name = f"runtime-{logical_id}-{run}" + (".fifo" if fifo else "")
        url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        created[logical_id] = (url, arn)
    yield created
    for url, _ in created.values():
        sqs.delete_queue(QueueUrl=url)


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sqs-records")


@pytest.fixture(scope="module")
def runtime(platform: LocalPlatform, queues: dict[str, tuple[str, str]], records: Path) -> Iterator[LocalRuntime]:
    def resolve(value: Any) -> str:
        if "Ref" in value:
            return queues[value["Ref"]][0]
        logical_id, attribute = value["Fn::GetAtt"]
        assert attribute == "Arn"
        return queues[logical_id][1]

    variables = TEMPLATE["Globals"]["Function"]["Environment"]["Variables"]
    runtime = LocalRuntime(
        TEMPLATE,
        RUNTIME_TESTS,
        function_environment=lambda name: {
            **variables,
            "RECORD_DIR": str(records),
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
        },
        log_dir=records / "logs",
        resolve=resolve,
        aws_endpoint_url=platform.urls["aws"],
        options=RuntimeOptions(sqs_wait_seconds=1),
        log=print,
    )
    runtime.start()
    try:
        yield runtime
    finally:
        runtime.stop()


def batches(records: Path, function: str) -> list[dict[str, Any]]:
    folder = records / function
    return [json.loads(p.read_text()) for p in folder.glob("batch-*.json")] if folder.exists() else []


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = peak = 0
    for _, change in edges:
        running += change
        peak = max(peak, running)
    return peak


def queue_is_empty(sqs: Any, url: str) -> bool:
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
    return all(attributes[name] == "0" for name in names)


def test_a_standard_queue_runs_batches_concurrently_within_the_functions_concurrency(
    runtime: LocalRuntime, sqs: Any, queues: dict[str, tuple[str, str]], records: Path
) -> None:
    # GIVEN 12 messages, two of which the function reports as failed on their first receive
    url = queues["StandardQueue"][0]
    bodies = [{"n": n, "fail_first": n in (3, 8)} for n in range(12)]
    for start in range(0, 12, 10):
        entries = [{"Id": str(i), "MessageBody": json.dumps(b)} for i, b in enumerate(bodies[start : start + 10])]
        sqs.send_message_batch(QueueUrl=url, Entries=entries)

    def processed() -> list[dict[str, Any]]:
        return [m for b in batches(records, "StandardConsumer") for m in b["messages"] if not m["failed"]]

    wait_until(lambda: len(processed()) >= 12, timeout=60, what="all 12 messages processed")
    wait_until(lambda: queue_is_empty(sqs, url), timeout=30, what="the queue emptied")
    # THEN each message succeeded exactly once; the failed ones came back and succeeded on their second receive
    done = processed()
    assert sorted(m["body"]["n"] for m in done) == list(range(12))
    failed = [m for b in batches(records, "StandardConsumer") for m in b["messages"] if m["failed"]]
    assert sorted(m["body"]["n"] for m in failed) == [3, 8]
    assert {m["body"]["n"]: m["receive_count"] for m in done if m["body"]["fail_first"]} == {3: 2, 8: 2}
    # AND batches ran at the same time, never more than ReservedConcurrentExecutions (3)
    all_batches = batches(records, "StandardConsumer")
    peak = most_at_once([(b["started"], b["ended"]) for b in all_batches])
    assert 2 <= peak <= 3, peak
    assert len({b["pid"] for b in all_batches}) <= 3


def test_a_fifo_queue_runs_one_batch_per_group_at_a_time_and_many_groups_at_once(
    runtime: LocalRuntime, sqs: Any, queues: dict[str, tuple[str, str]], records: Path
) -> None:
    # GIVEN four conversations (message groups) of eight ordered messages each, sent interleaved
    url = queues["FifoQueue"][0]
    groups = [f"group-{g}-{uuid.uuid4().hex[:6]}" for g in range(4)]
    for n in range(8):
        entries = [
            {"Id": str(i), "MessageBody": json.dumps({"group": group, "n": n}), "MessageGroupId": group}
            for i, group in enumerate(groups)
        ]
        sqs.send_message_batch(QueueUrl=url, Entries=entries)

    def processed() -> list[dict[str, Any]]:
        return [m for b in batches(records, "FifoConsumer") for m in b["messages"]]

    wait_until(lambda: len(processed()) >= 32, timeout=90, what="all 32 messages processed")
    wait_until(lambda: queue_is_empty(sqs, url), timeout=30, what="the queue emptied")
    all_batches = sorted(batches(records, "FifoConsumer"), key=lambda b: b["started"])
    # THEN each group's messages were processed once each, in the order they were sent
    order: dict[str, list[int]] = defaultdict(list)
    for batch in all_batches:
        for message in batch["messages"]:
            order[message["group"]].append(message["body"]["n"])
    assert order == {group: list(range(8)) for group in groups}
    # AND no two batches holding the same group ever overlapped in time
    by_group: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for batch in all_batches:
        for group in {m["group"] for m in batch["messages"]}:
            by_group[group].append((batch["started"], batch["ended"]))
    for group, intervals in by_group.items():
        assert most_at_once(intervals) == 1, group
    # AND batches of different groups did run at the same time, within the function's concurrency (4)
    assert 2 <= most_at_once([(b["started"], b["ended"]) for b in all_batches]) <= 4


def test_a_batch_past_the_timeout_is_killed_and_its_message_comes_back(
    runtime: LocalRuntime, sqs: Any, queues: dict[str, tuple[str, str]], records: Path
) -> None:
    url = queues["SlowQueue"][0]
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"hang_first": True, "n": 1}))
    folder = records / "SlowConsumer"
    wait_until(lambda: folder.exists() and list(folder.glob("hung-*.json")), timeout=30, what="the first attempt")
    hung_pid = json.loads(next(folder.glob("hung-*.json")).read_text())["pid"]
    # the invocation is killed at its 2 s Timeout; after the 3 s visibility timeout the message comes back
    wait_until(lambda: batches(records, "SlowConsumer"), timeout=40, what="the second attempt")
    (batch,) = batches(records, "SlowConsumer")
    assert batch["messages"][0]["receive_count"] == 2
    assert batch["pid"] != hung_pid
    assert not alive(hung_pid)
    # the second attempt's batch was recorded before its record was deleted: once the queue is empty no third
    # attempt can come, so the count is final
    wait_until(lambda: queue_is_empty(sqs, url), timeout=30, what="the queue emptied")
    assert len(batches(records, "SlowConsumer")) == 1


def test_a_message_that_arrives_while_the_runtime_stops_is_given_back_at_once(
    platform: LocalPlatform, sqs: Any, tmp_path: Path
) -> None:
    # GIVEN a consumer whose queue hides received messages for 5 minutes, its poller in a 5 s long poll
    url = sqs.create_queue(QueueName=f"runtime-parked-{uuid.uuid4().hex[:8]}", Attributes={"VisibilityTimeout": "300"})[
        "QueueUrl"
    ]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    template = {
        "Resources": {
            "ParkedQueue": {"Type": "AWS::SQS::Queue", "Properties": {}},
            "ParkedConsumer": {
                "Type": "AWS::Serverless::Function",
                "Properties": {
                    "CodeUri": "functions/consumer/",
                    "Handler": "app.lambda_handler",
                    "Events": {"Q": {"Type": "SQS", "Properties": {"Queue": {"Fn::GetAtt": ["ParkedQueue", "Arn"]}}}},
                },
            },
        }
    }
    runtime = LocalRuntime(
        template,
        RUNTIME_TESTS,
        function_environment=lambda name: {"RECORD_DIR": str(tmp_path), "BATCH_SECONDS": "0"},
        log_dir=tmp_path / "logs",
        resolve=lambda value: url if "Ref" in value else arn,
        aws_endpoint_url=platform.urls["aws"],
        options=RuntimeOptions(sqs_wait_seconds=5),
        log=print,
    ).start()
    try:
        time.sleep(1)  # the poller is in its long poll
        stopping = threading.Thread(target=runtime.stop)
        stopping.start()
        time.sleep(0.5)
        # WHEN a message arrives during the stop, while that long poll is still open
        sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"n": 1}))
        stopping.join(30)
        assert not stopping.is_alive()
        # THEN it was not processed, and it is visible again at once instead of in five minutes
        assert batches(tmp_path, "ParkedConsumer") == []
        received = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=2).get("Messages", [])
        assert [json.loads(m["Body"]) for m in received] == [{"n": 1}]
    finally:
        runtime.stop()
        sqs.delete_queue(QueueUrl=url)
