"""The template's CloudWatch alarms and dashboard (issue 19) watch what exists: every dead-letter queue, every
function, the HTTP API, the route queue, and the accept-to-SENT latency under the very name and dimensions the code
emits it with (a rename in chat4all.observability, or a dimension more or less, fails here, not in production as
an alarm that never fires)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from devstack.template import cloudformation, evaluate_conditions, infrastructure_template, load_template

if TYPE_CHECKING:
    from collections.abc import Iterator

    import pytest

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = load_template(ROOT / "template.yaml")
RESOURCES: dict[str, Any] = TEMPLATE["Resources"]
GLOBAL_VARIABLES: dict[str, Any] = TEMPLATE["Globals"]["Function"]["Environment"]["Variables"]
ALARMS = {lid: res["Properties"] for lid, res in RESOURCES.items() if res["Type"] == "AWS::CloudWatch::Alarm"}
FUNCTIONS = sorted(lid for lid, res in RESOURCES.items() if res["Type"] == "AWS::Serverless::Function")
SUB_NAME = re.compile(r"\$\{(?!!)([^}]+)\}")


def watched(alarm: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(namespace, metric name, dimensions) of every metric an alarm reads, metric math or not."""
    if "Metrics" not in alarm:
        yield alarm["Namespace"], alarm["MetricName"], {d["Name"]: d["Value"] for d in alarm.get("Dimensions", [])}
        return
    for query in alarm["Metrics"]:
        if "MetricStat" in query:
            metric = query["MetricStat"]["Metric"]
            dimensions = {d["Name"]: d["Value"] for d in metric.get("Dimensions", [])}
            yield metric["Namespace"], metric["MetricName"], dimensions


def alarms_on(namespace: str, metric_name: str, dimensions: dict[str, Any]) -> set[str]:
    return {lid for lid, alarm in ALARMS.items() if (namespace, metric_name, dimensions) in watched(alarm)}


def queue_name(queue: str) -> dict[str, Any]:
    return {"QueueName": {"Fn::GetAtt": [queue, "QueueName"]}}


def dead_letter_queues() -> set[str]:
    """Every queue some queue's RedrivePolicy moves records to."""
    found = set()
    for res in RESOURCES.values():
        target = (res.get("Properties") or {}).get("RedrivePolicy", {}).get("deadLetterTargetArn")
        if res["Type"] == "AWS::SQS::Queue" and target is not None:
            found.add(target["Fn::GetAtt"][0])
    return found


def test_every_dead_letter_queue_alarms_on_any_record() -> None:
    queues = dead_letter_queues()
    assert {"RouteDeadLetterQueue", "StatusDeadLetterQueue", "FileEventsDeadLetterQueue"} <= queues
    for queue in sorted(queues):
        visible = alarms_on("AWS/SQS", "ApproximateNumberOfMessagesVisible", queue_name(queue))
        assert visible, f"{queue}: no alarm on its records"
        for lid in visible:
            alarm = ALARMS[lid]
            assert (alarm["ComparisonOperator"], alarm["Threshold"]) == ("GreaterThanThreshold", 0), lid
            # records in flight count too: the dead-letter consumer holds a record it cannot settle yet
            assert ("AWS/SQS", "ApproximateNumberOfMessagesNotVisible", queue_name(queue)) in watched(alarm), lid


