"""The local runtime's parts that need no process: template reading, schedules, policies, SQS poller scaling."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from devstack.authorizers import InvalidAuthorizerResponseError, policy_allows
from devstack.lambda_service import InvocationResult
from devstack.runtime import LocalRuntime, RuntimeOptions
from devstack.schedules import Schedule, ScheduleExpressionError, scheduled_event
from devstack.sqs_source import InvalidBatchResponseError, SqsEventSource, failed_message_ids
from devstack.template import (
    QueueSubscription,
    ScheduleSubscription,
    function_config,
    http_authorizers,
    http_routes,
    load_template,
    schedule_subscriptions,
)

TEST_TEMPLATE = load_template(Path(__file__).resolve().parents[1] / "runtime" / "template.yaml")
ROOT_TEMPLATE = load_template(Path(__file__).resolve().parents[2] / "template.yaml")


def epoch(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


# ------------------------------------------------------------------ template


def test_function_config_applies_globals_and_its_own_values() -> None:
    echo = function_config(TEST_TEMPLATE, "EchoFunction")
    assert (echo.handler, echo.timeout_seconds, echo.memory_mb, echo.reserved_concurrency) == (
        "app.lambda_handler",
        10,
        512,
        None,
    )
    assert echo.layer_paths == ("layer/",)  # a python BuildMethod layer: its ContentUri is /opt/python
    assert function_config(TEST_TEMPLATE, "LimitedFunction").reserved_concurrency == 2
    ingest = function_config(ROOT_TEMPLATE, "IngestFunction")
    assert (ingest.code_uri, ingest.layer_paths, ingest.runtime) == ("functions/ingest/", ("layers/",), "python3.13")


def test_containers_per_function_reserved_then_the_override_then_local_metadata_then_the_default() -> None:
    def function(metadata: dict[str, Any] | None = None, **properties: Any) -> dict[str, Any]:
        resource = {"Type": "AWS::Serverless::Function", "Properties": {"CodeUri": "f/", **properties}}
        return {**resource, "Metadata": metadata} if metadata is not None else resource

    template = {
        "Resources": {
            "Capped": function({"LocalConcurrency": 9}, ReservedConcurrentExecutions=2),
            "Busy": function({"LocalConcurrency": 6}),
            "Plain": function(),
        }
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
    assert function_config(ROOT_TEMPLATE, "IngestFunction").local_concurrency == 6
    for bad in (0, "6", True):
        template["Resources"]["Busy"]["Metadata"] = {"LocalConcurrency": bad}
        with pytest.raises(ValueError, match=r"Busy: Metadata\.LocalConcurrency"):
            function_config(template, "Busy")


def test_routes_take_the_default_authorizer_unless_they_opt_out() -> None:
    routes = {r.path: r.authorizer for r in http_routes(TEST_TEMPLATE)}
    assert routes["/private"] == "SimpleAuth"
    assert routes["/echo"] is None
    assert routes["/uncached"] == "UncachedAuth"
    authorizers = http_authorizers(TEST_TEMPLATE)
    assert authorizers["SimpleAuth"].function == "AuthorizerFunction"
    assert authorizers["SimpleAuth"].identity_headers == ("Authorization",)
    assert authorizers["SimpleAuth"].simple_responses is True
    assert authorizers["UncachedAuth"].reauthorize_every_seconds == 0
    assert authorizers["PolicyAuth"].simple_responses is False
    assert authorizers["PolicyAuth"].identity_query_strings == ("token",)
    assert authorizers["PolicyAuth"].reauthorize_every_seconds == 300


def test_schedules_are_read_from_schedule_and_schedule_v2_events() -> None:
    template = {
        "Resources": {
            "Sweeper": {
                "Type": "AWS::Serverless::Function",
                "Properties": {
                    "Events": {
                        "Every5": {"Type": "Schedule", "Properties": {"Schedule": "rate(5 minutes)"}},
                        "Off": {"Type": "Schedule", "Properties": {"Schedule": "rate(1 day)", "Enabled": False}},
                        "V2": {
                            "Type": "ScheduleV2",
                            "Properties": {"ScheduleExpression": "cron(0 3 * * ? *)", "Input": '{"a": 1}'},
                        },
                    }
                },
            }
        }
    }
    assert schedule_subscriptions(template) == [
        ScheduleSubscription("Sweeper", "Every5", "Schedule", "rate(5 minutes)"),
        ScheduleSubscription("Sweeper", "V2", "ScheduleV2", "cron(0 3 * * ? *)", '{"a": 1}'),
    ]


# ------------------------------------------------------------------ schedules


def test_a_rate_fires_one_period_after_creation_then_every_period() -> None:
    schedule = Schedule("rate(5 minutes)")
    start = epoch("2026-01-01T10:00:07")
    first = schedule.next_after(start, start)
    assert first == start + 300
    assert schedule.next_after(first, start) == start + 600  # type: ignore[operator]


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        ("cron(0/15 * * * ? *)", "2026-01-01T10:07:00", "2026-01-01T10:15:00"),
        ("cron(0 10 ? * MON-FRI *)", "2026-01-02T11:00:00", "2026-01-05T10:00:00"),  # Fri 11:00 -> Mon
        ("cron(0 10 ? * 2-6 *)", "2026-01-02T11:00:00", "2026-01-05T10:00:00"),  # AWS: 2-6 is MON-FRI
        ("cron(0 8 ? * 1 *)", "2026-01-01T00:00:00", "2026-01-04T08:00:00"),  # AWS: 1 is Sunday
        ("cron(30 6 L * ? *)", "2026-02-01T00:00:00", "2026-02-28T06:30:00"),
        ("cron(0 12 ? * 6#2 *)", "2026-01-01T00:00:00", "2026-01-09T12:00:00"),  # second Friday
        ("cron(0 0 1 1 ? 2028)", "2026-03-01T00:00:00", "2028-01-01T00:00:00"),
    ],
)
def test_aws_cron_expressions(expression: str, after: str, expected: str) -> None:
    assert Schedule(expression).next_after(epoch(after), 0.0) == epoch(expected)


def test_an_at_expression_fires_once_in_its_time_zone() -> None:
    schedule = Schedule("at(2030-06-01T09:30:00)", "America/Sao_Paulo")
    assert schedule.next_after(epoch("2030-01-01T00:00:00"), 0.0) == epoch("2030-06-01T12:30:00")
    assert schedule.next_after(epoch("2030-06-01T12:30:00"), 0.0) is None


def test_a_cron_in_a_past_year_never_fires_and_bad_expressions_are_refused() -> None:
    assert Schedule("cron(0 0 1 1 ? 2020)").next_after(epoch("2026-01-01T00:00:00"), 0.0) is None
    for bad in ("rate(0 minutes)", "rate(1 fortnight)", "cron(* * * *)", "cron(61 * * * ? *)", "every minute"):
        with pytest.raises(ScheduleExpressionError):
            Schedule(bad)


def test_a_scheduled_event_is_eventbridges_or_the_schedules_input() -> None:
    rule = ScheduleSubscription("Sweeper", "Every5", "Schedule", "rate(5 minutes)")
    event = scheduled_event(rule, epoch("2026-01-01T10:05:00"))
    assert (event["detail-type"], event["source"], event["time"]) == (
        "Scheduled Event",
        "aws.events",
        "2026-01-01T10:05:00Z",
    )
    assert event["resources"] == ["arn:aws:events:us-east-1:000000000000:rule/SweeperEvery5"]
    with_input = ScheduleSubscription("Sweeper", "V2", "ScheduleV2", "rate(1 hour)", '{"sweep": true}')
    assert scheduled_event(with_input, 0.0) == {"sweep": True}


# ------------------------------------------------------------------ authorizer policies

ROUTE = "arn:aws:execute-api:us-east-1:000000000000:local/$default/GET/v1/messages"


def statement(effect: str, resource: str, action: str = "execute-api:Invoke") -> dict[str, str]:
    return {"Effect": effect, "Action": action, "Resource": resource}


def test_policies_allow_only_a_matching_allow_and_an_explicit_deny_wins() -> None:
    allow_all = statement("Allow", "arn:aws:execute-api:us-east-1:000000000000:local/*")
    assert policy_allows({"Statement": [allow_all]}, ROUTE)
    assert policy_allows({"Statement": allow_all}, ROUTE)
    assert not policy_allows({"Statement": [statement("Allow", "arn:*:execute-api:*:*:other/*")]}, ROUTE)
    assert not policy_allows({"Statement": [allow_all, statement("Deny", "*/GET/v1/*")]}, ROUTE)
    assert not policy_allows({"Statement": [statement("Allow", "*", "execute-api:ManageConnections")]}, ROUTE)
    assert policy_allows({"Statement": [statement("Allow", "*", "execute-api:*")]}, ROUTE)
    assert not policy_allows(
        {"Statement": [statement("Allow", "arn:aws:execute-api:us-east-1:00000000000?:local")]}, ROUTE
    )


@pytest.mark.parametrize("policy", [None, {}, {"Statement": "x"}, {"Statement": [{"Effect": "Maybe"}]}])
def test_a_malformed_policy_is_an_authorizer_failure(policy: Any) -> None:
    with pytest.raises(InvalidAuthorizerResponseError):
        policy_allows(policy, ROUTE)


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
