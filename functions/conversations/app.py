"""Conversations: creation, participants and history."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.event_handler import Response

from chat4all import bootstrap
from chat4all.api.access import caller
from chat4all.api.app import create_resolver, json_response, serve
from chat4all.api.requests import parse_body, parse_query, resource_id
from chat4all.api.schemas import AddParticipantRequest, ConversationListQuery, CreateConversationRequest, HistoryQuery
from chat4all.api.views import conversation_page_view, conversation_view, page_view
from chat4all.observability import logger, tracer

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

settings = bootstrap.settings()
app = create_resolver()


@app.post("/v1/conversations")
def create_conversation() -> Response[str]:
    principal = caller(app)
    request = parse_body(app.current_event, CreateConversationRequest, settings.max_body_bytes)
    conversation = bootstrap.conversation_service().create(request.command(), principal)
    location = f"/v1/conversations/{conversation.conversation_id}"
    return json_response(201, conversation_view(conversation), headers={"Location": location})


@app.get("/v1/conversations")
def list_conversations() -> Response[str]:
    principal = caller(app)
    query = parse_query(app.current_event.query_string_parameters, ConversationListQuery)
    participant = str(query.participant) if query.participant else None
    page = bootstrap.conversation_service().list_for(participant, principal, limit=query.limit, before=query.before)
    return json_response(200, conversation_page_view(page))


@app.post("/v1/conversations/<conversation_id>/participants")
def add_participant(conversation_id: str) -> Response[str]:
    principal = caller(app)
    request = parse_body(app.current_event, AddParticipantRequest, settings.max_body_bytes)
    conversation = bootstrap.conversation_service().add_participant(
        resource_id(conversation_id, "conversation"), str(request.user_id), principal
    )
    return json_response(201, conversation_view(conversation))


@app.delete("/v1/conversations/<conversation_id>/participants/<user_id>")
def remove_participant(conversation_id: str, user_id: str) -> Response[str]:
    principal = caller(app)
    bootstrap.conversation_service().remove_participant(
        resource_id(conversation_id, "conversation"), resource_id(user_id, "participant"), principal
    )
    return Response(status_code=204)


@app.get("/v1/conversations/<conversation_id>")
def get_conversation(conversation_id: str) -> Response[str]:
    principal = caller(app)
    conversation = bootstrap.conversation_service().get(resource_id(conversation_id, "conversation"), principal)
    return json_response(200, conversation_view(conversation))


@app.get("/v1/conversations/<conversation_id>/messages")
def list_messages(conversation_id: str) -> Response[str]:
    principal = caller(app)
    query = HistoryQuery.from_params(app.current_event.query_string_parameters or {})
    page = bootstrap.conversation_service().history(
        resource_id(conversation_id, "conversation"), principal, limit=query.limit, before=query.before
    )
    return json_response(200, page_view(page))


@logger.inject_lambda_context
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return serve(app, event, context)
