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

from dataclasses import dataclass
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
    from collections.abc import Callable

    from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
    from aws_lambda_powertools.utilities.typing import LambdaContext

    from chat4all.domain.models import StatusReport

settings = bootstrap.settings()


def _count(name: str) -> None:
    metrics.add_metric(name=name, unit=MetricUnit.Count, value=1)


@dataclass(frozen=True)
class DeadLetterKind:
    """One dead-letter queue's records: how one is read, named in the logs, and counted when it is given up."""

    name: str  # "route", "status report"
    metric_prefix: str
    given_up_metric: str  # its dependency stayed down for DEAD_LETTER_GIVE_UP_RECEIVES receives
    parse: Callable[[str], Any]
    key: Callable[[Any], dict[str, Any]]  # the fields that name one in the logs


def settle_record[T](record: SQSRecord, kind: DeadLetterKind, settle: Callable[[T], None]) -> None:
    """A record that does not parse is dropped (logged, counted); one whose dependency is down is retried (raise)
    until DEAD_LETTER_GIVE_UP_RECEIVES receives, then logged and counted as given up."""
    try:
        item: T = kind.parse(record.body)
    except ValidationError:
        logger.error(f"dead-lettered {kind.name} record dropped: unreadable", extra={"body": record.body[:500]})
        _count(f"{kind.metric_prefix}Dropped")
        return
    try:
        settle(item)
    except DependencyUnavailableError:
        if int(record.attributes.approximate_receive_count or 1) < DEAD_LETTER_GIVE_UP_RECEIVES:
            raise
        logger.exception(f"dead-lettered {kind.name} record given up", extra=kind.key(item))
        _count(kind.given_up_metric)


ROUTE = DeadLetterKind(
    "route",
    "RouteDeadLetters",
    "RouteDeadLettersNotSettled",  # its message, still PENDING, is the sweeper's again
    RouteJob.parse,
    lambda job: {"message_id": job.message_id},
)
STATUS = DeadLetterKind(
    "status report",
    "StatusDeadLetters",
    "StatusDeadLettersDropped",
    ChannelStatusReported.parse,
    lambda report: {"platform_message_id": report.platform_message_id},
)


def route_record(record: SQSRecord) -> None:
    # indexing, not .get(): Powertools wraps the attribute only in __getitem__ (None when absent)
    reason_attribute = record.message_attributes[DEAD_LETTER_REASON_ATTRIBUTE]
    reason = dead_letter_reason(reason_attribute.string_value if reason_attribute else None)

    def settle(job: RouteJob) -> None:
        settled = bootstrap.recovery_service().settle_dead_route(
            job.message_id, job.conversation_id, reason, user_id=job.user_id
        )
        _count("RouteDeadLettersSettled" if settled else "RouteDeadLettersAlreadySettled")
        logger.info(
            "route dead letter",
            extra={"message_id": job.message_id, "user_id": job.user_id, "failed_now": settled, "reason": reason},
        )

    settle_record(record, ROUTE, settle)


def status_record(record: SQSRecord) -> None:
    def settle(report: StatusReport) -> None:
        outcome = bootstrap.recovery_service().settle_dead_status(report)
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

    settle_record(record, STATUS, settle)


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
