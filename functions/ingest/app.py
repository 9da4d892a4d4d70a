"""Ingest: accepts messages from the API and channel webhooks."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig, idempotent_function
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyPersistenceLayerError,
)
from aws_lambda_powertools.utilities.idempotency.serialization.dataclass import DataclassSerializer

from chat4all import bootstrap
from chat4all.api.access import caller
from chat4all.api.app import create_resolver, json_response, serve
from chat4all.api.requests import parse_body, raw_body
from chat4all.api.schemas import SendMessageRequest
from chat4all.api.views import accepted_view
from chat4all.channels import registry
from chat4all.domain.errors import NotFoundError
from chat4all.observability import current_correlation_id, logger, metrics, tracer
from chat4all.services.auth import require_self_or_admin
from chat4all.services.messages import AcceptedMessage

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

    from chat4all.domain.commands import SendMessage
    from chat4all.domain.models import Platform, Principal

settings = bootstrap.settings()
app = create_resolver()
idempotency = IdempotencyConfig(
    event_key_jmespath="message_id",
    payload_validation_jmespath="[conversation_id, sender_id, content, file_id, channel_type, template]",
    expires_after_seconds=settings.idempotency_ttl_seconds,
)


@idempotent_function(
    data_keyword_argument="command",
    persistence_store=bootstrap.idempotency_store(),
    config=idempotency,
    output_serializer=DataclassSerializer(AcceptedMessage),
)
def accept_message(command: SendMessage, principal: Principal, correlation_id: str | None = None) -> AcceptedMessage:
    return bootstrap.message_service().accept(command, principal, correlation_id=correlation_id)


@app.post("/v1/messages")
def post_message() -> Response[str]:
    principal = caller(app)
    request = parse_body(app.current_event, SendMessageRequest, settings.max_body_bytes)
    command = request.command()
    require_self_or_admin(principal, command.sender_id)  # before the idempotency cache can answer
    # the message keeps the request's correlation id (a replay keeps the first request's)
    correlation_id = current_correlation_id()
    accepted: AcceptedMessage | None = None
    if request.message_id is not None:  # a client's id can come again: the cache answers its replays at once
        with contextlib.suppress(IdempotencyAlreadyInProgressError, IdempotencyPersistenceLayerError):
            accepted = accept_message(command=command, principal=principal, correlation_id=correlation_id)
    if accepted is None:
        # an id of ours (new: no replay can come), or the cache could not answer (a duplicate in flight, Redis in
        # trouble): MongoDB answers, where the message is stored before any 202: the same 202, or a 409 for
        # another body
        accepted = bootstrap.message_service().accept(command, principal, correlation_id=correlation_id)
    metrics.add_metric(name="MessagesAccepted", unit=MetricUnit.Count, value=1)
    return json_response(202, accepted_view(accepted), headers={"Location": accepted.status_url})


def webhook_platform(segment: str, *, subscription: bool = False) -> Platform:
    """The registered platform whose webhooks arrive at `/webhooks/{segment}`; 404 for any other, and for a
    subscription check on a platform that has none (Telegram)."""
    found = registry.by_webhook_path(segment)
    if found is None or (subscription and not found.subscription_check):
        what = "subscription checks" if found is not None else "webhooks"
        raise NotFoundError(f"no platform takes {what} at /webhooks/{segment[:40]}")
    return found.platform


@app.get("/webhooks/<platform>")
def answer_subscription(platform: str) -> Response[str]:
    found = webhook_platform(platform, subscription=True)
    params = app.current_event.query_string_parameters or {}
    challenge = bootstrap.webhook_service().subscription_challenge(found, params)
    return Response(status_code=200, content_type="text/plain", body=challenge)


@app.post("/webhooks/<platform>")
def receive_webhook(platform: str) -> Response[str]:
    found = webhook_platform(platform)
    body = raw_body(app.current_event, settings.max_body_bytes)
    events = bootstrap.webhook_service().receive(found, app.current_event.headers, body)
    metrics.add_metric(name="WebhookEventsReceived", unit=MetricUnit.Count, value=len(events))
    return json_response(200, {"received": len(events)})


@app.get("/health")
def health() -> Response[str]:
    report = bootstrap.health_monitor().report()
    status = "UP" if report.healthy else "DOWN"
    return json_response(200 if report.healthy else 503, {"status": status, "dependencies": report.dependencies})


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    idempotency.register_lambda_context(context)
    return serve(app, event, context)
