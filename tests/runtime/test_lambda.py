"""Lambda as the local runtime runs it: containers, their environments, concurrency, timeouts, crashes."""

from __future__ import annotations

import itertools
import json
import os
import signal
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx

from tests.runtime.conftest import SCHEDULE_CLOCK_OFFSET, start_runtime
from tests.support.waiting import alive, wait_until

if TYPE_CHECKING:
    from pathlib import Path

    from devstack.runtime import LocalRuntime


def test_each_function_runs_with_its_own_environment_code_and_layer(runtime: LocalRuntime) -> None:
    echo = runtime.invoke("EchoFunction", {"n": 1})
    other = runtime.invoke("OtherFunction", {"n": 2})
    assert echo.ok and other.ok, (echo, other)
    echo_report, other_report = echo.json(), other.json()
    assert echo_report["env"]["WHO_AM_I"] == "echo"
    assert other_report["env"]["WHO_AM_I"] == "other"
    assert "ONLY_OTHER" not in echo_report["env"]  # not one environment merged for all functions
    assert other_report["env"]["ONLY_OTHER"] == "yes"
    assert echo_report["env"]["SHARED_SETTING"] == other_report["env"]["SHARED_SETTING"] == "from-globals"
    assert echo_report["env"]["AWS_LAMBDA_FUNCTION_NAME"] == "EchoFunction"
    assert echo_report["env"]["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "512"
    assert other_report["env"]["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "256"  # the Globals' value
    assert echo_report["env"]["_HANDLER"] == "app.lambda_handler"
    assert echo_report["memory_mb"] == "512"  # a string, as in Lambda
    assert echo_report["layer"] == "hello from the layer"
    assert echo_report["cwd"].endswith("functions/echo")
    assert 0 < echo_report["remaining_ms"] <= 10_000
    assert echo_report["event"] == {"n": 1}
    assert echo_report["pid"] != other_report["pid"]


def test_a_warm_container_is_reused_and_keeps_its_module_state_to_itself(runtime: LocalRuntime) -> None:
    # GIVEN many invocations of one function, several at a time
    with ThreadPoolExecutor(max_workers=8) as pool:
        reports = [
            r.json() for r in pool.map(lambda n: runtime.invoke("EchoFunction", {"n": n, "sleep": 0.05}), range(40))
        ]
    # THEN each container counted only its own invocations: 1, 2, 3 ... with no gaps or repeats
    counts: dict[int, list[int]] = defaultdict(list)
    for report in reports:
        counts[report["pid"]].append(report["invocations"])
    assert len(counts) > 1  # more than one container ran
    assert len(counts) <= 4  # the local default concurrency
    for seen in counts.values():
        ordered = sorted(seen)
        assert ordered == list(range(ordered[0], ordered[0] + len(ordered))), counts
    assert len({r["request_id"] for r in reports}) == 40


def test_reserved_concurrency_is_never_exceeded(runtime: LocalRuntime, tmp_path: Path) -> None:
    # GIVEN a function with ReservedConcurrentExecutions: 2 whose invocations wait for a release
    with ThreadPoolExecutor(max_workers=6) as pool:
        futures = [pool.submit(runtime.invoke, "LimitedFunction", {"folder": str(tmp_path)}) for _ in range(6)]
        # WHEN six are started at once, two run
        wait_until(lambda: len(list(tmp_path.glob("*.entered"))) >= 2, what="two invocations starting")
        time.sleep(1.0)  # room for a third to start, if the limit did not hold
        assert len(list(tmp_path.glob("*.entered"))) == 2
        assert len(runtime.container_pids()["LimitedFunction"]) == 2
        (tmp_path / "release").write_text("go")
        results = [f.result(timeout=60) for f in futures]
    # THEN all six ran, on those two containers only
    assert all(r.ok for r in results), results
    assert len(list(tmp_path.glob("*.entered"))) == 6
    assert len({r.json()["pid"] for r in results}) <= 2


def test_an_invocation_past_its_timeout_is_killed_and_the_next_one_works(runtime: LocalRuntime) -> None:
    warm = runtime.invoke("SleepyFunction", {"sleep": 0})
    assert warm.ok
    first_pid = warm.json()["pid"]
    timed_out = runtime.invoke("SleepyFunction", {"sleep": 30})
    assert timed_out.error_type == "Sandbox.Timedout"
    assert "Task timed out after 1.00 seconds" in timed_out.json()["errorMessage"]
    wait_until(lambda: not alive(first_pid), what="the timed-out container dying")
    after = runtime.invoke("SleepyFunction", {"sleep": 0})
    assert after.ok
    assert after.json()["pid"] != first_pid


def test_a_container_that_exits_mid_invocation_is_an_error_and_is_replaced(runtime: LocalRuntime) -> None:
    before = runtime.invoke("CrashFunction", {})
    assert before.ok
    crashed = runtime.invoke("CrashFunction", {"crash": True})
    assert crashed.error_type == "Runtime.ExitError"
    assert "exit status 7" in crashed.json()["errorMessage"]
    after = runtime.invoke("CrashFunction", {})
    assert after.ok
    assert after.json()["pid"] != before.json()["pid"]
    assert not alive(before.json()["pid"])


def test_an_init_error_is_reported_through_the_runtime_api(runtime: LocalRuntime) -> None:
    for _ in range(2):  # and a new container tries again next time, as Lambda does
        result = runtime.invoke("BrokenFunction", {})
        assert not result.ok
        error = result.json()
        assert error["errorType"] == "RuntimeError"
        assert error["errorMessage"] == "the configuration is missing"
    assert runtime.container_pids()["BrokenFunction"] == []


def test_an_unhandled_exception_is_a_function_error_and_the_container_lives_on(runtime: LocalRuntime) -> None:
    failed = runtime.invoke("OtherFunction", {"raise": "boom"})
    assert failed.error_type == "ValueError"
    assert failed.json()["errorMessage"] == "boom"
    assert any("app.py" in line for line in failed.json()["stackTrace"])
    pids = runtime.container_pids()["OtherFunction"]
    assert runtime.invoke("OtherFunction", {}).json()["pid"] in pids


def test_a_large_response_arrives_whole_and_one_over_6_mb_is_an_error(runtime: LocalRuntime) -> None:
    large = runtime.invoke("EchoFunction", {"large": 3_000_000})
    assert large.ok
    assert large.json() == {"filler": "x" * 3_000_000, "end": "the last field"}
    too_large = runtime.invoke("EchoFunction", {"large": 7_000_000})
    assert too_large.error_type == "Function.ResponseSizeTooLarge"


def test_an_unknown_function_is_not_found(runtime: LocalRuntime) -> None:
    result = runtime.invoke("NoSuchFunction", {})
    assert result.error_type == "ResourceNotFoundException"


def test_a_warm_container_that_dies_while_idle_does_not_fail_the_next_invocation(runtime: LocalRuntime) -> None:
    first = runtime.invoke("CrashFunction", {})
    assert first.ok
    os.kill(first.json()["pid"], signal.SIGKILL)
    wait_until(lambda: first.json()["pid"] not in runtime.container_pids()["CrashFunction"])
    after = runtime.invoke("CrashFunction", {})
    assert after.ok, after.payload
    assert after.json()["pid"] != first.json()["pid"]


def test_stop_leaves_no_container_running(tmp_path: Path) -> None:
    runtime = start_runtime(tmp_path)
    answers: list[int] = []

    def call_over_http() -> None:
        try:
            response = httpx.post(runtime.api_url + "/echo?sleep=30", json={}, timeout=60)
            answers.append(response.status_code)
        except httpx.HTTPError:
            answers.append(0)

    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(lambda name: runtime.invoke(name, {"sleep": 0.2}), ["EchoFunction", "OtherFunction"] * 3))
        runtime.invoke("SleepyFunction", {"sleep": 0})
        # invocations still running when the stop comes, directly and over HTTP
        running = threading.Thread(target=runtime.invoke, args=("OtherFunction", {"sleep": 30}), daemon=True)
        running.start()
        over_http = threading.Thread(target=call_over_http, daemon=True)
        over_http.start()
        wait_until(lambda: len(runtime.container_pids()["EchoFunction"]) >= 1)
        time.sleep(0.5)  # both invocations under way
        pids = [pid for pids in runtime.container_pids().values() for pid in pids]
        assert len(pids) >= 3
    finally:
        runtime.stop()
    assert [pid for pid in pids if alive(pid)] == []
    over_http.join(30)
    running.join(30)
    assert not over_http.is_alive() and not running.is_alive()  # nobody is left waiting on a stopped runtime
    assert answers and answers[0] in (0, 500)


def test_idle_containers_are_reaped(tmp_path: Path) -> None:
    runtime = start_runtime(tmp_path, idle_timeout_seconds=0.5)
    try:
        pid = runtime.invoke("EchoFunction", {}).json()["pid"]
        wait_until(lambda: not alive(pid), what="the idle container being reaped")
        assert runtime.container_pids()["EchoFunction"] == []
        assert runtime.invoke("EchoFunction", {}).json()["invocations"] == 1  # a cold start again
    finally:
        runtime.stop()


def test_a_rate_schedule_fires_every_period_of_the_schedules_clock(runtime: LocalRuntime, record_dir: Path) -> None:
    def fired() -> list[dict[str, Any]]:
        return sorted((json.loads(p.read_text()) for p in record_dir.glob("scheduled-*.json")), key=lambda e: e["time"])

    for _ in range(2):  # `rate(1 minute)`: a minute later by the schedule's clock, it fires once more
        before = len(fired())
        SCHEDULE_CLOCK_OFFSET[0] += 60
        wait_until(lambda: len(fired()) > before, what="the schedule firing")  # noqa: B023 - used at once
    events = fired()
    assert events[-1]["detail-type"] == "Scheduled Event"
    assert events[-1]["source"] == "aws.events"
    assert events[-1]["resources"] == ["arn:aws:events:us-east-1:000000000000:rule/ScheduledFunctionEveryMinute"]
    assert events[-1]["detail"] == {}
    assert [_epoch(b["time"]) - _epoch(a["time"]) for a, b in itertools.pairwise(events)] == [60] * (len(events) - 1)


def _epoch(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
