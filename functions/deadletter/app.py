"""DeadLetter: settles what lands in the dead-letter queues, so that nothing stays there unseen.

- a route record (route dead-letter queue, FIFO): its message, if still PENDING and never sent, becomes FAILED
  with the reason and a MessageFailed event; a message settled already is left as it is; a lane record's (with
  `user_id`) GROUP delivery likewise, with DeliveryStatusChanged and its message's aggregate;
- a status report (status dead-letter queue): applied once more; when no message has its platform id it is
  logged and counted (StatusDeadLettersDropped) as dropped, with the reason.

A record that cannot be settled because a dependency is down is retried with back-off, up to
DEAD_LETTER_GIVE_UP_RECEIVES receives; then it is logged and counted as not settled (its message, still
PENDING, is taken up again by the sweeper).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.metrics import MetricUnit
from pydantic import ValidationError

from chat4all import bootstrap
from chat4all.consumers import consume_batch
from chat4all.domain.errors import DependencyUnavailableError
from chat4all.domain.wire import DEAD_LETTER_REASON_ATTRIBUTE, ChannelStatusReported, RouteJob
from chat4all.observability import logger, metrics, tracer
from chat4all.services.recovery import DEAD_LETTER_GIVE_UP_RECEIVES, StatusSettlement, dead_letter_reason

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
    from aws_lambda_powertools.utilities.typing import LambdaContext

settings = bootstrap.settings()


def _receives(record: SQSRecord) -> int:
    return int(record.attributes.approximate_receive_count or 1)


def _count(name: str) -> None:
    metrics.add_metric(name=name, unit=MetricUnit.Count, value=1)


def route_record(record: SQSRecord) -> None:
    try:
        job = RouteJob.parse(record.body)
    except ValidationError:
        logger.error("dead-lettered route record dropped: not a route job", extra={"body": record.body[:500]})
        _count("RouteDeadLettersDropped")
        return
    # indexing, not .get(): Powertools wraps the attribute only in __getitem__ (None when absent)
    reason_attribute = record.message_attributes[DEAD_LETTER_REASON_ATTRIBUTE]
    reason = dead_letter_reason(reason_attribute.string_value if reason_attribute else None)
    try:
        settled = bootstrap.recovery_service().settle_dead_route(
            job.message_id, job.conversation_id, reason, user_id=job.user_id
        )
    except DependencyUnavailableError:
        if _receives(record) < DEAD_LETTER_GIVE_UP_RECEIVES:
            raise
        logger.exception("dead-lettered route record not settled", extra={"message_id": job.message_id})
        _count("RouteDeadLettersNotSettled")
        return
    _count("RouteDeadLettersSettled" if settled else "RouteDeadLettersAlreadySettled")
    logger.info(
        "route dead letter",
        extra={"message_id": job.message_id, "user_id": job.user_id, "failed_now": settled, "reason": reason},
    )


def status_record(record: SQSRecord) -> None:
    try:
        report = ChannelStatusReported.parse(record.body)
    except ValidationError:
        logger.error("dead-lettered status record dropped: not a status report", extra={"body": record.body[:500]})
        _count("StatusDeadLettersDropped")
        return
    try:
        outcome = bootstrap.recovery_service().settle_dead_status(report)
    except DependencyUnavailableError:
        if _receives(record) < DEAD_LETTER_GIVE_UP_RECEIVES:
            raise
        logger.exception(
            "dead-lettered status report dropped", extra={"platform_message_id": report.platform_message_id}
        )
        _count("StatusDeadLettersDropped")
        return
    if outcome.settlement is StatusSettlement.DROPPED:
        logger.warning(
            "dead-lettered status report dropped",
            extra={"platform_message_id": report.platform_message_id, "reason": outcome.reason},
        )
        _count("StatusDeadLettersDropped")
    else:
        _count("StatusDeadLettersApplied")
        logger.info(
            "dead-lettered status report applied",
            extra={"platform_message_id": report.platform_message_id, "outcome": str(outcome.settlement)},
        )


def _queue_name(url_or_arn: str) -> str:
    return url_or_arn.rstrip("/").replace(":", "/").rsplit("/", 1)[-1]


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    records = event.get("Records") or []
    route_dlq = settings.require("route_dead_letter_queue_url")
    # one event source mapping per queue: a batch comes from one queue
    from_route = bool(records) and _queue_name(records[0].get("eventSourceARN", "")) == _queue_name(route_dlq)
    return dict(
        consume_batch(
            event,
            context,
            route_record if from_route else status_record,
            fifo=from_route,
            queue_url=route_dlq if from_route else settings.require("status_dead_letter_queue_url"),
            visibility=bootstrap.sqs_visibility(),
            events=bootstrap.event_buffer(),  # MessageFailed, MessageStatusChanged: published as the batch ends
        )
    )
