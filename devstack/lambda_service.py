"""Lambda on this machine: the Runtime API, and one `python -m awslambdaric <handler>` process per container.

A container is a process of its own, with the function's own environment, started when an invocation finds
no idle one (a cold start) and reused while warm. It runs one invocation at a time; a function has at most
`concurrency` containers and further invocations wait for one. An invocation past the function's Timeout
gets its container killed (as Lambda kills it); a container that exits mid-invocation fails that invocation
and is replaced by the next one needed; idle containers are reaped after a while. Each container talks to a
Runtime API port of its own, so the runtime always knows which process made a request.
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
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

REGION = "us-east-1"
ACCOUNT_ID = "000000000000"
RUNTIME_API = "/2018-06-01/runtime"
MAX_RESPONSE_BYTES = 6 * 1024 * 1024  # Lambda's limit for a synchronous response
LOCAL_DEFAULT_CONCURRENCY = 4
TIMED_OUT = "Sandbox.Timedout"
EXITED = "Runtime.ExitError"
ACCEPTED_BODY = b'{"status": "OK"}'
SHUTDOWN_SECONDS = 5.0  # what a stop waits for requests still being answered
MAX_PLACEMENTS = 3  # containers tried for one invocation when warm ones exit before taking it
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
    delivered: asyncio.Future[None]
    result: asyncio.Future[InvocationResult]
    trace_id: str = field(default_factory=lambda: f"Root=1-{int(time.time()):08x}-{random_hex(24)};Sampled=0")


@dataclass(eq=False)
class Container:
    """One execution environment: a process, its own Runtime API port, and at most one invocation."""

    function: FunctionSpec
    container_id: str
    port: int
    site: web.SockSite
    exited: asyncio.Future[int]
    process: asyncio.subprocess.Process | None = None
    pending: Invocation | None = None  # assigned, not yet fetched with /next
    current: Invocation | None = None  # fetched, no answer yet
    wakeup: asyncio.Future[None] | None = None  # a /next request waiting for work
    init_error: InvocationResult | None = None
    initialised: bool = False
    retired: bool = False
    idle_since: float = 0.0

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def assign(self, invocation: Invocation) -> None:
        self.pending = invocation
        if self.wakeup is not None and not self.wakeup.done():
            self.wakeup.set_result(None)

    def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)


class FunctionPool:
    """The containers of one function: reuse an idle one, start one while under the limit, else wait."""

    def __init__(self, service: LambdaService, spec: FunctionSpec) -> None:
        self.service = service
        self.spec = spec
        self.containers: list[Container] = []
        self.idle: deque[Container] = deque()
        self.waiters: deque[asyncio.Future[Container | None]] = deque()

    async def invoke(self, payload: bytes) -> InvocationResult:
        if self.spec.concurrency < 1:  # ReservedConcurrentExecutions: 0 stops every invocation
            return InvocationResult.error("TooManyRequestsException", "Rate Exceeded.")
        loop = asyncio.get_running_loop()
        invocation = Invocation(request_id(), payload, loop.create_future(), loop.create_future())
        for _ in range(MAX_PLACEMENTS):
            if self.service.stopping:
                break
            container = await self._acquire()
            try:
                result = await self._run(container, invocation)
            except asyncio.CancelledError:
                self.retire(container)  # its invocation may still be running: the container is not reusable
                raise
            if result is not None:
                return result
        return InvocationResult.error("ServiceException", "the function could not be placed in a container")

    async def _run(self, container: Container, invocation: Invocation) -> InvocationResult | None:
        """Run the invocation in this container; None when a warm container exited before it took it."""
        container.assign(invocation)
        cold = not container.initialised
        init_timeout = self.service.init_timeout_seconds
        if not await _first(invocation.delivered, container.exited, timeout=init_timeout):
            self.retire(container)
            return InvocationResult.error(TIMED_OUT, f"the container did not start within {init_timeout:.0f} s")
        if not invocation.delivered.done():
            if not cold and container.init_error is None:
                self.retire(container)
                return None  # it never ran: another container takes it, as Lambda would
            return self._exit_result(container, invocation, during_init=cold)
        timeout = self.spec.timeout_seconds
        if not await _first(invocation.result, container.exited, timeout=timeout):
            self.retire(container)
            return InvocationResult.error(
                TIMED_OUT, f"{_now_iso()} {invocation.request_id} Task timed out after {timeout:.2f} seconds"
            )
        if not invocation.result.done():
            return self._exit_result(container, invocation, during_init=False)
        container.current = None
        self._release(container)
        return invocation.result.result()

    def _exit_result(self, container: Container, invocation: Invocation, *, during_init: bool) -> InvocationResult:
        self.retire(container)
        if container.init_error is not None:
            return container.init_error
        code = container.exited.result()
        reason = f"signal: {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        phase = " during init" if during_init else ""
        return InvocationResult.error(
            EXITED, f"RequestId: {invocation.request_id} Error: Runtime exited{phase} with error: {reason}"
        )

    async def _acquire(self) -> Container:
        while True:
            while self.idle:
                container = self.idle.pop()  # the most recently used is the warmest
                if not container.retired:
                    return container
            if len(self.containers) < self.spec.concurrency:
                return await self._start_container()
            waiter: asyncio.Future[Container | None] = asyncio.get_running_loop().create_future()
            self.waiters.append(waiter)
            try:
                handed = await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled() and waiter.result() is not None:
                    self._release(waiter.result())  # type: ignore[arg-type]
                raise
            if handed is not None:
                return handed

    def update(self, spec: FunctionSpec) -> None:
        """New configuration, as UpdateFunctionConfiguration: idle containers go now, busy ones when done."""
        self.spec = spec
        for container in list(self.idle):
            self.retire(container)

    def _release(self, container: Container) -> None:
        if container.function is not self.spec:
            self.retire(container)  # started with a configuration that has changed since
        if not container.retired and not self._hand_over(container):
            container.idle_since = time.monotonic()
            self.idle.append(container)

    def _hand_over(self, container: Container | None) -> bool:
        """To the first invocation waiting: a container, or None when a slot is free to start one."""
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(container)
                return True
        return False

    async def _start_container(self) -> Container:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
        site = web.SockSite(self.service.runner, sock)
        container = Container(self.spec, uuid.uuid4().hex[:12], port, site, loop.create_future())
        self.containers.append(container)
        self.service.by_port[port] = container
        try:
            await site.start()
            container.process = await self.service.spawn(container)
        except BaseException:
            self.retire(container)
            if not container.exited.done():
                container.exited.set_result(-signal.SIGKILL)
            raise
        self.service.watch(container)
        return container

    def retire(self, container: Container) -> None:
        """Take a container out of service and kill it; its slot is free at once."""
        if container.retired:
            return
        container.retired = True
        container.kill()
        if container in self.containers:
            self.containers.remove(container)
        with contextlib.suppress(ValueError):
            self.idle.remove(container)
        if container.wakeup is not None and not container.wakeup.done():
            container.wakeup.set_result(None)
        self._hand_over(None)

    def reap_idle(self, idle_seconds: float) -> None:
        oldest = time.monotonic() - idle_seconds
        for container in [c for c in self.idle if c.idle_since < oldest]:
            self.retire(container)


class LambdaService:
    """Every function's pool, and the Runtime API their containers call. Lives on one asyncio loop."""

    def __init__(
        self,
        functions: list[FunctionSpec],
        *,
        log_dir: Path,
        python: str = sys.executable,
        idle_timeout_seconds: float = 300.0,
        init_timeout_seconds: float = 20.0,
    ) -> None:
        self.pools = {spec.name: FunctionPool(self, spec) for spec in functions}
        self.log_dir = log_dir
        self.python = python
        self.idle_timeout_seconds = idle_timeout_seconds
        self.init_timeout_seconds = init_timeout_seconds
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
        if self._reaper is not None:
            self._reaper.cancel()
        for pool in self.pools.values():
            for container in list(pool.containers):
                pool.retire(container)
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
            name: [c.pid for c in pool.containers if c.pid is not None and (c.current is not None or not busy)]
            for name, pool in self.pools.items()
        }

    # ------------------------------------------------------------------ containers

    async def spawn(self, container: Container) -> asyncio.subprocess.Process:
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
                "AWS_LAMBDA_LOG_STREAM_NAME": f"{time.strftime('%Y/%m/%d')}/[$LATEST]{container.container_id}",
                "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{container.port}",
                "LAMBDA_TASK_ROOT": str(spec.code_dir),
                # a function's own PYTHONPATH (code a deployment adds, as Lambda allows) comes after its layers
                "PYTHONPATH": os.pathsep.join(
                    str(p) for p in (spec.code_dir, *spec.layer_dirs, spec.environment.get("PYTHONPATH")) if p
                ),
                "TZ": ":UTC",
            }
        )
        log_path = self.log_dir / f"{spec.name}.log"
        with log_path.open("ab") as log:
            return await asyncio.create_subprocess_exec(
                self.python,
                "-m",
                "awslambdaric",
                spec.handler,
                cwd=spec.code_dir,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # its own process group: a kill takes whatever it started too
            )

    def watch(self, container: Container) -> None:
        task = asyncio.create_task(self._watch(container))
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    async def _watch(self, container: Container) -> None:
        assert container.process is not None
        code = await container.process.wait()
        container.kill()  # whatever it left in its process group
        if not container.exited.done():
            container.exited.set_result(code)
        self.pools[container.function.name].retire(container)
        self.by_port.pop(container.port, None)
        with contextlib.suppress(Exception):
            await container.site.stop()

    async def _reap_forever(self) -> None:
        interval = max(0.5, min(30.0, self.idle_timeout_seconds / 4))
        while True:
            await asyncio.sleep(interval)
            for pool in self.pools.values():
                pool.reap_idle(self.idle_timeout_seconds)

    # ------------------------------------------------------------------ Runtime API

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        container = self.by_port.get(sockname[1]) if sockname else None
        if container is None or container.retired:
            return _runtime_error(410, "Container.Retired", "this container is no longer in service")
        path = request.path
        if not path.startswith(RUNTIME_API + "/"):
            return _runtime_error(404, "NotFound", f"no such Runtime API path {path}")
        parts = path[len(RUNTIME_API) + 1 :].split("/")
        if request.method == "GET" and parts == ["invocation", "next"]:
            return await self._next(container, request)
        answer = len(parts) == 3 and parts[0] == "invocation" and parts[2] in ("response", "error")
        if request.method == "POST" and answer:
            return await self._answer(container, parts[1], parts[2], request)
        if request.method == "POST" and parts == ["init", "error"]:
            body = await _read_body(request, MAX_RESPONSE_BYTES)
            error_type = request.headers.get("Lambda-Runtime-Function-Error-Type", "Runtime.Unknown")
            container.init_error = InvocationResult(body or b"{}", _error_type(body, error_type))
            return web.Response(body=ACCEPTED_BODY, status=202, content_type="application/json")
        return _runtime_error(404, "NotFound", f"no such Runtime API operation {request.method} {path}")

    async def _next(self, container: Container, request: web.BaseRequest) -> web.StreamResponse:
        container.initialised = True
        while container.pending is None:
            if container.retired:
                return _runtime_error(410, "Container.Retired", "this container is no longer in service")
            container.wakeup = asyncio.get_running_loop().create_future()
            await container.wakeup
        if request.transport is None or request.transport.is_closing():
            # the process died while it waited: leave the invocation to another container
            return _runtime_error(410, "Container.Gone", "the container closed its connection")
        invocation, container.pending = container.pending, None
        container.current = invocation
        deadline_ms = int((time.time() + container.function.timeout_seconds) * 1000)
        if not invocation.delivered.done():
            invocation.delivered.set_result(None)
        headers = {
            # awslambdaric 4.2.2 crashes (SIGSEGV) on a next-invocation answer without a Content-Type
            "Content-Type": "application/json",
            "Lambda-Runtime-Aws-Request-Id": invocation.request_id,
            "Lambda-Runtime-Deadline-Ms": str(deadline_ms),
            "Lambda-Runtime-Invoked-Function-Arn": function_arn(container.function.name),
            "Lambda-Runtime-Trace-Id": invocation.trace_id,
        }
        return web.Response(body=invocation.payload, headers=headers)

    async def _answer(
        self, container: Container, request_id: str, kind: str, request: web.BaseRequest
    ) -> web.StreamResponse:
        invocation = container.current
        if invocation is None or invocation.request_id != request_id:
            return _runtime_error(400, "InvalidRequestID", f"{request_id} is not this container's invocation")
        body = await _read_body(request, MAX_RESPONSE_BYTES)
        if kind == "response" and len(body) > MAX_RESPONSE_BYTES:
            result = InvocationResult.error(
                "Function.ResponseSizeTooLarge",
                f"Response payload size exceeded maximum allowed payload size ({MAX_RESPONSE_BYTES} bytes).",
            )
            status = 413
        elif kind == "response":
            result, status = InvocationResult(body), 202
        else:
            error_type = request.headers.get("Lambda-Runtime-Function-Error-Type", "Unhandled")
            result, status = InvocationResult(body, _error_type(body, error_type)), 202
        if not invocation.result.done():
            invocation.result.set_result(result)
        return web.Response(body=ACCEPTED_BODY, status=status, content_type="application/json")


async def _read_body(request: web.BaseRequest, limit: int) -> bytes:
    """The whole body, or its first `limit` + 1 bytes when it is longer (the rest is not wanted)."""
    body = bytearray()
    while len(body) <= limit and (chunk := await request.content.readany()):
        body += chunk
    return bytes(body[: limit + 1])


def _error_type(body: bytes, fallback: str) -> str:
    with contextlib.suppress(ValueError, AttributeError):
        parsed = json.loads(body)
        if isinstance(parsed, dict) and parsed.get("errorType"):
            return str(parsed["errorType"])
    return fallback


def _runtime_error(status: int, error_type: str, message: str) -> web.Response:
    return web.json_response({"errorType": error_type, "errorMessage": message}, status=status)


def _now_iso() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


async def _first(primary: asyncio.Future[Any], other: asyncio.Future[Any], *, timeout: float) -> bool:
    """Wait until either future is done; False when neither is after `timeout` seconds."""
    if primary.done() or other.done():
        return True
    done, _ = await asyncio.wait({primary, other}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    return bool(done)
