"""HTTP API Lambda authorizers (payload format 2.0), as API Gateway runs them in front of a route.

The identity sources must all be present and non-empty, else 401 without invoking the authorizer. The
authorizer answers with a simple response (`isAuthorized`, `context`) or an IAM policy; the answer is cached
by the identity-source values for `ReauthorizeEvery` seconds (never when that is 0 or there is no identity
source). A refusal is 403, an authorizer that fails or answers nonsense is 500, each API Gateway's own
`{"message": ...}` answer. The `context` reaches the route's event as `requestContext.authorizer.lambda`.
"""

from __future__ import annotations

import json
import re
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from devstack.lambda_service import InvocationResult
    from devstack.template import LambdaAuthorizer

# the parts of the route's event an authorizer event carries too (it never gets the body)
SHARED_EVENT_KEYS = (
    "routeKey",
    "rawPath",
    "rawQueryString",
    "cookies",
    "headers",
    "queryStringParameters",
    "requestContext",
    "pathParameters",
    "stageVariables",
)
MAX_CACHED = 10_000


class AuthorizerDenied(Exception):
    """API Gateway answers the request itself: 401 (no identity), 403 (refused) or 500 (authorizer failed)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class InvalidAuthorizerResponseError(ValueError):
    pass


class HttpAuthorizer:
    def __init__(self, config: LambdaAuthorizer, invoke: Callable[[str, bytes], Awaitable[InvocationResult]]) -> None:
        self.config = config
        self.invoke = invoke
        self._cache: dict[tuple[str, ...], tuple[float, dict[str, Any]]] = {}

    @property
    def has_identity_sources(self) -> bool:
        return bool(self.config.identity_headers or self.config.identity_query_strings)

    def identity(self, event: dict[str, Any]) -> list[str] | None:
        """The identity-source values of a request, or None when one is missing or empty."""
        headers: dict[str, str] = event.get("headers") or {}
        query: dict[str, str] = event.get("queryStringParameters") or {}
        values = [headers.get(name.lower(), "") for name in self.config.identity_headers]
        values += [query.get(name, "") for name in self.config.identity_query_strings]
        return values if all(values) else None

    async def authorize(self, event: dict[str, Any], route_arn: str) -> dict[str, Any]:
        """The authorizer's context for this request; raises AuthorizerDenied when API Gateway would refuse it."""
        identity = self.identity(event)
        if self.has_identity_sources and identity is None:
            raise AuthorizerDenied(401, "Unauthorized")
        ttl = self.config.reauthorize_every_seconds
        key = tuple(identity) if identity is not None and self.has_identity_sources and ttl > 0 else None
        response = self._cached(key)
        if response is None:
            response = await self._ask(event, route_arn, identity or [])
            if key is not None:
                self._store(key, response, ttl)
        try:
            allowed, context = self.decide(response, route_arn)
        except InvalidAuthorizerResponseError as exc:
            raise AuthorizerDenied(500, "the authorizer failed") from exc
        if not allowed:
            raise AuthorizerDenied(403, "Forbidden")
        return context

    def authorizer_event(self, event: dict[str, Any], route_arn: str, identity: list[str]) -> dict[str, Any]:
        shared = {key: event[key] for key in SHARED_EVENT_KEYS if key in event}
        return {"version": "2.0", "type": "REQUEST", "routeArn": route_arn, "identitySource": identity, **shared}

    async def _ask(self, event: dict[str, Any], route_arn: str, identity: list[str]) -> dict[str, Any]:
        payload = json.dumps(self.authorizer_event(event, route_arn, identity)).encode()
        result = await self.invoke(self.config.function, payload)
        if not result.ok:
            raise AuthorizerDenied(500, "the authorizer failed")
        try:
            response = result.json()
            self.decide(response, route_arn)  # an invalid answer is never cached
        except (ValueError, InvalidAuthorizerResponseError) as exc:
            raise AuthorizerDenied(500, "the authorizer failed") from exc
        return dict(response)

    def decide(self, response: Any, route_arn: str) -> tuple[bool, dict[str, Any]]:
        if not isinstance(response, dict):
            raise InvalidAuthorizerResponseError("not an object")
        context = response.get("context") or {}
        if not isinstance(context, dict):
            raise InvalidAuthorizerResponseError("context is not an object")
        if self.config.simple_responses:
            allowed = response.get("isAuthorized")
            if not isinstance(allowed, bool):
                raise InvalidAuthorizerResponseError("isAuthorized is not a boolean")
            return allowed, context
        return policy_allows(response.get("policyDocument"), route_arn), context

    def _cached(self, key: tuple[str, ...] | None) -> dict[str, Any] | None:
        if key is None:
            return None
        entry = self._cache.get(key)
        if entry is None or entry[0] <= time.monotonic():
            return None
        return entry[1]

    def _store(self, key: tuple[str, ...], response: dict[str, Any], ttl: int) -> None:
        now = time.monotonic()
        if len(self._cache) >= MAX_CACHED:
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
        self._cache[key] = (now + ttl, response)


def policy_allows(policy: Any, route_arn: str) -> bool:
    """An IAM policy's verdict on execute-api:Invoke of the route: an explicit Deny wins, no Allow is a Deny."""
    if not isinstance(policy, dict):
        raise InvalidAuthorizerResponseError("policyDocument is not an object")
    statements = policy.get("Statement")
    if isinstance(statements, dict):
        statements = [statements]
    if not isinstance(statements, list):
        raise InvalidAuthorizerResponseError("policyDocument.Statement is missing")
    allowed = False
    for statement in statements:
        if not isinstance(statement, dict) or statement.get("Effect") not in ("Allow", "Deny"):
            raise InvalidAuthorizerResponseError("a statement without Effect Allow or Deny")
        actions = _as_list(statement.get("Action"))
        resources = _as_list(statement.get("Resource"))
        applies = any(iam_match(a, "execute-api:Invoke") for a in actions) and any(
            iam_match(r, route_arn) for r in resources
        )
        if applies and statement["Effect"] == "Deny":
            return False
        allowed = allowed or applies
    return allowed


def iam_match(pattern: str, value: str) -> bool:
    """IAM wildcards: * any run of characters, ? any one character; nothing else is special."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, flags=re.DOTALL) is not None


def _as_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise InvalidAuthorizerResponseError(f"expected a string or a list of strings, got {value!r}")
