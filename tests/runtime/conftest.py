"""A local runtime over tests/runtime/template.yaml: real awslambdaric containers, the real HTTP API, no AWS."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from devstack.runtime import LocalRuntime, RuntimeOptions
from devstack.template import function_environment, load_template

if TYPE_CHECKING:
    from collections.abc import Iterator

HERE = Path(__file__).resolve().parent
TEMPLATE = load_template(HERE / "template.yaml")
# how far the runtime's schedule clock is ahead of time.time(): a test moves it on to make a schedule fall due
SCHEDULE_CLOCK_OFFSET = [0.0]
# the shared runtime's HTTP API gives a function this long to answer (API Gateway: 30 s)
HTTP_TIMEOUT_SECONDS = 2.0


def template_environment(record_dir: Path) -> dict[str, dict[str, str]]:
    def plain(value: object) -> str:
        raise AssertionError(f"the test template has no intrinsics in environments: {value!r}")

    return {
        name: {**function_environment(TEMPLATE, name, plain), "RECORD_DIR": str(record_dir)}
        for name, resource in TEMPLATE["Resources"].items()
        if resource["Type"] == "AWS::Serverless::Function"
    }


def start_runtime(tmp: Path, **options: object) -> LocalRuntime:
    environments = template_environment(tmp)
    runtime = LocalRuntime(
        TEMPLATE,
        HERE,
        function_environment=environments.__getitem__,
        log_dir=tmp / "logs",
        options=RuntimeOptions(**options),  # type: ignore[arg-type]
        log=print,
    )
    return runtime.start(http_port=0)


@pytest.fixture(scope="module")
def record_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("records")


@pytest.fixture(scope="module")
def runtime(record_dir: Path) -> Iterator[LocalRuntime]:
    started = start_runtime(
        record_dir,
        schedule_clock=lambda: time.time() + SCHEDULE_CLOCK_OFFSET[0],
        http_timeout_seconds=HTTP_TIMEOUT_SECONDS,
    )
    try:
        yield started
    finally:
        started.stop()
