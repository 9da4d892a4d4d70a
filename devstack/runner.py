"""Runs the template's functions the way API Gateway (HTTP API, payload 2.0) and SQS event sources would.

Each function is loaded from its CodeUri once, like a warm container, and invoked one event at a time
(a container handles one invocation at a time). HTTP requests become API Gateway events for the
function the template routes them to; SQS pollers feed batches to the subscribed functions, delete
what succeeded and leave reported failures to come back after their visibility timeout.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import re
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

from devstack.template import HttpRoute, LambdaAuthorizer, QueueSubscription, function_code_uri

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path
    from types import ModuleType

REGION = "us-east-1"
ACCOUNT_ID = "000000000000"
MAX_PAYLOAD_BYTES = 10 * 1024 * 1024  # API Gateway's own limit
TEXT_TYPES = re.compile(r"^(text/|application/(json|.*\+json|xml|.*\+xml|x-www-form-urlencoded|javascript))")


class LambdaContext:
    """What Lambda passes as `context`, with a real deadline."""

    def __init__(self, function_name: str, timeout_seconds: int, memory_mb: int) -> None:
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.invoked_function_arn = f"arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:{function_name}"
        self.memory_limit_in_mb = memory_mb
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = f"local/{self.aws_request_id}"
        self._deadline = time.monotonic() + timeout_seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


@dataclass
class LocalFunction:
    """One function of the template, loaded like a warm container."""

    logical_id: str
    module: ModuleType
    handler_name: str = "lambda_handler"
    timeout_seconds: int = 30
    memory_mb: int = 512
    lock: threading.Lock = field(default_factory=threading.Lock)

    def invoke(self, event: dict[str, Any]) -> Any:
        handler: Callable[[dict[str, Any], LambdaContext], Any] = getattr(self.module, self.handler_name)
        with self.lock:
            return handler(event, LambdaContext(self.logical_id, self.timeout_seconds, self.memory_mb))


def load_functions(template: dict[str, Any], repo_root: Path) -> dict[str, LocalFunction]:
    """Import every AWS::Serverless::Function's handler module from its CodeUri."""
    globals_fn = template.get("Globals", {}).get("Function", {})
    functions: dict[str, LocalFunction] = {}
    for logical_id, resource in template["Resources"].items():
        if resource.get("Type") != "AWS::Serverless::Function":
            continue
        props = resource.get("Properties", {})
        module_name, _, handler_name = str(
            props.get("Handler", globals_fn.get("Handler", "app.lambda_handler"))
        ).rpartition(".")
        path = repo_root / function_code_uri(template, logical_id) / f"{module_name.replace('.', '/')}.py"
        spec = importlib.util.spec_from_file_location(f"functions_{logical_id}", path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # as a normal import does; pydantic resolves annotations through it
        spec.loader.exec_module(module)
        functions[logical_id] = LocalFunction(
            logical_id,
            module,
            handler_name,
            int(props.get("Timeout", globals_fn.get("Timeout", 30))),
            int(props.get("MemorySize", globals_fn.get("MemorySize", 512))),
        )
    return functions


# ------------------------------------------------------------------------------------------ HTTP API


@dataclass(frozen=True)
class CompiledRoute:
    route: HttpRoute
    pattern: re.Pattern[str]
    specificity: tuple[int, int]

    @classmethod
    def compile(cls, route: HttpRoute) -> CompiledRoute:
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


class HttpApi:
    """Matches requests to routes the way HTTP APIs do: the most specific route wins."""

    def __init__(
        self,
        routes: list[HttpRoute],
        functions: dict[str, LocalFunction],
        authorizers: dict[str, LambdaAuthorizer] | None = None,
    ) -> None:
        compiled = [CompiledRoute.compile(r) for r in routes]
        self.routes = sorted(compiled, key=lambda c: c.specificity, reverse=True)
        self.functions = functions
        self.authorizers = authorizers or {}

    def match(self, method: str, path: str) -> tuple[HttpRoute, dict[str, str]] | None:
        for compiled in self.routes:
            if compiled.route.method.upper() not in (method, "ANY"):
                continue
            found = compiled.pattern.match(path)
            if found:
                return compiled.route, {k: unquote(v) for k, v in found.groupdict().items()}
        return None

    def handle(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes, source_ip: str
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        url = urlsplit(target)
        matched = self.match(method, url.path)
        if matched is None:
            return _problem(404, "Not found", f"no route for {method} {url.path}")
        route, path_params = matched
        event = api_gateway_event(method, url.path, url.query, headers, body, source_ip, route, path_params)
        if route.authorizer is not None:
            refusal = run_lambda_authorizer(self.authorizers[route.authorizer], self.functions, event)
            if refusal is not None:
                return refusal
        try:
            result = self.functions[route.function].invoke(event)
        except Exception as exc:  # what API Gateway does when the function errors: 500, no details
            traceback.print_exc()
            return _problem(500, "Internal Server Error", f"the function failed: {type(exc).__name__}")
        return lambda_http_result(result)


# ------------------------------------------------------------------ Lambda authorizer (payload 2.0)
# The smallest stand-in for an HTTP API Lambda authorizer: no result caching (the template asks for none).


def run_lambda_authorizer(
    authorizer: LambdaAuthorizer, functions: dict[str, LocalFunction], event: dict[str, Any]
) -> tuple[int, list[tuple[str, str]], bytes] | None:
    """Invoke the authorizer for `event` as API Gateway does. Returns API Gateway's own refusal, or None after
    putting the authorizer's context into `event["requestContext"]["authorizer"]["lambda"]`."""
    headers: dict[str, str] = event["headers"]
    identity = [headers.get(name) for name in authorizer.identity_headers]
    if any(not value for value in identity):
        return _gateway_message(401, "Unauthorized")  # a missing identity source: the authorizer is not called
    context = event["requestContext"]
    request = {
        "version": authorizer.payload_version,
        "type": "REQUEST",
        "routeArn": f"arn:aws:execute-api:{REGION}:{ACCOUNT_ID}:{context['apiId']}/{context['stage']}/"
        f"{context['http']['method']}{context['http']['path']}",
        "identitySource": identity,
        "routeKey": event["routeKey"],
        "rawPath": event["rawPath"],
        "rawQueryString": event["rawQueryString"],
        "headers": headers,
        "requestContext": context,
    }
    for optional in ("cookies", "queryStringParameters", "pathParameters"):
        if optional in event:
            request[optional] = event[optional]
    try:
        answer = functions[authorizer.function].invoke(request)
    except Exception:
        traceback.print_exc()
        return _gateway_message(500, "Internal Server Error")
    if not authorizer.simple_responses or not isinstance(answer, dict) or answer.get("isAuthorized") is not True:
        return _gateway_message(403, "Forbidden")
    context["authorizer"] = {"lambda": answer.get("context") or {}}
    return None


def _gateway_message(status: int, message: str) -> tuple[int, list[tuple[str, str]], bytes]:
    """API Gateway's own answer (not problem JSON): what the authorizer design must never let a client see."""
    return status, [("content-type", "application/json")], json.dumps({"message": message}).encode()


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
    route_key = f"{route.method.upper()} {route.path}"
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": path,
        "rawQueryString": query,
        "headers": merged,
        "requestContext": {
            "accountId": ACCOUNT_ID,
            "apiId": "local",
            "domainName": merged.get("host", "127.0.0.1"),
            "domainPrefix": "local",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": source_ip,
                "userAgent": merged.get("user-agent", ""),
            },
            "requestId": str(uuid.uuid4()),
            "routeKey": route_key,
            "stage": "$default",
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


def _problem(status: int, title: str, detail: str) -> tuple[int, list[tuple[str, str]], bytes]:
    body = json.dumps({"type": "about:blank", "title": title, "status": status, "detail": detail}).encode()
    return status, [("content-type", "application/problem+json")], body


class _RequestHandler(BaseHTTPRequestHandler):
    api: HttpApi
    protocol_version = "HTTP/1.1"

    def _serve(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length > MAX_PAYLOAD_BYTES:
            self._reply(*_problem(413, "Payload too large", f"bodies are limited to {MAX_PAYLOAD_BYTES} bytes"))
            self.close_connection = True
            return
        body = self.rfile.read(length) if length else b""
        status, headers, payload = self.api.handle(
            self.command, self.path, list(self.headers.items()), body, self.client_address[0]
        )
        self._reply(status, headers, payload)

    def _reply(self, status: int, headers: list[tuple[str, str]], payload: bytes) -> None:
        self.send_response(status)
        for name, value in headers:
            if name.lower() not in ("content-length", "connection"):
                self.send_header(name, value)
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _serve

    def __getattr__(self, name: str) -> Any:
        # any other method (TRACE, QUERY, ...) goes to the API too, which answers 405 or 404 as problem JSON
        if name.startswith("do_"):
            return self._serve
        raise AttributeError(name)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve_http(api: HttpApi, port: int) -> ThreadingHTTPServer:
    handler = type("BoundRequestHandler", (_RequestHandler,), {"api": api})
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="http-api", daemon=True).start()
    return server


# ------------------------------------------------------------------------------------------ SQS


def sqs_record(message: dict[str, Any], queue_arn: str) -> dict[str, Any]:
    """An SQS message as the Lambda event source mapping delivers it."""
    attributes = {k: str(v) for k, v in message.get("Attributes", {}).items()}
    message_attributes = {}
    for name, attr in message.get("MessageAttributes", {}).items():
        message_attributes[name] = {
            "stringValue": attr.get("StringValue"),
            "binaryValue": base64.b64encode(attr["BinaryValue"]).decode() if "BinaryValue" in attr else None,
            "stringListValues": attr.get("StringListValues", []),
            "binaryListValues": attr.get("BinaryListValues", []),
            "dataType": attr.get("DataType", "String"),
        }
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": attributes,
        "messageAttributes": message_attributes,
        "md5OfBody": message.get("MD5OfBody") or hashlib.md5(message["Body"].encode()).hexdigest(),  # noqa: S324
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": REGION,
    }


class SqsPoller:
    """Long-polls one queue and invokes its subscribed function, as an event source mapping does."""

    def __init__(
        self,
        sqs: Any,
        subscription: QueueSubscription,
        queue_url: str,
        queue_arn: str,
        function: LocalFunction,
        wait_seconds: int = 1,
    ) -> None:
        self.sqs = sqs
        self.subscription = subscription
        self.queue_url = queue_url
        self.queue_arn = queue_arn
        self.function = function
        self.wait_seconds = wait_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"sqs-{subscription.queue_logical_id}", daemon=True)
        self.batches = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.wait_seconds + 35)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception:
                traceback.print_exc()
                self._stop.wait(1)

    def poll_once(self) -> int:
        received = self.sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=min(self.subscription.batch_size, 10),
            WaitTimeSeconds=self.wait_seconds,
            AttributeNames=["All"],
            MessageSystemAttributeNames=["All"],
            MessageAttributeNames=["All"],
        )
        messages = received.get("Messages", [])
        if not messages:
            return 0
        records = [sqs_record(m, self.queue_arn) for m in messages]
        self.batches += 1
        try:
            result = self.function.invoke({"Records": records})
        except Exception:
            traceback.print_exc()
            return len(records)  # a failed invocation: the whole batch returns after its visibility timeout
        failed: set[str] = set()
        if self.subscription.report_batch_item_failures and isinstance(result, dict):
            failed = {str(item.get("itemIdentifier")) for item in result.get("batchItemFailures") or []}
        done = [r for r in records if r["messageId"] not in failed]
        for start in range(0, len(done), 10):
            chunk = done[start : start + 10]
            self.sqs.delete_message_batch(
                QueueUrl=self.queue_url,
                Entries=[{"Id": str(i), "ReceiptHandle": r["receiptHandle"]} for i, r in enumerate(chunk)],
            )
        return len(records)
