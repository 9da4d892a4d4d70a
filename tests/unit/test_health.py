"""/health runs its checks at most every few seconds, all at once, bounded, and names no errors."""

from __future__ import annotations

import threading
from pathlib import Path

from chat4all.adapters.aws import EventBridgeCheck, RedisCheck, SqsCheck
from chat4all.ports import DependencyCheck
from chat4all.services.health import HealthMonitor
from devstack.template import load_template


class CountingCheck(DependencyCheck):
    def __init__(self, name: str, error: Exception | None = None, block: threading.Event | None = None) -> None:
        self.name = name
        self.error = error
        self.block = block
        self.calls = 0

    def check(self) -> None:
        self.calls += 1
        if self.block is not None:
            self.block.wait(10)
        if self.error is not None:
            raise self.error


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_results_are_reused_for_a_few_seconds() -> None:
    clock = Clock()
    check = CountingCheck("postgresql")
    monitor = HealthMonitor([check], max_age_seconds=5, clock=clock)
    assert monitor.report().dependencies == {"postgresql": "UP"}
    clock.now += 4.9
    monitor.report()
    assert check.calls == 1
    clock.now += 0.2
    monitor.report()
    assert check.calls == 2


def test_down_names_no_host_or_error() -> None:
    failing = CountingCheck("postgresql", ConnectionError("connection to 10.0.0.5:5432 refused"))
    report = HealthMonitor([failing, CountingCheck("redis")]).report()
    assert report.dependencies == {"postgresql": "DOWN", "redis": "UP"}
    assert not report.healthy


def test_a_stalled_dependency_is_down_after_the_timeout() -> None:
    stalled = threading.Event()
    try:
        report = HealthMonitor([CountingCheck("mongodb", block=stalled)], timeout_seconds=0.2).report()
    finally:
        stalled.set()
    assert report.dependencies == {"mongodb": "DOWN"}


def test_the_template_grants_the_ingest_function_what_health_calls() -> None:
    template = load_template(Path(__file__).resolve().parents[2] / "template.yaml")
    policies = template["Resources"]["IngestFunction"]["Properties"]["Policies"]
    granted = {
        action
        for policy in policies
        if isinstance(policy, dict) and "Statement" in policy
        for statement in policy["Statement"]
        for action in statement["Action"]
    }
    needed = {action for check in (SqsCheck, EventBridgeCheck, RedisCheck) for action in check.iam_actions}
    assert needed == {"sqs:GetQueueAttributes", "events:DescribeEventBus"}
    assert needed <= granted
