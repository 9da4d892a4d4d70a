"""Lambda on this machine: the Runtime API, and one `python -m awslambdaric <handler>` process per container.

A container is a process of its own, with the function's own environment, started when an invocation finds
no idle one (a cold start) and reused while warm. It runs one invocation at a time; a function has at most
`concurrency` containers busy at once (a semaphore) and further invocations wait. An invocation past the
function's Timeout gets its container killed (as Lambda kills it); a container that exits fails its
invocation; idle containers are reaped after a while. Each container talks to a Runtime API port of its own,
so the runtime always knows which process made a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import random
import signal
import socket
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

REGION = "us-east-1"
ACCOUNT_ID = "000000000000"
RUNTIME_API = "/2018-06-01/runtime/"
MAX_RESPONSE_BYTES = 6 * 1024 * 1024  # Lambda's limit for a synchronous response
# containers a function without ReservedConcurrentExecutions or Metadata.LocalConcurrency runs at once here
LOCAL_DEFAULT_CONCURRENCY = 4
# Lambda allows 10 s; a loaded 2-core machine importing a function's dependencies may need more
INIT_TIMEOUT_SECONDS = 20.0
TIMED_OUT = "Sandbox.Timedout"
ACCEPTED_BODY = b'{"status": "OK"}'
SHUTDOWN_SECONDS = 5.0  # what a stop waits for requests still being answered
# what Lambda itself sets in every environment (the function's own variables come from the template)
INHERITED_VARIABLES = ("PATH", "LANG", "LC_ALL", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE")


def random_hex(digits: int) -> str:
    """Identifiers, not secrets: the Mersenne Twister is several times cheaper than os.urandom per request."""
    return f"{random.getrandbits(digits * 4):0{digits}x}"


def request_id() -> str:
    return str(uuid.UUID(int=random.getrandbits(128), version=4))


def server_runner(handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]) -> web.ServerRunner:
    """aiohttp's low-level server (no application, router or access log: less CPU per request)."""
    return web.ServerRunner(
        web.Server(handler), handle_signals=False, access_log=None, shutdown_timeout=SHUTDOWN_SECONDS
    )


def function_arn(name: str) -> str:
    return f"arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:{name}"


@dataclass(frozen=True)
class FunctionSpec:
    """One function as Lambda runs it."""

    name: str
    handler: str
    code_dir: Path
    layer_dirs: tuple[Path, ...]
    environment: dict[str, str]
    timeout_seconds: float = 3.0
    memory_mb: int = 128
    concurrency: int = LOCAL_DEFAULT_CONCURRENCY
    runtime: str = "python3.13"


@dataclass(frozen=True)
class InvocationResult:
    """What Lambda's Invoke answers: the payload, and the error type when the function failed (FunctionError)."""

    payload: bytes
    error_type: str | None = None

    @property
    def ok(self) -> bool:
        return self.error_type is None

    def json(self) -> Any:
        return json.loads(self.payload) if self.payload else None

    @classmethod
    def error(cls, error_type: str, message: str) -> InvocationResult:
        body = {"errorType": error_type, "errorMessage": message}
        return cls(json.dumps(body).encode(), error_type)


@dataclass
class Invocation:
    request_id: str
    payload: bytes
    delivered: asyncio.Future[None]  # fetched by the container's /next
    result: asyncio.Future[InvocationResult]
    trace_id: str = field(default_factory=lambda: f"Root=1-{int(time.time()):08x}-{random_hex(24)};Sampled=0")


@dataclass(eq=False)
class Container:
    """One execution environment: a process, its own Runtime API port, and at most one invocation."""

    function: FunctionSpec
    port: int
    site: web.SockSite
    exited: asyncio.Future[int]
    # what its /next hands out; None: it is retired, its /next answers 410
    inbox: asyncio.Queue[Invocation | None] = field(default_factory=asyncio.Queue)
    process: asyncio.subprocess.Process | None = None
    current: Invocation | None = None  # fetched, no answer yet
    init_error: InvocationResult | None = None
    idle_since: float = 0.0

    def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)


