"""HTTP API Lambda authorizers, as API Gateway runs them, driven by the test template's Auth section."""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any

import httpx
import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from devstack.runtime import LocalRuntime


@pytest.fixture
def client(runtime: LocalRuntime) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=runtime.api_url, timeout=30) as http:
        yield http


def calls_with(record_dir: Path, token: str) -> list[dict[str, Any]]:
    log = record_dir / "authorizer.log"
    lines = log.read_text().splitlines() if log.exists() else []
    return [call for call in map(json.loads, lines) if call["token"] == token]


def assert_refused(response: httpx.Response, status: int) -> None:
    """API Gateway's own answer, worded as AWS words it."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"message": {401: "Unauthorized", 403: "Forbidden", 500: "Internal Server Error"}[status]}


def test_an_allowed_request_carries_the_authorizer_context_and_the_answer_is_cached(
    client: httpx.Client, record_dir: Path
) -> None:
    token = f"allow-{uuid.uuid4().hex[:8]}"
    for _ in range(3):
        response = client.get("/private", headers={"Authorization": token})
        assert response.status_code == 200, response.text
        context = response.json()["event"]["requestContext"]["authorizer"]
        assert context == {"lambda": {"user": token.removeprefix("allow-"), "route": "GET /private"}}
    calls = calls_with(record_dir, token)
    assert len(calls) == 1  # ReauthorizeEvery: 300 - one invocation for the same identity
    assert calls[0]["type"] == "REQUEST"
    assert calls[0]["routeArn"] == "arn:aws:execute-api:us-east-1:000000000000:local/$default/GET/private"


def test_without_the_identity_source_it_is_401_and_the_authorizer_is_not_asked(
    client: httpx.Client, record_dir: Path
) -> None:
    before = calls_with(record_dir, "")
    assert_refused(client.get("/private"), 401)
    assert_refused(client.get("/private", headers={"Authorization": ""}), 401)
    assert calls_with(record_dir, "") == before


def test_a_refusal_is_403_and_a_failing_authorizer_500(client: httpx.Client, record_dir: Path) -> None:
    assert_refused(client.get("/private", headers={"Authorization": "deny"}), 403)
    assert_refused(client.get("/private", headers={"Authorization": "fail"}), 500)
    assert_refused(client.get("/private", headers={"Authorization": "fail"}), 500)
    assert len(calls_with(record_dir, "fail")) == 2  # a failure is never cached


def test_reauthorize_every_zero_asks_every_time(client: httpx.Client, record_dir: Path) -> None:
    token = f"allow-{uuid.uuid4().hex[:8]}"
    for _ in range(3):
        assert client.get("/uncached", headers={"Authorization": token}).status_code == 200
    assert len(calls_with(record_dir, token)) == 3


def test_a_route_that_opts_out_needs_no_identity(client: httpx.Client) -> None:
    assert client.get("/echo/open").status_code == 200


def test_an_iam_policy_answer_is_evaluated_per_route(client: httpx.Client, record_dir: Path) -> None:
    token = f"allow-{uuid.uuid4().hex[:8]}"
    allowed = client.get("/policy/anything", params={"token": token})
    assert allowed.status_code == 200, allowed.text
    assert allowed.json()["event"]["requestContext"]["authorizer"]["lambda"] == {"user": token.removeprefix("allow-")}
    # the same cached policy denies another route explicitly
    assert_refused(client.get("/policy/forbidden", params={"token": token}), 403)
    assert len(calls_with(record_dir, token)) == 1
    assert_refused(client.get("/policy/anything", params={"token": "deny"}), 403)
    assert_refused(client.get("/policy/anything"), 401)
