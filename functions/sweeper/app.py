"""Sweeper: on a schedule, puts outbound messages left PENDING back on the route queue.

A message can be stored and then never reach the queue (the enqueue failed, the function died), or the
queue can lose it (LocalStack keeps nothing across a restart). Every run re-enqueues the outbound messages
PENDING for longer than SWEEP_PENDING_AFTER_SECONDS (the event's `pending_after_seconds` overrides it: the
local stack runs it with 0 at start, when the queues are new), then publishes the events the outbox kept.
Safe at any time: a route job only says "this conversation has work", and the route function sends a
conversation's messages in sequence order, never one that was sent, settled or is being sent.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.metrics import MetricUnit

from chat4all import bootstrap
from chat4all.observability import logger, metrics, tracer

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

# kept events published per run; a fuller outbox empties over the next runs
OUTBOX_BATCH = 500


def publish_pending_events() -> int:
    """The sweeper's second duty: events the bus refused were kept in the outbox; publish them (at least once)."""
    return bootstrap.event_relay().publish_pending_events(OUTBOX_BATCH)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    override = event.get("pending_after_seconds") if isinstance(event, dict) else None
    report = bootstrap.recovery_service().sweep(int(override) if override is not None else None)
    report = replace(report, events_published=publish_pending_events())
    metrics.add_metric(name="PendingMessagesRequeued", unit=MetricUnit.Count, value=report.requeued)
    metrics.add_metric(name="OutboxEventsPublished", unit=MetricUnit.Count, value=report.events_published)
    if report.found or report.events_published:
        logger.info("swept", extra=asdict(report))
    return asdict(report)
