"""Identity: users, external identities, link suggestions, channels, API keys and the audit log."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.event_handler import Response

from chat4all import bootstrap
from chat4all.api.access import caller
from chat4all.api.app import create_resolver, json_response, serve
from chat4all.api.requests import parse_body, parse_query, resource_id
from chat4all.api.schemas import (
    AuditLogQuery,
    CreateApiKeyRequest,
    CreateChannelRequest,
    CreateUserRequest,
    LinkIdentityRequest,
    UpdateChannelRequest,
    UpdateUserRequest,
)
from chat4all.api.views import (
    api_key_view,
    audit_page_view,
    channel_view,
    channels_view,
    identity_view,
    suggestions_view,
    user_view,
)
from chat4all.observability import logger, tracer

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

settings = bootstrap.settings()
app = create_resolver()


@app.post("/v1/users")
def create_user() -> Response[str]:
    request = parse_body(app.current_event, CreateUserRequest, settings.max_body_bytes)
    user = bootstrap.identity_service().create_user(request.command(), caller(app))
    return json_response(201, user_view(user), headers={"Location": f"/v1/users/{user.user_id}"})


@app.get("/v1/users/<user_id>")
def get_user(user_id: str) -> Response[str]:
    user = bootstrap.identity_service().get_user(resource_id(user_id, "user"), caller(app))
    return json_response(200, user_view(user))


@app.patch("/v1/users/<user_id>")
def update_user(user_id: str) -> Response[str]:
    target = resource_id(user_id, "user")
    request = parse_body(app.current_event, UpdateUserRequest, settings.max_body_bytes)
    user = bootstrap.identity_service().update_user(request.command(target), caller(app))
    return json_response(200, user_view(user))


@app.post("/v1/users/<user_id>/identities")
def link_identity(user_id: str) -> Response[str]:
    target = resource_id(user_id, "user")
    request = parse_body(app.current_event, LinkIdentityRequest, settings.max_body_bytes)
    identity = bootstrap.identity_service().link_identity(request.command(target), caller(app))
    return json_response(201, identity_view(identity))


@app.delete("/v1/users/<user_id>/identities/<identity_id>")
def unlink_identity(user_id: str, identity_id: str) -> Response[str]:
    bootstrap.identity_service().unlink_identity(
        resource_id(user_id, "user"), resource_id(identity_id, "identity"), caller(app)
    )
    return Response(status_code=204)


@app.get("/v1/users/<user_id>/link-suggestions")
def link_suggestions(user_id: str) -> Response[str]:
    target = resource_id(user_id, "user")
    suggestions = bootstrap.identity_service().link_suggestions(target, caller(app))
    return json_response(200, suggestions_view(target, suggestions))


@app.post("/v1/channels")
def create_channel() -> Response[str]:
    request = parse_body(app.current_event, CreateChannelRequest, settings.max_body_bytes)
    channel = bootstrap.identity_service().create_channel(request.command(), caller(app))
    return json_response(201, channel_view(channel), headers={"Location": f"/v1/channels/{channel.channel_id}"})


@app.get("/v1/channels")
def list_channels() -> Response[str]:
    return json_response(200, channels_view(bootstrap.identity_service().list_channels(caller(app))))


@app.get("/v1/channels/<channel_id>")
def get_channel(channel_id: str) -> Response[str]:
    channel = bootstrap.identity_service().get_channel(resource_id(channel_id, "channel"), caller(app))
    return json_response(200, channel_view(channel))


@app.patch("/v1/channels/<channel_id>")
def update_channel(channel_id: str) -> Response[str]:
    target = resource_id(channel_id, "channel")
    request = parse_body(app.current_event, UpdateChannelRequest, settings.max_body_bytes)
    channel = bootstrap.identity_service().update_channel(request.command(target), caller(app))
    return json_response(200, channel_view(channel))


@app.delete("/v1/channels/<channel_id>")
def delete_channel(channel_id: str) -> Response[str]:
    bootstrap.identity_service().delete_channel(resource_id(channel_id, "channel"), caller(app))
    return Response(status_code=204)


@app.post("/v1/api-keys")
def create_api_key() -> Response[str]:
    request = parse_body(app.current_event, CreateApiKeyRequest, settings.max_body_bytes)
    key, raw_key = bootstrap.identity_service().create_api_key(request.command(), caller(app))
    return json_response(201, api_key_view(key, raw_key))


@app.delete("/v1/api-keys/<key_id>")
def revoke_api_key(key_id: str) -> Response[str]:
    bootstrap.identity_service().revoke_api_key(resource_id(key_id, "API key"), caller(app))
    return Response(status_code=204)


@app.get("/v1/audit-log")
def audit_log() -> Response[str]:
    query = parse_query(app.current_event.query_string_parameters, AuditLogQuery)
    page = bootstrap.identity_service().audit_entries(
        caller(app), entity_id=query.entity_id, limit=query.limit, before=query.before
    )
    return json_response(200, audit_page_view(page))


@logger.inject_lambda_context
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return serve(app, event, context)
