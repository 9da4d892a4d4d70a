"""The role table covers every route of the template, and the function side reads the authorizer's context."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEventV2

from chat4all.api.access import (
    ROLE_TABLE,
    Access,
    allowed_methods,
    caller_context,
    is_catch_all,
    principal_from,
    refusal_context,
)
from chat4all.domain.errors import DependencyUnavailableError, UnauthorizedError
from chat4all.domain.models import Principal, Role
from devstack.template import DEFAULT_ROUTE, http_authorizers, http_routes, load_template

TEMPLATE = load_template(Path(__file__).resolve().parents[2] / "template.yaml")


def test_every_route_of_the_template_is_in_the_role_table_and_nothing_else() -> None:
    served = {f"{r.method} {r.path}" for r in http_routes(TEMPLATE) if r.path != DEFAULT_ROUTE}
    assert set(ROLE_TABLE) == served


def test_allowed_methods_come_from_the_table() -> None:
    assert allowed_methods("/v1/users") == ["POST"]
    assert allowed_methods("/v1/users/abc") == ["GET", "PATCH"]
    assert allowed_methods("/v1/channels/x/") == ["DELETE", "GET", "PATCH"]
    assert allowed_methods("/v1/nothing") == []
    assert allowed_methods("/v1/users//identities") == []


def test_public_routes_are_exactly_those_without_the_authorizer() -> None:
    for route in http_routes(TEMPLATE):
        if is_catch_all(DEFAULT_ROUTE if route.path == DEFAULT_ROUTE else f"{route.method} {route.path}"):
            assert route.authorizer is None
            continue
        public = ROLE_TABLE[f"{route.method} {route.path}"] is Access.PUBLIC
        assert public == (route.authorizer is None), route
        if route.path.startswith("/v1"):
            assert route.authorizer == "BearerAuthorizer", route


def test_the_authorizer_never_lets_api_gateway_answer_for_it() -> None:
    (authorizer,) = http_authorizers(TEMPLATE).values()
    assert authorizer.function == "AuthorizerFunction"
    assert authorizer.simple_responses and authorizer.payload_version == "2.0"
    # no identity source: a missing Authorization header reaches the authorizer instead of API Gateway's own 401
    assert authorizer.identity_headers == ()
    api = TEMPLATE["Resources"]["HttpApi"]["Properties"]["Auth"]["Authorizers"]["BearerAuthorizer"]
    # and no result cache, which could not be invalidated when a key is revoked or a user deactivated
    assert api["Identity"]["ReauthorizeEvery"] == 0


def event(context: dict[str, Any] | None) -> APIGatewayProxyEventV2:
    request_context: dict[str, Any] = {"requestId": "req-1", "http": {"sourceIp": "198.51.100.7", "method": "GET"}}
    if context is not None:
        request_context["authorizer"] = {"lambda": context}
    return APIGatewayProxyEventV2({"routeKey": "GET /v1/users/{user_id}", "requestContext": request_context})


def test_a_verified_caller_travels_with_request_id_and_source_ip() -> None:
    principal = Principal("key-1", Role.AGENT, "user-1")
    received = principal_from(event(caller_context(principal)))
    assert received == Principal("key-1", Role.AGENT, "user-1", "req-1", "198.51.100.7")
    admin = principal_from(event(caller_context(Principal("key-2", Role.ADMIN))))
    assert (admin.role, admin.user_id) == (Role.ADMIN, None)


@pytest.mark.parametrize(
    "context",
    [
        None,
        {},
        refusal_context(UnauthorizedError("unknown or revoked API key")),
        {"key_id": "k", "role": "superuser"},
        {"role": "admin"},
    ],
)
def test_no_verified_caller_is_401(context: dict[str, Any] | None) -> None:
    with pytest.raises(UnauthorizedError):
        principal_from(event(context))


def test_an_authorizer_that_could_not_ask_the_database_is_503() -> None:
    with pytest.raises(DependencyUnavailableError):
        principal_from(event(refusal_context(DependencyUnavailableError("the database is unavailable"))))
