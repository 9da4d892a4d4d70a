"""The local runtime's parts that need no process: template reading, schedules, SQS poller scaling."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from devstack.lambda_service import InvocationResult
from devstack.runtime import LocalRuntime, RuntimeOptions
from devstack.schedules import scheduled_event
from devstack.sqs_source import InvalidBatchResponseError, SqsEventSource, failed_message_ids
from devstack.template import (
    QueueSubscription,
    ScheduleSubscription,
    cloudformation,
    functions,
    infrastructure_template,
    load_template,
    rate_seconds,
    schedule_subscriptions,
)

TEST_TEMPLATE = load_template(Path(__file__).resolve().parents[1] / "runtime" / "template.yaml")
ROOT_TEMPLATE = load_template(Path(__file__).resolve().parents[2] / "template.yaml")


def epoch(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


# ------------------------------------------------------------------ template


def test_functions_are_read_from_the_transformed_template_globals_applied() -> None:
    echo = functions(TEST_TEMPLATE)["EchoFunction"]
    assert (echo.handler, echo.timeout_seconds, echo.memory_mb, echo.reserved_concurrency) == (
        "app.lambda_handler",
        10,
        512,
        None,
    )
    assert echo.layer_paths == ("layer/",)  # a python BuildMethod layer: its ContentUri is /opt/python
    assert echo.environment == {"SHARED_SETTING": "from-globals", "WHO_AM_I": "echo"}
    assert functions(TEST_TEMPLATE)["LimitedFunction"].reserved_concurrency == 2
    ingest = functions(ROOT_TEMPLATE)["IngestFunction"]
    assert (ingest.code_uri, ingest.layer_paths, ingest.runtime) == ("functions/ingest/", ("layers/",), "python3.13")
    assert ingest.environment["ROUTE_QUEUE_URL"] == {"Ref": "RouteQueue"}  # resolved by the deployed stack


def test_containers_per_function_reserved_then_the_override_then_local_metadata_then_the_default() -> None:
    def function(metadata: dict[str, Any] | None = None, **properties: Any) -> dict[str, Any]:
        props = {"CodeUri": "f/", "Handler": "app.handler", "Runtime": "python3.13", **properties}
        resource = {"Type": "AWS::Serverless::Function", "Properties": props}
        return {**resource, "Metadata": metadata} if metadata is not None else resource

    template = {
        "Transform": "AWS::Serverless-2016-10-31",
        "Resources": {
            "Capped": function({"LocalConcurrency": 9}, ReservedConcurrentExecutions=2),
            "Busy": function({"LocalConcurrency": 6}),
            "Plain": function(),
        },
    }

    def containers(options: RuntimeOptions) -> dict[str, int]:
        here = Path()
        runtime = LocalRuntime(template, here, function_environment=lambda _: {}, log_dir=here, options=options)
        return {spec.name: spec.concurrency for spec in runtime.function_specs()}

    assert containers(RuntimeOptions.from_env({})) == {"Capped": 2, "Busy": 6, "Plain": 4}
    assert containers(RuntimeOptions.from_env({"CHAT4ALL_FUNCTION_CONCURRENCY": "1"})) == {
        "Capped": 2,
        "Busy": 1,
        "Plain": 1,
    }
    assert functions(ROOT_TEMPLATE)["IngestFunction"].local_concurrency == 6
    for bad in (0, "6", True):
        template["Resources"]["Busy"]["Metadata"] = {"LocalConcurrency": bad}
        with pytest.raises(ValueError, match=r"Busy: Metadata\.LocalConcurrency"):
            functions(template)


def test_the_infrastructure_is_every_resource_but_what_the_runtime_stands_in_for() -> None:
    infra = infrastructure_template(cloudformation(ROOT_TEMPLATE))
    types = {resource["Type"] for resource in infra["Resources"].values()}
    assert not any(t.startswith(("AWS::Lambda::", "AWS::ApiGatewayV2::", "AWS::IAM::")) for t in types)
    assert {"RouteQueue", "StatusQueue", "EventBus", "CredentialsKey", "ChannelStatusRule"} <= set(infra["Resources"])
    assert "SweeperFunctionSweep" not in infra["Resources"]  # the schedule's rule targets a local function
    assert "ApiUrl" not in infra["Outputs"] and "RouteQueueUrl" in infra["Outputs"]


def test_schedules_are_the_rules_that_invoke_a_function_at_a_rate() -> None:
    (schedule,) = schedule_subscriptions(TEST_TEMPLATE)
    assert schedule == ScheduleSubscription("ScheduledFunction", "ScheduledFunctionEveryMinute", 60)
    assert [rate_seconds(f"rate({e})") for e in ("5 minutes", "1 hour", "2 days")] == [300, 3600, 172800]
    for unsupported in ("cron(0 3 * * ? *)", "at(2030-01-01T00:00:00)", "rate(0 minutes)", "rate(1 fortnight)"):
        with pytest.raises(ValueError, match="rate"):
            rate_seconds(unsupported)


def test_a_scheduled_event_is_eventbridges() -> None:
    rule = ScheduleSubscription("Sweeper", "SweeperEvery5", 300)
    event = scheduled_event(rule, epoch("2026-01-01T10:05:00"))
    assert (event["detail-type"], event["source"], event["time"]) == (
        "Scheduled Event",
        "aws.events",
        "2026-01-01T10:05:00Z",
    )
    assert event["resources"] == ["arn:aws:events:us-east-1:000000000000:rule/SweeperEvery5"]


# ------------------------------------------------------------------ SQS


def test_binary_message_attributes_reach_the_function_base64_encoded() -> None:
    from devstack.sqs_source import sqs_record

    for attribute in (
        {"BinaryValue": "AAE=", "DataType": "Binary"},
        {"BinaryValue": b"\x00\x01", "DataType": "Binary"},
    ):
        message = {"MessageId": "m", "ReceiptHandle": "r", "Body": "{}", "MessageAttributes": {"blob": attribute}}
        record = sqs_record(message, "arn:aws:sqs:us-east-1:000000000000:q")
        assert record["messageAttributes"]["blob"]["binaryValue"] == "AAE="


def test_batch_item_failures_are_validated_as_lambda_does() -> None:
    ids = {"a", "b"}
    assert failed_message_ids(None, ids) == set()
    assert failed_message_ids({"batchItemFailures": []}, ids) == set()
    assert failed_message_ids({"batchItemFailures": [{"itemIdentifier": "b"}]}, ids) == {"b"}
    for invalid in ({"batchItemFailures": [{"itemIdentifier": "zz"}]}, {"batchItemFailures": [{}]}, "failed"):
        with pytest.raises(InvalidBatchResponseError):
            failed_message_ids(invalid, ids)


class ScriptedQueue:
    """SQS stand-in for the poller logic: hands out the messages put in it; an empty receive waits a little."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.deleted: list[str] = []
        self.delete_calls = 0

    def put(self, count: int) -> None:
        start = len(self.messages) + len(self.deleted)
        for n in range(start, start + count):
            self.messages.append({"MessageId": f"m{n}", "ReceiptHandle": f"r{n}", "Body": json.dumps({"n": n})})

    async def call(self, operation: str, params: dict[str, Any], *, timeout: float = 30.0) -> dict[str, Any]:
        if operation == "ReceiveMessage":
            taken = self.messages[: params["MaxNumberOfMessages"]]
            del self.messages[: len(taken)]
            if not taken:
                await asyncio.sleep(0.01)
            return {"Messages": taken}
        assert operation == "DeleteMessageBatch"
        self.delete_calls += 1
        self.deleted += [e["ReceiptHandle"] for e in params["Entries"]]
        return {}


def test_pollers_scale_up_under_a_backlog_and_back_down_to_one_when_quiet() -> None:
    queue = ScriptedQueue()
    running = 0
    peak = 0

    async def invoke(function: str, payload: bytes) -> InvocationResult:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.05)
        running -= 1
        return InvocationResult(b"{}")

    async def scenario() -> SqsEventSource:
        source = SqsEventSource(
            subscription=QueueSubscription("Consumer", "Queue", batch_size=1),
            queue_url="q",
            queue_arn="arn:aws:sqs:us-east-1:000000000000:q",
            sqs=queue,
            invoke=invoke,
            max_pollers=4,
            wait_seconds=0,
        )
        source.start()
        for _ in range(3):  # bursts separated by quiet spells
            queue.put(20)
            while len(queue.deleted) < 20 * (_ + 1):
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.3)
            assert source._polling == 1  # the quiet queue is watched by exactly one poller
        await source.stop()
        return source

    source = asyncio.run(scenario())
    assert sorted(queue.deleted, key=lambda r: int(r[1:])) == [f"r{n}" for n in range(60)]
    assert 1 < peak <= 4
    assert source.batches == 60
    assert queue.delete_calls == 60  # one DeleteMessageBatch per batch of one