class FunctionPool:
    """The containers of one function: reuse the warmest idle one, else start one, never more than
    `concurrency` busy (so never more than that many in all)."""

    def __init__(self, service: LambdaService, spec: FunctionSpec) -> None:
        self.service = service
        self.spec = spec
        self.slots = asyncio.Semaphore(spec.concurrency)
        self.containers: list[Container] = []
        self.idle: list[Container] = []

    async def invoke(self, payload: bytes) -> InvocationResult:
        loop = asyncio.get_running_loop()
        invocation = Invocation(request_id(), payload, loop.create_future(), loop.create_future())
        async with self.slots:
            if self.service.stopping:
                return InvocationResult.error("ServiceException", "the runtime is stopping")
            container = self.idle.pop() if self.idle else await self.service.start_container(self)
            try:
                return await self._run(container, invocation)
            except asyncio.CancelledError:
                self.retire(container)  # its invocation may still be running: the container is not reusable
                raise

    async def _run(self, container: Container, invocation: Invocation) -> InvocationResult:
        container.inbox.put_nowait(invocation)
        init_timeout, timeout = INIT_TIMEOUT_SECONDS, self.spec.timeout_seconds
        await _first(invocation.delivered, container.exited, timeout=init_timeout)
        if invocation.delivered.done():
            await _first(invocation.result, container.exited, timeout=timeout)
        if invocation.result.done():
            container.current = None
            if container.function is self.spec and not self.service.stopping:
                container.idle_since = time.monotonic()
                self.idle.append(container)
            else:  # started with a configuration that has changed since
                self.retire(container)
            return invocation.result.result()
        self.retire(container)
        if not container.exited.done():
            if not invocation.delivered.done():
                return InvocationResult.error(TIMED_OUT, f"the container did not start within {init_timeout:.0f} s")
            return InvocationResult.error(
                TIMED_OUT, f"{_now_iso()} {invocation.request_id} Task timed out after {timeout:.2f} seconds"
            )
        if container.init_error is not None:
            return container.init_error
        code = container.exited.result()
        reason = f"signal: {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        return InvocationResult.error(
            "Runtime.ExitError", f"RequestId: {invocation.request_id} Error: Runtime exited with error: {reason}"
        )

    def update(self, spec: FunctionSpec) -> None:
        """New configuration, as UpdateFunctionConfiguration: idle containers go now, busy ones when done."""
        self.spec = spec
        for container in list(self.idle):
            self.retire(container)

    def retire(self, container: Container) -> None:
        for members in (self.containers, self.idle):
            with contextlib.suppress(ValueError):
                members.remove(container)
        container.kill()
        container.inbox.put_nowait(None)


