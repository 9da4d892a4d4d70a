"""The local stand-in for AWS Lambda and what invokes it, driven by a SAM template.

Lambda itself (lambda_service: the Runtime API and one awslambdaric process per container), and around it
one module per event source: the HTTP API (apigateway), SQS event source mappings (sqs_source) and
EventBridge rate schedules (schedules). They share one asyncio loop on a thread of their own; `invoke` may
be called from any other thread, as Lambda's Invoke.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from devstack.apigateway import INTEGRATION_TIMEOUT_SECONDS, HttpApi
from devstack.lambda_service import LOCAL_DEFAULT_CONCURRENCY, REGION, FunctionSpec, InvocationResult, LambdaService
from devstack.schedules import run_schedule
from devstack.sqs_client import AsyncSqsClient
from devstack.sqs_source import SqsEventSource, queue_arn
from devstack.template import cloudformation, functions, http_routes, queue_subscriptions, schedule_subscriptions

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Mapping
    from pathlib import Path

    from devstack.template import ScheduleSubscription

START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 30.0


@dataclass
class RuntimeOptions:
    # CHAT4ALL_FUNCTION_CONCURRENCY: every function without ReservedConcurrentExecutions runs this many
    concurrency_override: int | None = None
    idle_timeout_seconds: float = 300.0
    # SQS long polling while a queue is quiet (Lambda waits 20 s; shorter lets a stop return sooner)
    sqs_wait_seconds: int = 2
    # how long the HTTP API waits for a function's answer before it answers 503 itself (API Gateway: 30 s)
    http_timeout_seconds: float = INTEGRATION_TIMEOUT_SECONDS
    schedule_clock: Callable[[], float] = field(default=time.time)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> RuntimeOptions:
        """CHAT4ALL_FUNCTION_CONCURRENCY and CHAT4ALL_FUNCTION_IDLE_SECONDS override the defaults."""
        options = cls()
        if environ.get("CHAT4ALL_FUNCTION_CONCURRENCY"):
            options.concurrency_override = int(environ["CHAT4ALL_FUNCTION_CONCURRENCY"])
        if environ.get("CHAT4ALL_FUNCTION_IDLE_SECONDS"):
            options.idle_timeout_seconds = float(environ["CHAT4ALL_FUNCTION_IDLE_SECONDS"])
        return options


class LocalRuntime:
    def __init__(
        self,
        template: dict[str, Any],
        template_dir: Path,
        *,
        function_environment: Callable[[str], dict[str, str]],
        log_dir: Path,
        resolve: Callable[[Any], str] | None = None,
        aws_endpoint_url: str | None = None,
        options: RuntimeOptions | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        self.cloudformation = cloudformation(template)  # the template may be SAM or CloudFormation
        self.template_dir = template_dir
        self.function_environment = function_environment
        self.log_dir = log_dir
        self.resolve = resolve
        self.aws_endpoint_url = aws_endpoint_url
        self.options = options or RuntimeOptions()
        self.log = log
        self.lambda_service: LambdaService | None = None
        self.http: HttpApi | None = None
        self.sqs_sources: list[SqsEventSource] = []  # one per mapping, enabled or not
        self.schedules: list[ScheduleSubscription] = []
        self._schedule_tasks: list[asyncio.Task[None]] = []
        self._sqs: AsyncSqsClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def function_specs(self) -> list[FunctionSpec]:
        options = self.options
        return [
            FunctionSpec(
                name=logical_id,
                handler=config.handler,
                code_dir=(self.template_dir / config.code_uri).resolve(),
                layer_dirs=tuple((self.template_dir / p).resolve() for p in config.layer_paths),
                environment=self.function_environment(logical_id),
                timeout_seconds=float(config.timeout_seconds),
                memory_mb=config.memory_mb,
                # ReservedConcurrentExecutions caps a function in AWS too; the rest is how this machine shares out
                concurrency=next(
                    (
                        n
                        for n in (config.reserved_concurrency, options.concurrency_override, config.local_concurrency)
                        if n is not None
                    ),
                    LOCAL_DEFAULT_CONCURRENCY,
                ),
                runtime=config.runtime,
            )
            for logical_id, config in functions(self.cloudformation).items()
        ]

    # -------------------------------------------------------------------- lifecycle

    def start(self, http_port: int | None = None) -> LocalRuntime:
        """Start Lambda, and the HTTP API on 127.0.0.1:http_port (0: any free port; None: no HTTP API)."""
        specs = self.function_specs()  # template errors surface here, before anything runs
        self._loop = loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=_serve, args=(loop,), name="local-runtime", daemon=True)
        self._thread.start()
        try:
            self._call(self._start(specs, http_port), START_TIMEOUT_SECONDS)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            self._call(self._stop(), STOP_TIMEOUT_SECONDS)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(STOP_TIMEOUT_SECONDS)
            self._loop = self._thread = None

    async def _start(self, specs: list[FunctionSpec], http_port: int | None) -> None:
        opts = self.options
        self.lambda_service = service = LambdaService(
            specs, log_dir=self.log_dir, idle_timeout_seconds=opts.idle_timeout_seconds
        )
        await service.start()
        if http_port is not None:
            self.http = HttpApi(http_routes(self.cloudformation), service.invoke, opts.http_timeout_seconds)
            await self.http.start(http_port)
        concurrency = {spec.name: spec.concurrency for spec in specs}
        subscriptions = queue_subscriptions(self.cloudformation)
        if subscriptions and (self.resolve is None or self.aws_endpoint_url is None):
            raise ValueError("SQS event sources need the stack's values (resolve) and an AWS endpoint")
        if subscriptions:
            connections = sum(concurrency[s.function] + 2 for s in subscriptions)
            self._sqs = AsyncSqsClient(str(self.aws_endpoint_url), REGION, "test", "test", connections)
        for subscription in subscriptions:
            assert self.resolve is not None and self._sqs is not None
            queue_url = self.resolve({"Ref": subscription.queue_logical_id})
            source = SqsEventSource(
                subscription=subscription,
                queue_url=queue_url,
                queue_arn=queue_arn(queue_url),
                sqs=self._sqs,
                invoke=service.invoke,
                max_pollers=concurrency[subscription.function],
                wait_seconds=opts.sqs_wait_seconds,
                log=self.log,
            )
            self.sqs_sources.append(source)
            source.start()
        for schedule in schedule_subscriptions(self.cloudformation):
            run = run_schedule(schedule, service.invoke, opts.schedule_clock, self.log)
            self._schedule_tasks.append(asyncio.create_task(run))
            self.schedules.append(schedule)

    async def _stop(self) -> None:
        for task in self._schedule_tasks:
            task.cancel()
        await asyncio.gather(
            *(source.stop() for source in self.sqs_sources), *self._schedule_tasks, return_exceptions=True
        )
        if self._sqs is not None:
            await self._sqs.close()
        # the containers go before the HTTP API: requests still waiting on them are answered at once
        if self.lambda_service is not None:
            await self.lambda_service.stop()
        if self.http is not None and self.http.runner is not None:
            await self.http.runner.cleanup()

    # -------------------------------------------------------------------- use

    @property
    def api_url(self) -> str:
        if self.http is None:
            raise RuntimeError("the HTTP API is not served")
        return f"http://127.0.0.1:{self.http.port}"

    def invoke(self, function: str, event: Any, timeout: float | None = None) -> InvocationResult:
        """Lambda's Invoke (RequestResponse) of a function by its logical id, from any thread but the runtime's."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("invoke() blocks; on the runtime's own loop await lambda_service.invoke()")
        return self._call(self._service().invoke(function, json.dumps(event).encode()), timeout)

    def update_function_environment(self, function: str, environment: dict[str, str]) -> None:
        """Lambda's UpdateFunctionConfiguration of the environment: the next invocations run in new containers."""
        self._call(self._service().update_environment(function, environment), 10)

    def set_event_sources_enabled(self, function: str, enabled: bool) -> None:
        """Lambda's UpdateEventSourceMapping(Enabled=...) for every SQS mapping of a function: a disabled
        mapping stops polling (a batch in flight is let finish), an enabled one polls again."""

        async def change() -> None:
            for source in self.sqs_sources:
                if source.function == function and enabled:
                    source.start()
                elif source.function == function:
                    await source.stop()

        self._call(change(), STOP_TIMEOUT_SECONDS)

    def container_pids(self, *, busy: bool = False) -> dict[str, list[int]]:
        return self._call(self._service().container_pids(busy=busy), 10)

    def busy_container_pids(self) -> dict[str, list[int]]:
        return self.container_pids(busy=True)

    def _service(self) -> LambdaService:
        if self.lambda_service is None:
            raise RuntimeError("the runtime is not started")
        return self.lambda_service

    def _call[T](self, coroutine: Coroutine[Any, Any, T], timeout: float | None) -> T:
        if self._loop is None:
            coroutine.close()
            raise RuntimeError("the runtime is not running")
        result: T = asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)
        return result


def _serve(loop: asyncio.AbstractEventLoop) -> None:
    loop.run_forever()
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()
