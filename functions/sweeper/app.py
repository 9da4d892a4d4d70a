"""Sweeper: on a schedule, puts outbound messages left PENDING back on the route queue.

A message can be stored and then never reach the queue (the enqueue failed, the function died), or the
queue can lose it (LocalStack keeps nothing across a restart). Every run re-enqueues the outbound messages
PENDING for longer than SWEEP_PENDING_AFTER_SECONDS (the event's `pending_after_seconds` overrides it: the
local stack runs it with 0 at start, when the queues are new). Safe at any time: the route function never
sends a message that was sent or settled already.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.metrics import MetricUnit

from chat4all import bootstrap
from chat4all.observability import logger, metrics, tracer

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext


def publish_pending_events() -> int:
    """The sweeper's second duty (issue 7): events not yet on the bus are published at least once.

    The events outbox (`publish_pending_events(limit)`) lands with the message path's rework; until then every
    event is published inline by the operation that records it, and there is nothing left to publish here.
    """
    return 0


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    override = event.get("pending_after_seconds") if isinstance(event, dict) else None
    report = bootstrap.recovery_service().sweep(int(override) if override is not None else None)
    report = replace(report, events_published=publish_pending_events())
    metrics.add_metric(name="PendingMessagesRequeued", unit=MetricUnit.Count, value=report.requeued)
    if report.found:
        logger.info("swept", extra=asdict(report))
    return asdict(report)
