"""template.yaml is valid CloudFormation after the SAM transform, and wires what the code expects."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from devstack.template import http_routes, load_template, queue_subscriptions, schedule_subscriptions

ROOT = Path(__file__).resolve().parents[2]


def test_cfn_lint_finds_nothing() -> None:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "cfn-lint"), str(ROOT / "template.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_consumers_report_partial_batch_failures() -> None:
    subscriptions = {s.function: s for s in queue_subscriptions(load_template(ROOT / "template.yaml"))}
    assert set(subscriptions) == {"RouteFunction", "StatusFunction", "DeadLetterFunction", "FilesFunction"}
    assert all(s.report_batch_item_failures for s in subscriptions.values())
    assert subscriptions["RouteFunction"].queue_logical_id == "RouteQueue"


def test_route_queue_is_fifo_with_a_dead_letter_queue() -> None:
    resources = load_template(ROOT / "template.yaml")["Resources"]
    route = resources["RouteQueue"]["Properties"]
    assert route["FifoQueue"] is True
    assert route["RedrivePolicy"]["deadLetterTargetArn"] == {"Fn::GetAtt": ["RouteDeadLetterQueue", "Arn"]}
    assert resources["RouteDeadLetterQueue"]["Properties"]["FifoQueue"] is True
    assert resources["EventBus"]["Properties"]["Name"] == "chat4all"


def test_every_function_has_a_handler_module() -> None:
    template = load_template(ROOT / "template.yaml")
    functions = {r.function for r in http_routes(template)} | {s.function for s in queue_subscriptions(template)}
    for logical_id in functions:
        code_uri = template["Resources"][logical_id]["Properties"]["CodeUri"]
        assert (ROOT / code_uri / "app.py").is_file(), logical_id


def test_each_dead_letter_queue_has_a_consumer_and_the_sweeper_runs_on_a_schedule() -> None:
    template = load_template(ROOT / "template.yaml")
    consumed = {s.queue_logical_id: s.function for s in queue_subscriptions(template)}
    assert consumed["RouteDeadLetterQueue"] == consumed["StatusDeadLetterQueue"] == "DeadLetterFunction"
    schedules = {s.function: s.period_seconds for s in schedule_subscriptions(template)}
    # rate(1 minute), and the weekly consistency check, rate(7 days)
    assert schedules == {"SweeperFunction": 60, "ConsistencyFunction": 7 * 24 * 3600}
    for logical_id in ("DeadLetterFunction", "SweeperFunction"):
        code_uri = template["Resources"][logical_id]["Properties"]["CodeUri"]
        assert (ROOT / code_uri / "app.py").is_file(), logical_id
