"""Status: applies delivery status reported by the channels, and serves messages and their status."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from chat4all import bootstrap
from chat4all.api.access import caller
from chat4all.api.app import create_resolver, json_response, serve_or_consume
from chat4all.api.requests import resource_id
from chat4all.api.views import message_status_view, message_view
from chat4all.domain.errors import RetryLaterError, StatusTargetMissingError
from chat4all.domain.wire import ChannelStatusReported
from chat4all.observability import count, log_context, logger, metrics, tracer

if TYPE_CHECKING:
    from aws_lambda_powertools.event_handler import Response
    from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
    from aws_lambda_powertools.utilities.typing import LambdaContext

    from chat4all.domain.models import Delivery, Message

app = create_resolver()
UNKNOWN_TARGET_RETRY_SECONDS = 5


@app.get("/v1/messages/<message_id>")
def get_message(message_id: str) -> Response[str]:
    return json_response(200, message_view(*_readable(message_id)))


@app.get("/v1/messages/<message_id>/status")
def get_message_status(message_id: str) -> Response[str]:
    return json_response(200, message_status_view(*_readable(message_id)))


def _readable(message_id: str) -> tuple[Message, list[Delivery]]:
    """The message the caller may read, and a GROUP message's deliveries (one read of them, after the role
    check); a one-to-one message has none."""
    principal = caller(app)
    service = bootstrap.message_service()
    message = service.get(resource_id(message_id, "message"), principal)
    return message, service.deliveries(message)


def record_handler(record: SQSRecord) -> None:
    report = ChannelStatusReported.parse(record.body)
    # the reporting webhook's correlation id until the report is matched to its message: the service logs the
    # lines applying it with the message's own (MessagesDelivered, MessagesRead, ... are counted there)
    with log_context(correlation_id=report.correlation_id):
        try:
            moved = bootstrap.status_service().apply(report)
        except StatusTargetMissingError as exc:
            # the report overtook the route function's write of the platform id; try again shortly
            raise RetryLaterError(exc.detail, delay_seconds=UNKNOWN_TARGET_RETRY_SECONDS) from exc
        count("StatusReportsApplied" if moved else "StatusReportsKeptInHistory")
        logger.info("status report done", extra={"platform_message_id": report.platform_message_id, "moved": moved})


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return serve_or_consume(app, event, context, record_handler, queue_setting="status_queue_url")
