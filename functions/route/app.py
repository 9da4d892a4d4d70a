"""Route: delivers accepted messages to their platform, in conversation order."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig, idempotent_function
from aws_lambda_powertools.utilities.idempotency.serialization.dataclass import DataclassSerializer
from pydantic import BaseModel

from chat4all import bootstrap
from chat4all.consumers import consume_batch
from chat4all.observability import logger, metrics, tracer
from chat4all.services.delivery import DeliveryOutcome

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
    from aws_lambda_powertools.utilities.typing import LambdaContext

settings = bootstrap.settings()
idempotency = IdempotencyConfig(event_key_jmespath="message_id", expires_after_seconds=settings.idempotency_ttl_seconds)


class RouteJob(BaseModel):
    message_id: str
    conversation_id: str


@idempotent_function(
    data_keyword_argument="job",
    persistence_store=bootstrap.idempotency_store(),
    config=idempotency,
    output_serializer=DataclassSerializer(DeliveryOutcome),
)
def deliver(job: RouteJob) -> DeliveryOutcome:
    return bootstrap.delivery_service().deliver(job.message_id)


def record_handler(record: SQSRecord) -> None:
    job = RouteJob.model_validate_json(record.body)
    outcome = deliver(job=job)
    if outcome.dead_letter:
        bootstrap.route_dead_letters().dead_letter(record.body, job.conversation_id, outcome.reason or "failed")
    metrics.add_metric(name=f"Messages{str(outcome.status).title()}", unit=MetricUnit.Count, value=1)
    logger.info("routed", extra={"message_id": job.message_id, "status": str(outcome.status)})


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    idempotency.register_lambda_context(context)
    return dict(
        consume_batch(
            event,
            context,
            record_handler,
            fifo=True,
            queue_url=settings.require("route_queue_url"),
            visibility=bootstrap.sqs_visibility(),
        )
    )
