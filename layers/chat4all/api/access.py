"""Who may call which operation: the contract's role table, enforced for every route of every function.

Every HTTP function authenticates its own requests, here: the resolver middleware every function gets from
`create_resolver()` verifies the bearer credential against PostgreSQL (an API key, or an OAuth2 JWT) before
any route runs, and applies the role table. There is no API Gateway authorizer: it would be a second Lambda
invocation per request, and its refusals are not problem JSON. See docs/AUTH.md.
"""

from __future__ import annotations

from dataclasses import replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from chat4all.domain.errors import ForbiddenError, UnauthorizedError
from chat4all.domain.models import Principal
from chat4all.observability import logger

if TYPE_CHECKING:
    from collections.abc import Callable

    from aws_lambda_powertools.event_handler import Response
    from aws_lambda_powertools.event_handler.api_gateway import ApiGatewayResolver
    from aws_lambda_powertools.event_handler.middlewares import NextMiddleware

    type Middleware = Callable[[ApiGatewayResolver, NextMiddleware], Response[Any]]
    from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEventV2


class Access(StrEnum):
    PUBLIC = "public"  # no bearer auth (the platform's own signature, or none)
    ADMIN = "admin"  # admins only; an agent gets 403
    SCOPED = "scoped"  # admins, and agents within their own user and conversations (decided by the service)


# The contract's role table, by API Gateway route key. A route that is not here is refused (403).
ROLE_TABLE: dict[str, Access] = {
    "GET /health": Access.PUBLIC,
    # every registered platform's webhooks (chat4all.channels.registry): the platform is the path's last segment
    "GET /webhooks/{platform}": Access.PUBLIC,
    "POST /webhooks/{platform}": Access.PUBLIC,
    # users and identities: admin only, except reading a user (itself and people it shares a conversation with)
    "POST /v1/users": Access.ADMIN,
    "GET /v1/users/{user_id}": Access.SCOPED,
    "PATCH /v1/users/{user_id}": Access.ADMIN,
    "POST /v1/users/{user_id}/identities": Access.ADMIN,
    "DELETE /v1/users/{user_id}/identities/{identity_id}": Access.ADMIN,
    "GET /v1/users/{user_id}/link-suggestions": Access.ADMIN,
    # channels, API keys, audit log: admin only
    "POST /v1/channels": Access.ADMIN,
    "GET /v1/channels": Access.ADMIN,
    "GET /v1/channels/{channel_id}": Access.ADMIN,
    "PATCH /v1/channels/{channel_id}": Access.ADMIN,
    "DELETE /v1/channels/{channel_id}": Access.ADMIN,
    "POST /v1/api-keys": Access.ADMIN,
    "DELETE /v1/api-keys/{key_id}": Access.ADMIN,
    "GET /v1/audit-log": Access.ADMIN,
    # conversations and messages: an agent only where it takes part, and only as itself
    "POST /v1/conversations": Access.SCOPED,
    "GET /v1/conversations/{conversation_id}": Access.SCOPED,
    "GET /v1/conversations/{conversation_id}/messages": Access.SCOPED,
    "GET /v1/conversations": Access.SCOPED,
    "POST /v1/conversations/{conversation_id}/participants": Access.SCOPED,
    "DELETE /v1/conversations/{conversation_id}/participants/{user_id}": Access.SCOPED,
    "POST /v1/messages": Access.SCOPED,
    "GET /v1/messages/{message_id}": Access.SCOPED,
    "GET /v1/messages/{message_id}/status": Access.SCOPED,
    # files: an agent reads files it uploaded or that belong to its conversations (chat4all.services.files)
    "POST /v1/files": Access.SCOPED,
    "GET /v1/files/{file_id}": Access.SCOPED,
    "DELETE /v1/files/{file_id}": Access.SCOPED,
    "GET /v1/files/{file_id}/parts": Access.SCOPED,
    "POST /v1/files/{file_id}/complete": Access.SCOPED,
}


def is_catch_all(route_key: str) -> bool:
    """API Gateway's `$default` route (locally `ANY /{proxy+}`): it only ever answers 404 or 405."""
    return route_key == "$default" or route_key.endswith(" /{proxy+}")


def allowed_methods(path: str) -> list[str]:
    """The methods the API serves on `path` (for a 405's Allow header), from the role table's route keys."""
    segments = path.rstrip("/").split("/")
    allowed = set()
    for route_key in ROLE_TABLE:
        method, _, template = route_key.partition(" ")
        parts = template.rstrip("/").split("/")
        if len(parts) == len(segments) and all(
            part == segment or (part.startswith("{") and part.endswith("}") and segment)
            for part, segment in zip(parts, segments, strict=True)
        ):
            allowed.add(method)
    return sorted(allowed)


# ------------------------------------------------------------------ the function side


type Authenticate = Callable[[str | None], Principal]
type Admit = Callable[[Principal], None]


def role_table(authenticate: Authenticate, admit: Admit) -> Middleware:
    """Resolver middleware: authenticates the bearer credential of every non-public route (401 without a valid
    one, 503 when it cannot be checked), holds it to its request rate (`admit`: 429 past it) and refuses an
    agent an admin operation (403)."""

    def enforce_role_table(app: ApiGatewayResolver, next_middleware: NextMiddleware) -> Response[Any]:
        event: APIGatewayProxyEventV2 = app.current_event  # type: ignore[assignment]
        route_key = event.route_key
        access = Access.PUBLIC if is_catch_all(route_key) else ROLE_TABLE.get(route_key)
        if access is None:
            logger.error("route is not in the role table", extra={"route_key": route_key})
            raise ForbiddenError("this operation is not open to any role")
        if access is not Access.PUBLIC:
            principal = replace(
                authenticate(event.headers.get("authorization")),
                request_id=event.request_context.request_id or None,
                source_ip=event.request_context.http.source_ip or None,
            )
            admit(principal)
            if access is Access.ADMIN and not principal.is_admin:
                raise ForbiddenError("this operation needs an admin")
            app.context["principal"] = principal
        return next_middleware(app)

    return enforce_role_table


def caller(app: ApiGatewayResolver) -> Principal:
    """The verified caller of the current request (set by the role table middleware)."""
    principal = app.context.get("principal")
    if not isinstance(principal, Principal):
        raise UnauthorizedError("the request carries no valid credentials")
    return principal
