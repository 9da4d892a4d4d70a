"""API Gateway HTTP API locally: requests become payload 2.0 events for the function the template routes them to.

Served by aiohttp on the runtime's asyncio loop. What API Gateway answers by itself (no route, a method the
path does not have, a body too large, a malformed request, a failed or timed-out integration, an authorizer's
refusal) is answered here as problem JSON (RFC 9457), as the contract wants every error body to be, and
names nothing internal.
"""

from __future__ import annotations

import base64
import json
import re
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from multidict import CIMultiDict

from devstack.authorizers import AuthorizerDenied, HttpAuthorizer
from devstack.lambda_service import ACCOUNT_ID, REGION, SHUTDOWN_SECONDS, TIMED_OUT, random_hex, request_id
from devstack.template import DEFAULT_ROUTE

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from devstack.lambda_service import InvocationResult
    from devstack.template import HttpRoute, LambdaAuthorizer

    Invoke = Callable[[str, bytes], Awaitable[InvocationResult]]

MAX_PAYLOAD_BYTES = 10 * 1024 * 1024  # API Gateway's own limit
TEXT_TYPES = re.compile(r"^(text/|application/(json|.*\+json|xml|.*\+xml|x-www-form-urlencoded|javascript))")
API_ID = "local"
STAGE = "$default"
# hop-by-hop or computed by the server; a function's value for them is not passed on
SERVER_HEADERS = frozenset({"content-length", "connection", "transfer-encoding", "keep-alive", "date", "server"})


# ------------------------------------------------------------------------------------------ routes


@dataclass(frozen=True)
class CompiledRoute:
    route: HttpRoute
    pattern: re.Pattern[str]
    specificity: tuple[int, int]

    @property
    def route_key(self) -> str:
        return DEFAULT_ROUTE if self.route.path == DEFAULT_ROUTE else f"{self.route.method} {self.route.path}"

    @classmethod
    def compile(cls, route: HttpRoute) -> CompiledRoute:
        if route.path == DEFAULT_ROUTE:  # every request no other route takes
            return cls(route, re.compile(r"^/.*$", re.DOTALL), (-1, -1))
        parts = []
        literal = 0
        for segment in route.path.strip("/").split("/"):
            if segment.startswith("{") and segment.endswith("+}"):
                parts.append(f"(?P<{segment[1:-2]}>.+)")
            elif segment.startswith("{") and segment.endswith("}"):
                parts.append(f"(?P<{segment[1:-1]}>[^/]+)")
            else:
                parts.append(re.escape(segment))
                literal += 1
        pattern = re.compile("^/" + "/".join(parts) + "$")
        return cls(route, pattern, (literal, len(parts)))


@dataclass(frozen=True)
class Problem:
    status: int
    detail: str
    headers: tuple[tuple[str, str], ...] = ()

    def response(self) -> tuple[int, list[tuple[str, str]], bytes]:
        return problem(self.status, self.detail, list(self.headers))


def problem(
    status: int, detail: str, extra_headers: list[tuple[str, str]] | None = None
) -> tuple[int, list[tuple[str, str]], bytes]:
    title = HTTPStatus(status).phrase
    body = json.dumps({"type": "about:blank", "title": title, "status": status, "detail": detail}).encode()
    return status, [("content-type", "application/problem+json"), *(extra_headers or [])], body


def gateway_message(status: int) -> tuple[int, list[tuple[str, str]], bytes]:
    """API Gateway's own answer to a request its authorizer refused, as AWS words it: {"message": ...}.

    Not problem JSON, as in AWS; a design that must keep the contract's error format lets its authorizer
    authorize and refuses in the functions (docs/AUTH.md)."""
    body = json.dumps({"message": HTTPStatus(status).phrase}).encode()
    return status, [("content-type", "application/json")], body


