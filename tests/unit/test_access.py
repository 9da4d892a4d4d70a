"""The role table covers every route of the template, and each function authenticates its own requests."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from aws_lambda_powertools.event_handler import Response

from chat4all.api.access import ROLE_TABLE, Access, allowed_methods
from chat4all.api.app import DEADLINE_MARGIN_SECONDS, create_resolver, serve
from chat4all.domain.errors import DependencyUnavailableError, TooManyRequestsError, UnauthorizedError
from chat4all.domain.models import Principal, Role
from chat4all.services.auth import RequestLimits
from chat4all.services.notifications import EventBuffer
from tests.fakes.in_memory import InMemoryEventOutbox, InMemoryEventPublisher

if TYPE_CHECKING:
    from collections.abc import Callable

    from aws_lambda_powertools.event_handler import APIGatewayHttpResolver

TEMPLATE_PATH = Path(__file__).resolve().parents[2] / "template.yaml"


class _CloudFormationLoader(yaml.SafeLoader):
    """Reads template.yaml with its short-form intrinsics (!Ref, !GetAtt ...) as plain values."""


_CloudFormationLoader.add_multi_constructor("!", lambda loader, suffix, node: None)
TEMPLATE: dict[str, Any] = yaml.load(TEMPLATE_PATH.read_text(), Loader=_CloudFormationLoader)


def http_events() -> list[tuple[str, dict[str, Any]]]:
    return [
        (name, event["Properties"])
        for name, resource in TEMPLATE["Resources"].items()
        if resource["Type"] == "AWS::Serverless::Function"
        for event in resource["Properties"].get("Events", {}).values()
        if event["Type"] == "HttpApi"
    ]


def test_every_route_of_the_template_is_in_the_role_table_and_nothing_else() -> None:
    served = {f"{p['Method']} {p['Path']}" for _, p in http_events() if "Path" in p}
    assert set(ROLE_TABLE) == served
    # and the one route without a path is API Gateway's $default, answered by ingest's resolver (404/405)
    assert [name for name, p in http_events() if "Path" not in p] == ["IngestFunction"]


def test_no_authorizer_sits_in_front_of_the_functions() -> None:
    assert "Auth" not in TEMPLATE["Resources"]["HttpApi"]["Properties"]
    assert all("Auth" not in properties for _, properties in http_events())
    assert "AuthorizerFunction" not in TEMPLATE["Resources"]


def test_allowed_methods_come_from_the_table() -> None:
    assert allowed_methods("/v1/users") == ["POST"]
    assert allowed_methods("/v1/users/abc") == ["GET", "PATCH"]
    assert allowed_methods("/v1/channels/x/") == ["DELETE", "GET", "PATCH"]
    assert allowed_methods("/v1/nothing") == []
    assert allowed_methods("/v1/users//identities") == []


# ------------------------------------------------------------------ the middleware, through a real resolver


class Credentials:
    """A stand-in Authenticator: who each bearer header is, or what checking it raises."""

    def __init__(self) -> None:
        self.seen: list[str | None] = []
        self.down = False

    def authenticate(self, authorization: str | None) -> Principal:
        self.seen.append(authorization)
        if self.down:
            raise DependencyUnavailableError("the database is unavailable")
        if authorization == "Bearer admin-key":
            return Principal("key-admin", Role.ADMIN)
        if authorization == "Bearer agent-key":
            return Principal("key-agent", Role.AGENT, "user-1")
        raise UnauthorizedError("unknown or revoked API key, or its user is deactivated")


class FakeContext:
    def __init__(self, remaining_ms: int) -> None:
        self.remaining_ms = remaining_ms

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


def resolver(
    credentials: Credentials, admit: Callable[[Principal], None] = lambda principal: None
) -> tuple[APIGatewayHttpResolver, list[Principal]]:
    app = create_resolver(authenticate=credentials.authenticate, admit=admit)
    seen: list[Principal] = []

    def record() -> Response[str]:
        from chat4all.api.access import caller

        seen.append(caller(app))
        return Response(status_code=200, content_type="application/json", body="{}")

    app.get("/v1/audit-log")(record)
    app.get("/v1/users/<user_id>")(lambda user_id: record())
    app.get("/health")(lambda: Response(status_code=200, content_type="application/json", body="{}"))
    return app, seen


def request(route_key: str, path: str, authorization: str | None = None) -> dict[str, Any]:
    method, _, _ = route_key.partition(" ")
    headers = {"authorization": authorization} if authorization else {}
    return {
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": path,
        "headers": headers,
        "requestContext": {
            "requestId": "req-1",
            "stage": "$default",
            "http": {"method": method, "path": path, "sourceIp": "198.51.100.7"},
        },
    }


def answer(app: APIGatewayHttpResolver, event: dict[str, Any], remaining_ms: int = 30_000) -> tuple[int, Any]:
    result = serve(app, event, FakeContext(remaining_ms), EventBuffer(InMemoryEventPublisher(), InMemoryEventOutbox()))  # type: ignore[arg-type]
    return result["statusCode"], json.loads(result["body"]) if result.get("body") else None


def test_a_verified_caller_reaches_the_route_with_request_id_and_source_ip() -> None:
    credentials = Credentials()
    app, seen = resolver(credentials)
    status, _ = answer(app, request("GET /v1/users/{user_id}", "/v1/users/u", "Bearer agent-key"))
    assert status == 200
    assert seen == [Principal("key-agent", Role.AGENT, "user-1", "req-1", "198.51.100.7")]
    assert credentials.seen == ["Bearer agent-key"]


@pytest.mark.parametrize("authorization", [None, "Bearer nope", "Basic abc"])
def test_no_valid_credential_is_a_401_problem(authorization: str | None) -> None:
    app, seen = resolver(Credentials())
    result = serve(
        app,
        request("GET /v1/audit-log", "/v1/audit-log", authorization),
        FakeContext(30_000),
        EventBuffer(InMemoryEventPublisher(), InMemoryEventOutbox()),
    )  # type: ignore[arg-type]
    assert result["statusCode"] == 401
    assert result["headers"]["Content-Type"] == "application/problem+json"
    assert json.loads(result["body"])["status"] == 401
    assert seen == []


def test_an_agent_on_an_admin_operation_is_403_and_an_admin_passes() -> None:
    app, seen = resolver(Credentials())
    assert answer(app, request("GET /v1/audit-log", "/v1/audit-log", "Bearer agent-key"))[0] == 403
    assert seen == []
    assert answer(app, request("GET /v1/audit-log", "/v1/audit-log", "Bearer admin-key"))[0] == 200
    assert [p.key_id for p in seen] == ["key-admin"]


def test_credentials_that_cannot_be_checked_are_a_503_problem() -> None:
    credentials = Credentials()
    credentials.down = True
    app, _ = resolver(credentials)
    status, body = answer(app, request("GET /v1/audit-log", "/v1/audit-log", "Bearer admin-key"))
    assert (status, body["status"]) == (503, 503)


def test_public_routes_do_not_authenticate() -> None:
    credentials = Credentials()
    app, _ = resolver(credentials)
    assert answer(app, request("GET /health", "/health"))[0] == 200
    assert credentials.seen == []
    assert Access.PUBLIC is ROLE_TABLE["GET /health"]


# ------------------------------------------------------------------ the function answers, never the gateway


def test_a_request_still_running_near_the_timeout_is_answered_503_by_the_function() -> None:
    app, _ = resolver(Credentials())
    stalled: list[float] = []

    @app.get("/v1/users/<user_id>/link-suggestions")
    def stall(user_id: str) -> Response[str]:
        started = time.monotonic()
        try:
            time.sleep(5)  # a dependency that stalls
        finally:
            stalled.append(time.monotonic() - started)
        return Response(status_code=200, content_type="application/json", body="{}")

    remaining_ms = int((DEADLINE_MARGIN_SECONDS + 0.2) * 1000)
    event = request("GET /v1/users/{user_id}/link-suggestions", "/v1/users/u/link-suggestions", "Bearer admin-key")
    result = serve(app, event, FakeContext(remaining_ms), EventBuffer(InMemoryEventPublisher(), InMemoryEventOutbox()))  # type: ignore[arg-type]
    assert result["statusCode"] == 503
    assert result["headers"]["Content-Type"] == "application/problem+json"
    assert result["headers"]["Retry-After"] == "1"
    assert stalled and stalled[0] < 1.0  # interrupted at the deadline, not after the 5 s stall
    # and the timer is gone: a later request is not interrupted
    assert answer(app, request("GET /v1/users/{user_id}", "/v1/users/u", "Bearer admin-key"))[0] == 200


def test_an_exception_outside_the_routes_is_a_500_problem() -> None:
    app, _ = resolver(Credentials())
    result = serve(
        app,
        {"not": "an API Gateway event"},
        FakeContext(30_000),
        EventBuffer(InMemoryEventPublisher(), InMemoryEventOutbox()),
    )  # type: ignore[arg-type]
    assert result["statusCode"] == 500
    body = json.loads(result["body"])
    assert body["status"] == 500 and "Traceback" not in result["body"]


def test_the_events_a_request_collected_are_published_when_it_ends_even_by_an_error() -> None:
    app, _ = resolver(Credentials())
    bus = InMemoryEventPublisher()
    events = EventBuffer(bus, InMemoryEventOutbox())

    @app.get("/v1/conversations")
    def collect_then_fail() -> Response[str]:
        events.publish("MessageReceived", {"message_id": "m-1"})
        raise RuntimeError("after the change was written")

    result = serve(
        app, request("GET /v1/conversations", "/v1/conversations", "Bearer admin-key"), FakeContext(30_000), events
    )  # type: ignore[arg-type]
    assert result["statusCode"] == 500
    assert bus.events == [("chat4all", "MessageReceived", {"message_id": "m-1"})]


def test_a_timer_set_before_the_request_runs_on_after_it() -> None:
    import signal

    from chat4all.api.app import deadline

    fired: list[int] = []
    previous = signal.signal(signal.SIGALRM, lambda signum, frame: fired.append(signum))
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.4)
        with deadline(5):
            pass
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 0 < remaining <= 0.4
        time.sleep(0.6)
        assert fired == [signal.SIGALRM]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# ------------------------------------------------------------------ request limits


def test_a_caller_past_its_rate_is_a_429_problem_with_retry_after_and_the_route_does_not_run() -> None:
    admitted: list[Principal] = []

    def admit(principal: Principal) -> None:
        admitted.append(principal)
        if principal.key_id == "key-agent":
            raise TooManyRequestsError("past its rate", retry_after_seconds=2)

    app, seen = resolver(Credentials(), admit)
    result = serve(
        app,
        request("GET /v1/users/{user_id}", "/v1/users/u", "Bearer agent-key"),
        FakeContext(30_000),  # type: ignore[arg-type]
        EventBuffer(InMemoryEventPublisher(), InMemoryEventOutbox()),
    )
    assert result["statusCode"] == 429
    assert result["headers"]["Retry-After"] == "2"
    assert json.loads(result["body"])["status"] == 429
    assert seen == []
    # another credential is not held back by it
    assert answer(app, request("GET /v1/users/{user_id}", "/v1/users/u", "Bearer admin-key"))[0] == 200
    assert [p.key_id for p in admitted] == ["key-agent", "key-admin"]


class Buckets:
    """A stand-in limiter: how long each key would wait, and what it was asked."""

    def __init__(self, waits: dict[str, float]) -> None:
        self.waits = waits
        self.asked: list[tuple[str, int]] = []

    def wait_seconds(self, key: str, per_second: int) -> float:
        self.asked.append((key, per_second))
        return self.waits.get(key, 0.0)


def test_each_credential_is_held_to_its_own_rate_or_the_default() -> None:
    buckets = Buckets({"requests:slow": 0.2, "requests:jwt:u-2": 2.5})
    limits = RequestLimits(buckets, default_per_second=200)  # type: ignore[arg-type]
    limits.admit(Principal("fast", Role.AGENT, "u-1", rate_limit=50))
    with pytest.raises(TooManyRequestsError) as slow:
        limits.admit(Principal("slow", Role.AGENT, "u-1", rate_limit=5))
    with pytest.raises(TooManyRequestsError) as token:
        limits.admit(Principal("jwt:u-2", Role.AGENT, "u-2"))
    assert (slow.value.retry_after_seconds, token.value.retry_after_seconds) == (1, 3)  # whole seconds, at least 1
    assert buckets.asked == [("requests:fast", 50), ("requests:slow", 5), ("requests:jwt:u-2", 200)]