def emitted_accept_to_sent(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> set[str]:
    """What chat4all.observability writes for one accept-to-SENT measurement, with the functions' Powertools
    settings from the template: (namespace, metric name, dimensions) of every EMF document, as JSON."""
    for name, value in GLOBAL_VARIABLES.items():
        if name.startswith("POWERTOOLS_") and isinstance(value, str):
            monkeypatch.setenv(name, value)
    monkeypatch.delenv("POWERTOOLS_METRICS_DISABLED", raising=False)
    from chat4all import observability, telemetry

    assert observability.metrics is not None  # imported: its EMF sink is the registered one
    capsys.readouterr()
    telemetry.accept_to_sent("whatsapp", 6000.0)
    found = set()
    for line in capsys.readouterr().out.splitlines():
        document = json.loads(line)
        for directive in document["_aws"]["CloudWatchMetrics"]:
            for metric in directive["Metrics"]:
                for dimension_set in directive["Dimensions"]:
                    dimensions = {name: document[name] for name in dimension_set}
                    found.add(json.dumps([directive["Namespace"], metric["Name"], dimensions], sort_keys=True))
    return found


def test_the_latency_alarm_watches_what_the_code_emits(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    emitted = emitted_accept_to_sent(monkeypatch, capsys)
    alarm = ALARMS["AcceptToSentLatencyAlarm"]
    ((namespace, metric_name, dimensions),) = watched(alarm)
    assert json.dumps([namespace, metric_name, dimensions], sort_keys=True) in emitted, emitted
    # every platform together: the per-platform documents carry a dimension an alarm cannot search
    assert "platform" not in dimensions
    assert any('"platform"' in document for document in emitted)
    # p95 over 5 s, the metric being in milliseconds
    assert (alarm["ExtendedStatistic"], alarm["Threshold"]) == ("p95", 5000)


def test_every_function_alarms_on_errors_and_throttles() -> None:
    for function in FUNCTIONS:
        for metric in ("Errors", "Throttles"):
            assert alarms_on("AWS/Lambda", metric, {"FunctionName": {"Ref": function}}), f"{function} {metric}"


def test_the_api_5xx_rate_and_the_route_queue_age() -> None:
    api = {"ApiId": {"Ref": "HttpApi"}}
    ((rate,),) = {frozenset(alarms_on("AWS/ApiGateway", "5xx", api) & alarms_on("AWS/ApiGateway", "Count", api))}
    assert "errors / requests" in next(q["Expression"] for q in ALARMS[rate]["Metrics"] if "Expression" in q)
    assert alarms_on("AWS/SQS", "ApproximateAgeOfOldestMessage", queue_name("RouteQueue"))


def test_every_alarm_notifies_the_topic_only_when_one_is_given() -> None:
    actions = {"Fn::If": ["NotifyAlarms", [{"Ref": "AlarmTopicArn"}], {"Ref": "AWS::NoValue"}]}
    for lid, alarm in ALARMS.items():
        assert alarm["AlarmActions"] == alarm["OKActions"] == actions, lid
    cfn = cloudformation(TEMPLATE)
    assert evaluate_conditions(cfn, {})["NotifyAlarms"] is False
    topic = "arn:aws:sns:us-east-1:123456789012:chat4all-alarms"
    assert evaluate_conditions(cfn, {"AlarmTopicArn": topic})["NotifyAlarms"] is True


def dashboard() -> tuple[dict[str, Any], set[str]]:
    """The dashboard's body as CloudWatch gets it (Fn::Sub's names as placeholders), and the names it refers to."""
    body = RESOURCES["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    names = {name.split(".")[0] for name in SUB_NAME.findall(body)}
    return json.loads(SUB_NAME.sub("placeholder", body).replace("${!", "${")), names


def dashboard_metrics(widget: dict[str, Any]) -> list[list[str]]:
    """A metric widget's metrics, namespace, name and dimensions, with CloudWatch's shorthand ("." the row above's
    value, "..." the row above) written out; expressions are left out."""
    rows: list[list[str]] = []
    for row in widget["properties"].get("metrics", []):
        parts = [part for part in row if isinstance(part, str)]
        if not parts:
            continue
        if parts[0] == "...":
            parts = rows[-1][:]
        rows.append([rows[-1][i] if part == "." else part for i, part in enumerate(parts)])
    return rows


def test_the_dashboard_shows_the_message_flow() -> None:
    body, names = dashboard()
    assert names <= set(RESOURCES) | {"AWS::Region"}
    widgets = body["widgets"]
    (alarm_widget,) = (w for w in widgets if w["type"] == "alarm")
    assert len(alarm_widget["properties"]["alarms"]) == len(ALARMS)
    text = json.dumps(RESOURCES["Dashboard"]["Properties"]["DashboardBody"])
    assert set(ALARMS) | set(FUNCTIONS) | {"HttpApi", "RouteQueue", "StatusQueue"} | dead_letter_queues() <= names
    assert all(f"${{{alarm}.Arn}}" in text for alarm in ALARMS)
    # the EMF metrics under the functions' namespace and service (Powertools' dimension)
    namespace, service = GLOBAL_VARIABLES["POWERTOOLS_METRICS_NAMESPACE"], GLOBAL_VARIABLES["POWERTOOLS_SERVICE_NAME"]
    rows = [row for widget in widgets for row in dashboard_metrics(widget)]
    emf = [row for row in rows if row[0] == namespace]
    assert emf and all(row[2:] == ["service", service] for row in emf), emf
    flow = {"Accepted", "Sent", "Delivered", "Read", "Failed", "Retried", "DeadLettered"}
    assert {f"Messages{step}" for step in flow} <= {row[1] for row in emf}
    # accept-to-SENT: every platform together (the alarm's), and each platform's p50 and p95 through a SEARCH
    assert [namespace, "AcceptToSentLatency", "service", service] in emf
    searches = [e for w in widgets for row in w["properties"].get("metrics", []) for e in row if "expression" in e]
    assert {f"{{{namespace},platform,service}}" in e["expression"] for e in searches} == {True}
    assert {e["expression"].rsplit("'", 2)[1] for e in searches} == {"p50", "p95"}


def test_locally_the_alarms_of_queues_and_metrics_go_to_localstack_and_the_dashboard_does_not() -> None:
    """LocalStack's CloudFormation creates alarms (metric math too); a dashboard it only pretends to create, and it
    refuses Fn::Sub's `${!...}`. devstack leaves out whatever names a function or the API, the dashboard too; what
    stays is deployed by every integration session (tests/integration/test_sample_events.py among them)."""
    local = infrastructure_template(cloudformation(TEMPLATE))["Resources"]
    assert "Dashboard" not in local
    kept = {lid for lid in ALARMS if lid in local}
    assert kept == {
        "RouteDeadLetterAlarm",
        "StatusDeadLetterAlarm",
        "FileEventsDeadLetterAlarm",
        "AcceptToSentLatencyAlarm",
        "RouteQueueAgeAlarm",
    }
