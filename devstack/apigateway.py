"""API Gateway HTTP API locally: requests become payload 2.0 events for the function the template routes them to.

Served by aiohttp on the runtime's asyncio loop. What API Gateway answers by itself it answers here as
API Gateway does, `{"message": ...}`: no route 404 (the template's `$default` route takes every request no
other route does), a body over 10 MB 413, a function that fails or answers something that is not an HTTP
response 500, and 503 when no answer comes within the HTTP API's 30 s integration timeout.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import socket
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote

from aiohttp import web
from multidict import CIMultiDict

from devstack.lambda_service import ACCOUNT_ID, random_hex, request_id, server_runner
from devstack.template import DEFAULT_ROUTE

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from devstack.lambda_service import InvocationResult
    from devstack.template import HttpRoute

    Invoke = Callable[[str, bytes], Awaitable[InvocationResult]]
    Response = tuple[int, list[tuple[str, str]], bytes]

MAX_PAYLOAD_BYTES = 10 * 1024 * 1024  # the HTTP API's own limit
INTEGRATION_TIMEOUT_SECONDS = 30.0  # the HTTP API's own limit
TEXT_TYPES = re.compile(r"^(text/|application/(json|.*\+json|xml|.*\+xml|x-www-form-urlencoded|javascript))")
API_ID = "local"
STAGE = "$default"
# hop-by-hop or computed by the server; a function's value for them is not passed on
SERVER_HEADERS = frozenset({"content-length", "connection", "transfer-encoding", "keep-alive", "date", "server"})


# API Gateway's own answers, as AWS words them
GATEWAY_MESSAGES = {
    404: "Not Found",
    413: "Request Entity Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def gateway_message(status: int) -> Response:
    return status, [("content-type", "application/json")], json.dumps({"message": GATEWAY_MESSAGES[status]}).encode()


def _route_pattern(path: str) -> re.Pattern[str]:
    if path == DEFAULT_ROUTE:
        return re.compile(r"^/.*$", re.DOTALL)
    # the template's paths have {name} segments only (no greedy {name+})
    parts = [f"(?P<{s[1:-1]}>[^/]+)" if s.startswith("{") else re.escape(s) for s in path.strip("/").split("/")]
    return re.compile("^/" + "/".join(parts) + "$")


def _specificity(route: HttpRoute) -> tuple[int, int]:
    """Literal segments first, then more segments; $default last."""
    if route.path == DEFAULT_ROUTE:
        return (-1, -1)
    segments = route.path.strip("/").split("/")
    return (sum(not s.startswith("{") for s in segments), len(segments))


class HttpApi:
    """Matches requests to routes the way HTTP APIs do (the most specific route wins) and runs the integration."""

    def __init__(
        self, routes: list[HttpRoute], invoke: Invoke | None = None, timeout: float = INTEGRATION_TIMEOUT_SECONDS
    ) -> None:
        ordered = sorted(routes, key=_specificity, reverse=True)
        self.routes = [(route, _route_pattern(route.path)) for route in ordered]
        self.invoke = invoke
        self.timeout = timeout
        self.port = 0
        self.runner: web.ServerRunner | None = None
        self._abandoned: set[asyncio.Task[InvocationResult]] = set()

    async def start(self, port: int) -> None:
        """Serve on 127.0.0.1:port (0: any free port; `port` is then the one taken)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            sock.close()
            raise OSError(exc.errno, f"cannot serve the HTTP API on 127.0.0.1:{port}: {exc.strerror}") from exc
        self.port = int(sock.getsockname()[1])
        self.runner = server_runner(self._serve)
        await self.runner.setup()
        await web.SockSite(self.runner, sock).start()

    async def _serve(self, request: web.BaseRequest) -> web.StreamResponse:
        if (request.content_length or 0) > MAX_PAYLOAD_BYTES:
            return _too_large()
        if request.headers.get("expect", "").lower() == "100-continue":
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = bytearray()
        while chunk := await request.content.readany():
            body += chunk
            if len(body) > MAX_PAYLOAD_BYTES:
                return _too_large()
        peer = request.transport.get_extra_info("peername") if request.transport else None
        status, headers, payload = await self.handle(
            request.method,
            request.rel_url.raw_path,
            request.rel_url.raw_query_string,
            list(request.headers.items()),
            bytes(body),
            str(peer[0]) if peer else "127.0.0.1",
        )
        return _response(status, headers, b"" if request.method == "HEAD" else payload)

    def match(self, method: str, path: str) -> tuple[HttpRoute, dict[str, str]] | None:
        for route, pattern in self.routes:
            found = pattern.match(path) if route.method in (method, "ANY") else None
            if found:
                return route, {k: unquote(v) for k, v in found.groupdict().items()}
        return None

    async def handle(
        self, method: str, path: str, query: str, headers: list[tuple[str, str]], body: bytes, source_ip: str
    ) -> Response:
        matched = self.match(method, path)
        if matched is None:
            return gateway_message(404)
        route, path_params = matched
        event = api_gateway_event(method, path, query, headers, body, source_ip, route, path_params)
        assert self.invoke is not None
        invocation = asyncio.ensure_future(self.invoke(route.function, json.dumps(event).encode()))
        try:
            # shielded: the function runs on after the gateway has given up on it, as in AWS
            result = await asyncio.wait_for(asyncio.shield(invocation), self.timeout)
        except TimeoutError:
            self._abandoned.add(invocation)
            invocation.add_done_callback(self._abandoned.discard)
            return gateway_message(503)
        if not result.ok:
            return gateway_message(500)
        try:
            return lambda_http_result(result.json())
        except (ValueError, TypeError, KeyError):
            return gateway_message(500)


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
    body_text: str | None = None
    if not body or not content_type or TEXT_TYPES.match(content_type):
        try:
            body_text = body.decode("utf-8")
        except UnicodeDecodeError:
            body_text = None
    now = datetime.now(UTC)
    route_key = DEFAULT_ROUTE if route.path == DEFAULT_ROUTE else f"{route.method} {route.path}"
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
    optional = {"cookies": cookies, "queryStringParameters": params, "pathParameters": path_params}
    event |= {name: value for name, value in optional.items() if value}
    if body:
        event["body"] = body_text if body_text is not None else base64.b64encode(body).decode()
    return event


def lambda_http_result(result: Any) -> Response:
    """Interpret a payload 2.0 response the way API Gateway does."""
    if not isinstance(result, dict) or "statusCode" not in result:
        return 200, [("content-type", "application/json")], json.dumps(result).encode()
    headers = [(k, str(v)) for k, v in (result.get("headers") or {}).items()]
    headers.extend(("set-cookie", c) for c in result.get("cookies") or [])
    raw = result.get("body") or ""
    body = base64.b64decode(raw) if result.get("isBase64Encoded") else str(raw).encode()
    return int(result["statusCode"]), headers, body


def _response(status: int, headers: list[tuple[str, str]], body: bytes) -> web.Response:
    out: CIMultiDict[str] = CIMultiDict((k, v) for k, v in headers if k.lower() not in SERVER_HEADERS)
    out["apigw-requestid"] = random_hex(16)
    return web.Response(status=status, headers=out, body=body)


def _too_large() -> web.Response:
    response = _response(*gateway_message(413))
    response.force_close()  # the rest of the body is not read: the connection cannot be reused
    return response
