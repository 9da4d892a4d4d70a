"""Identity: users, external identities, channels, API keys and the audit log."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.event_handler import Response

from chat4all import bootstrap
from chat4all.api.app import create_resolver, json_response
from chat4all.api.requests import authenticate, parse_body, resource_id
from chat4all.api.schemas import CreateApiKeyRequest, CreateChannelRequest, CreateUserRequest, LinkIdentityRequest
from chat4all.api.views import api_key_view, channel_view, identity_view, user_view
from chat4all.observability import logger, tracer

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

settings = bootstrap.settings()
app = create_resolver()


@app.post("/v1/users")
def create_user() -> Response[str]:
    principal = authenticate(app.current_event, bootstrap.authenticator())
    request = parse_body(app.current_event, CreateUserRequest, settings.max_body_bytes)
    user = bootstrap.identity_service().create_user(request.command(), principal)
    return json_response(201, user_view(user), headers={"Location": f"/v1/users/{user.user_id}"})


@app.get("/v1/users/<user_id>")
def get_user(user_id: str) -> Response[str]:
    authenticate(app.current_event, bootstrap.authenticator())
    user = bootstrap.identity_service().get_user(resource_id(user_id, "user"))
    return json_response(200, user_view(user))


@app.post("/v1/users/<user_id>/identities")
def link_identity(user_id: str) -> Response[str]:
    principal = authenticate(app.current_event, bootstrap.authenticator())
    request = parse_body(app.current_event, LinkIdentityRequest, settings.max_body_bytes)
    identity = bootstrap.identity_service().link_identity(request.command(resource_id(user_id, "user")), principal)
    return json_response(201, identity_view(identity))


@app.post("/v1/channels")
def create_channel() -> Response[str]:
    principal = authenticate(app.current_event, bootstrap.authenticator())
    request = parse_body(app.current_event, CreateChannelRequest, settings.max_body_bytes)
    channel = bootstrap.identity_service().create_channel(request.command(), principal)
    return json_response(201, channel_view(channel), headers={"Location": f"/v1/channels/{channel.channel_id}"})


@app.post("/v1/api-keys")
def create_api_key() -> Response[str]:
    principal = authenticate(app.current_event, bootstrap.authenticator())
    request = parse_body(app.current_event, CreateApiKeyRequest, settings.max_body_bytes)
    key, raw_key = bootstrap.identity_service().create_api_key(request.command(), principal)
    return json_response(201, api_key_view(key, raw_key))


@app.delete("/v1/api-keys/<key_id>")
def revoke_api_key(key_id: str) -> Response[str]:
    principal = authenticate(app.current_event, bootstrap.authenticator())
    bootstrap.identity_service().revoke_api_key(resource_id(key_id, "API key"), principal)
    return Response(status_code=204)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