class HttpApi:
    """Matches requests to routes the way HTTP APIs do (the most specific route wins) and runs the integration."""

    def __init__(
        self,
        routes: list[HttpRoute],
        invoke: Invoke | None = None,
        authorizers: dict[str, LambdaAuthorizer] | None = None,
    ) -> None:
        compiled = [CompiledRoute.compile(r) for r in routes]
        self.routes = sorted(compiled, key=lambda c: c.specificity, reverse=True)
        self.invoke = invoke
        self.authorizers = {
            name: HttpAuthorizer(config, invoke) for name, config in (authorizers or {}).items() if invoke
        }
        for compiled_route in self.routes:
            name = compiled_route.route.authorizer
            if name is not None and name not in (authorizers or {}):
                raise ValueError(f"route {compiled_route.route.path} names an unknown authorizer {name}")

    def match(self, method: str, path: str) -> tuple[HttpRoute, dict[str, str]] | None:
        for compiled in self.routes:
            if compiled.route.method.upper() not in (method, "ANY"):
                continue
            found = compiled.pattern.match(path)
            if found:
                return compiled.route, {k: unquote(v) for k, v in found.groupdict().items()}
        return None

    def allowed_methods(self, path: str) -> list[str]:
        return sorted({c.route.method for c in self.routes if c.route.path != DEFAULT_ROUTE and c.pattern.match(path)})

    def resolve(self, method: str, path: str) -> tuple[HttpRoute, dict[str, str]] | Problem:
        matched = self.match(method, path)
        if matched is not None:
            return matched
        allowed = self.allowed_methods(path)
        if allowed:
            return Problem(405, f"{method} is not allowed here", (("allow", ", ".join(allowed)),))
        return Problem(404, f"no route for {path}")

    async def handle(
        self, method: str, path: str, query: str, headers: list[tuple[str, str]], body: bytes, source_ip: str
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        resolved = self.resolve(method, path)
        if isinstance(resolved, Problem):
            return resolved.response()
        route, path_params = resolved
        event = api_gateway_event(method, path, query, headers, body, source_ip, route, path_params)
        if route.authorizer is not None:
            try:
                context = await self.authorizers[route.authorizer].authorize(event, route_arn(method, path))
            except AuthorizerDenied as denied:
                return gateway_message(denied.status)
            event["requestContext"]["authorizer"] = {"lambda": context}
        assert self.invoke is not None
        result = await self.invoke(route.function, json.dumps(event).encode())
        if result.error_type == TIMED_OUT:
            return problem(504, "the integration did not answer in time")
        if not result.ok:
            return problem(500, "the integration failed")
        try:
            return lambda_http_result(result.json())
        except (ValueError, TypeError, KeyError):
            return problem(500, "the integration answered something that is not an HTTP response")


def route_arn(method: str, path: str) -> str:
    return f"arn:aws:execute-api:{REGION}:{ACCOUNT_ID}:{API_ID}/{STAGE}/{method}{path}"


# ------------------------------------------------------------------------------------------ events


def api_gateway_event(
    method: str,
    path: str,
    query: str,
    headers: list[tuple[str, str]],
    body: bytes,
    source_ip: str,
    route: HttpRoute,
    path_params: dict[str, str],
) -> dict[str, Any]:
    merged: dict[str, str] = {}
    cookies: list[str] = []
    for name, value in headers:
        key = name.lower()
        if key == "cookie":
            cookies.extend(c.strip() for c in value.split(";") if c.strip())
            continue
        merged[key] = f"{merged[key]},{value}" if key in merged else value
    params: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        params[key] = f"{params[key]},{value}" if key in params else value
    content_type = merged.get("content-type", "")
    is_text = not body or bool(TEXT_TYPES.match(content_type)) or not content_type
    body_text: str | None
    try:
        body_text = body.decode("utf-8") if is_text else None
    except UnicodeDecodeError:
        body_text = None
    now = datetime.now(UTC)
    route_key = DEFAULT_ROUTE if route.path == DEFAULT_ROUTE else f"{route.method.upper()} {route.path}"
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": path,
        "rawQueryString": query,
        "headers": merged,
        "requestContext": {
            "accountId": ACCOUNT_ID,
            "apiId": API_ID,
            "domainName": merged.get("host", "127.0.0.1"),
            "domainPrefix": API_ID,
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": source_ip,
                "userAgent": merged.get("user-agent", ""),
            },
            "requestId": request_id(),
            "routeKey": route_key,
            "stage": STAGE,
            "time": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "timeEpoch": int(now.timestamp() * 1000),
        },
        "isBase64Encoded": body_text is None,
    }
    if cookies:
        event["cookies"] = cookies
    if params:
        event["queryStringParameters"] = params
    if path_params:
        event["pathParameters"] = path_params
    if body:
        event["body"] = body_text if body_text is not None else base64.b64encode(body).decode()
    return event