class LambdaService:
    """Every function's pool, and the Runtime API their containers call. Lives on one asyncio loop."""

    def __init__(self, functions: list[FunctionSpec], *, log_dir: Path, idle_timeout_seconds: float = 300.0) -> None:
        self.pools = {spec.name: FunctionPool(self, spec) for spec in functions}
        self.log_dir = log_dir
        self.idle_timeout_seconds = idle_timeout_seconds
        self.stopping = False
        self.by_port: dict[int, Container] = {}
        self.runner = server_runner(self._handle)
        self._watchers: set[asyncio.Task[None]] = set()
        self._reaper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        await self.runner.setup()
        self._reaper = asyncio.create_task(self._reap_forever())

    async def stop(self) -> None:
        self.stopping = True
        for pool in self.pools.values():
            for container in list(pool.containers):
                pool.retire(container)
        if self._reaper is not None:
            self._reaper.cancel()
        if self._watchers:
            await asyncio.wait(self._watchers, timeout=10)
        await self.runner.cleanup()

    async def invoke(self, function: str, payload: bytes) -> InvocationResult:
        pool = self.pools.get(function)
        if pool is None:
            return InvocationResult.error("ResourceNotFoundException", f"Function not found: {function_arn(function)}")
        return await pool.invoke(payload)

    async def update_environment(self, function: str, environment: dict[str, str]) -> None:
        pool = self.pools[function]
        pool.update(dataclasses.replace(pool.spec, environment=dict(environment)))

    async def container_pids(self, *, busy: bool = False) -> dict[str, list[int]]:
        """Each function's container processes; busy: those running an invocation (fetched, not answered)."""
        return {
            name: [c.process.pid for c in pool.containers if c.process and (c.current is not None or not busy)]
            for name, pool in self.pools.items()
        }

    # ------------------------------------------------------------------ containers

    async def start_container(self, pool: FunctionPool) -> Container:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
        exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        container = Container(pool.spec, port, web.SockSite(self.runner, sock), exited)
        pool.containers.append(container)
        self.by_port[port] = container
        try:
            await container.site.start()
            container.process = await self._spawn(container, uuid.uuid4().hex[:12])
        except BaseException:
            pool.retire(container)
            self.by_port.pop(port, None)
            await container.site.stop()
            raise
        watcher = asyncio.create_task(self._watch(pool, container))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        return container

    async def _spawn(self, container: Container, container_id: str) -> asyncio.subprocess.Process:
        spec = container.function
        env = {name: os.environ[name] for name in INHERITED_VARIABLES if name in os.environ}
        env.update(spec.environment)
        env.update(
            {
                "_HANDLER": spec.handler,
                "AWS_EXECUTION_ENV": f"AWS_Lambda_{spec.runtime}",
                "AWS_LAMBDA_FUNCTION_NAME": spec.name,
                "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory_mb),
                "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
                "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{spec.name}",
                "AWS_LAMBDA_LOG_STREAM_NAME": f"{time.strftime('%Y/%m/%d')}/[$LATEST]{container_id}",
                "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{container.port}",
                "LAMBDA_TASK_ROOT": str(spec.code_dir),
                # a function's own PYTHONPATH (code a deployment adds, as Lambda allows) comes after its layers
                "PYTHONPATH": os.pathsep.join(
                    str(p) for p in (spec.code_dir, *spec.layer_dirs, spec.environment.get("PYTHONPATH")) if p
                ),
                "TZ": ":UTC",
            }
        )
        with (self.log_dir / f"{spec.name}.log").open("ab") as log:
            return await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "awslambdaric", spec.handler),
                cwd=spec.code_dir,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # its own process group: a kill takes whatever it started too
            )

    async def _watch(self, pool: FunctionPool, container: Container) -> None:
        assert container.process is not None
        container.exited.set_result(await container.process.wait())
        pool.retire(container)  # and whatever it left in its process group
        self.by_port.pop(container.port, None)
        with contextlib.suppress(Exception):
            await container.site.stop()

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(max(0.5, min(30.0, self.idle_timeout_seconds / 4)))
            oldest = time.monotonic() - self.idle_timeout_seconds
            for pool in self.pools.values():
                for container in [c for c in pool.idle if c.idle_since < oldest]:
                    pool.retire(container)

    # ------------------------------------------------------------------ Runtime API

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        container = self.by_port.get(sockname[1]) if sockname else None
        parts = request.path.removeprefix(RUNTIME_API).split("/")
        if container is None:
            return _runtime_error(410, "Container.Retired", "this container is no longer in service")
        if request.method == "GET" and parts == ["invocation", "next"]:
            return await self._next(container)
        body = bytearray()  # read no more than a response may have
        while len(body) <= MAX_RESPONSE_BYTES and (chunk := await request.content.readany()):
            body += chunk
        error_type = _error_type(body, request.headers.get("Lambda-Runtime-Function-Error-Type"))
        status = 202
        if request.method == "POST" and parts == ["init", "error"]:
            container.init_error = InvocationResult(bytes(body) or b"{}", error_type or "Runtime.Unknown")
        elif request.method != "POST" or len(parts) != 3 or parts[0] != "invocation":
            return _runtime_error(404, "NotFound", f"no such Runtime API operation {request.method} {request.path}")
        elif (invocation := container.current) is None or invocation.request_id != parts[1]:
            return _runtime_error(400, "InvalidRequestID", f"{parts[1]} is not this container's invocation")
        else:
            if parts[2] == "error":
                result = InvocationResult(bytes(body), error_type or "Unhandled")
            elif len(body) > MAX_RESPONSE_BYTES:
                status = 413
                result = InvocationResult.error(
                    "Function.ResponseSizeTooLarge",
                    f"Response payload size exceeded maximum allowed payload size ({MAX_RESPONSE_BYTES} bytes).",
                )
            else:
                result = InvocationResult(bytes(body))
            if not invocation.result.done():
                invocation.result.set_result(result)
        return web.Response(body=ACCEPTED_BODY, status=status, content_type="application/json")

    async def _next(self, container: Container) -> web.StreamResponse:
        invocation = await container.inbox.get()
        if invocation is None:
            container.inbox.put_nowait(None)  # and to any later /next of this container
            return _runtime_error(410, "Container.Retired", "this container is no longer in service")
        container.current = invocation
        if not invocation.delivered.done():
            invocation.delivered.set_result(None)
        headers = {
            # awslambdaric 4.2.2 crashes (SIGSEGV) on a next-invocation answer without a Content-Type
            "Content-Type": "application/json",
            "Lambda-Runtime-Aws-Request-Id": invocation.request_id,
            "Lambda-Runtime-Deadline-Ms": str(int((time.time() + container.function.timeout_seconds) * 1000)),
            "Lambda-Runtime-Invoked-Function-Arn": function_arn(container.function.name),
            "Lambda-Runtime-Trace-Id": invocation.trace_id,
        }
        return web.Response(body=invocation.payload, headers=headers)


def _error_type(body: bytes | bytearray, header: str | None) -> str | None:
    """The error's own type (its body's errorType), else the header's."""
    with contextlib.suppress(ValueError, AttributeError):
        parsed = json.loads(body)
        if isinstance(parsed, dict) and parsed.get("errorType"):
            return str(parsed["errorType"])
    return header


def _runtime_error(status: int, error_type: str, message: str) -> web.Response:
    return web.json_response({"errorType": error_type, "errorMessage": message}, status=status)


def _now_iso() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


async def _first(*futures: asyncio.Future[Any], timeout: float) -> None:
    await asyncio.wait(futures, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
