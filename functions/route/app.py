"""Route: delivers accepted messages to their platform, in conversation order.

A job on the route queue means "this conversation has work" (the delivery service sends the conversation's
PENDING messages in sequence order and fans GROUP messages out), or, with a `user_id`, "this recipient's lane has
deliveries" (the service sends them in sequence order). The batch's jobs of different keys run concurrently.
There is no idempotency cache here: the message in MongoDB (its open attempt, its receipt, its status) is the
authority on what was sent, and a cached outcome would only stand in the way of a redrive (docs/GUARANTEES.md).
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from chat4all import bootstrap
from chat4all.consumers import consume_conversations
from chat4all.domain.models import MessageStatus, utcnow
from chat4all.domain.wire import RouteJob
from chat4all.observability import count, log_context, logger, metrics, tracer
from chat4all.services import route_jobs

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

    from chat4all.services.delivery import DeliveryOutcome

settings = bootstrap.settings()


def conversation_work(job: RouteJob, context: LambdaContext) -> float | None:
    lease_until = utcnow() + timedelta(milliseconds=context.get_remaining_time_in_millis())
    service = bootstrap.delivery_service()
    if job.user_id is None:
        progress = service.deliver_conversation(job.conversation_id, lease_until)
    else:
        progress = service.deliver_lane(job.conversation_id, job.user_id, lease_until)
    for outcome in progress.outcomes:
        with log_context(correlation_id=outcome.correlation_id, message_id=outcome.message_id, user_id=outcome.user_id):
            _report(job, outcome)
    return progress.retry_after_seconds


def _report(job: RouteJob, outcome: DeliveryOutcome) -> None:
    """An outcome's metrics (MessagesSent, MessagesFailed, MessagesFannedOut, Deliveries*, *DeadLettered), its
    dead-letter copy, and its line."""
    kind = "Deliveries" if outcome.user_id else "Messages"
    if outcome.dead_letter:
        copy = RouteJob(
            message_id=outcome.message_id,
            conversation_id=job.conversation_id,
            user_id=outcome.user_id,
            correlation_id=outcome.correlation_id,
        )
        try:
            bootstrap.route_dead_letters().dead_letter(copy, outcome.reason or "failed")
            count(f"{kind}DeadLettered")
        except Exception:  # the message is FAILED with its reason already; the copy is for operators
            logger.exception("could not dead-letter")
    status = "FannedOut" if outcome.status is MessageStatus.PENDING else str(outcome.status).title()
    count(f"{kind}{status}")
    logger.info("routed", extra={"status": str(outcome.status)})


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return dict(
        consume_conversations(
            event,
            lambda job: conversation_work(job, context),
            queue_url=settings.require("route_queue_url"),
            visibility=bootstrap.sqs_visibility(),
            requeue=lambda job, key: route_jobs.refresh(job, key, bootstrap.outbound_queue()),
            events=bootstrap.event_buffer(),
        )
    )