def lambda_http_result(result: Any) -> tuple[int, list[tuple[str, str]], bytes]:
    """Interpret a payload 2.0 response the way API Gateway does."""
    if not isinstance(result, dict) or "statusCode" not in result:
        body = json.dumps(result).encode()
        return 200, [("content-type", "application/json")], body
    headers = [(k, str(v)) for k, v in (result.get("headers") or {}).items()]
    for name, values in (result.get("multiValueHeaders") or {}).items():
        headers.extend((name, str(v)) for v in values)
    headers.extend(("set-cookie", c) for c in result.get("cookies") or [])
    raw = result.get("body") or ""
    body = base64.b64decode(raw) if result.get("isBase64Encoded") else str(raw).encode()
    return int(result["statusCode"]), headers, body


# ------------------------------------------------------------------------------------------ server


def _problem_response(status: int, detail: str, headers: list[tuple[str, str]] | None = None) -> web.Response:
    code, all_headers, body = problem(status, detail, headers)
    return _response(code, all_headers, body)


def _response(status: int, headers: list[tuple[str, str]], body: bytes) -> web.Response:
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers:
        if name.lower() not in SERVER_HEADERS:
            out.add(name, value)
    out["apigw-requestid"] = random_hex(16)
    return web.Response(status=status, headers=out, body=body)


class ProblemRequestHandler(RequestHandler):
    """aiohttp's connection handler, answering requests it cannot parse with problem JSON, not plain text."""

    def handle_error(
        self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        if status >= 500:
            self.log_exception("Error handling request", exc_info=exc)
            detail = "the request could not be handled"
        else:
            detail = "the request is not valid HTTP/1.1"
        response = _problem_response(status, detail)
        response.force_close()
        return response


class ProblemServer(web.Server):
    def __call__(self) -> RequestHandler:
        return ProblemRequestHandler(self, loop=self._loop, **self._kwargs)


class HttpApiServer:
    """The HTTP API on 127.0.0.1:port."""

    def __init__(self, api: HttpApi, port: int, max_body_bytes: int = MAX_PAYLOAD_BYTES) -> None:
        self.api = api
        self.port = port
        self.max_body_bytes = max_body_bytes
        self.runner = web.ServerRunner(
            ProblemServer(self._handle), handle_signals=False, access_log=None, shutdown_timeout=SHUTDOWN_SECONDS
        )

    async def start(self) -> int:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", self.port))
        except OSError as exc:
            sock.close()
            raise OSError(exc.errno, f"cannot serve the HTTP API on 127.0.0.1:{self.port}: {exc.strerror}") from exc
        self.port = int(sock.getsockname()[1])
        await self.runner.setup()
        await web.SockSite(self.runner, sock).start()
        return self.port

    async def stop(self) -> None:
        await self.runner.cleanup()

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        declared = request.content_length
        if declared is not None and declared > self.max_body_bytes:
            response = _problem_response(413, f"bodies are limited to {self.max_body_bytes} bytes")
            response.force_close()  # the body is not read: the connection cannot be reused
            return response
        if request.headers.get("expect", "").lower() == "100-continue":
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = bytearray()
        while chunk := await request.content.readany():
            body += chunk
            if len(body) > self.max_body_bytes:
                response = _problem_response(413, f"bodies are limited to {self.max_body_bytes} bytes")
                response.force_close()
                return response
        peer = request.transport.get_extra_info("peername") if request.transport else None
        status, headers, payload = await self.api.handle(
            request.method,
            request.rel_url.raw_path,
            request.rel_url.raw_query_string,
            list(request.headers.items()),
            bytes(body),
            str(peer[0]) if peer else "127.0.0.1",
        )
        if request.method == "HEAD":
            payload = b""
        return _response(status, headers, payload)
