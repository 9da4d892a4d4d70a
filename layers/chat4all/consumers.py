"""SQS batch consumption for the route and status functions.

Powertools reports partial batch failures; on top of that, every failed record is made visible again
after a back-off, instead of after the queue's full visibility timeout. For FIFO queues the records
skipped behind a failure in the same group get the same delay, so the group resumes in order.

The route queue is consumed per conversation (`consume_conversations`): a record only says "this
conversation has work", the order comes from the messages' sequences in MongoDB.

A batch is one unit of work for events: both consumers take the EventBuffer and publish what the batch
collected when it ends, however it ends (services/notifications.py); no handler has to remember it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    SqsFifoPartialProcessor,
    process_partial_response,
)
from pydantic import ValidationError

from chat4all.domain.errors import RetryLaterError
from chat4all.domain.wire import RouteJob
from chat4all.observability import logger
from chat4all.services.route_jobs import REFRESH_AFTER_RECEIVES

if TYPE_CHECKING:
    from collections.abc import Callable

    from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
    from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
    from aws_lambda_powertools.utilities.typing import LambdaContext

    from chat4all.adapters.aws import SqsVisibility
    from chat4all.services.notifications import EventBuffer

MAX_RETRY_DELAY_SECONDS = 60


def consume_batch(
    event: dict[str, Any],
    context: LambdaContext,
    record_handler: Callable[[SQSRecord], None],
    *,
    fifo: bool,
    queue_url: str,
    visibility: SqsVisibility,
    events: EventBuffer,
) -> PartialItemFailureResponse:
    with events.unit_of_work():
        return _consume_batch(event, context, record_handler, fifo=fifo, queue_url=queue_url, visibility=visibility)


def _consume_batch(
    event: dict[str, Any],
    context: LambdaContext,
    record_handler: Callable[[SQSRecord], None],
    *,
    fifo: bool,
    queue_url: str,
    visibility: SqsVisibility,
) -> PartialItemFailureResponse:
    delays: dict[str, int] = {}

    def handle(record: SQSRecord) -> None:
        try:
            record_handler(record)
        except RetryLaterError as exc:
            delays[_group_of(record.raw_event)] = exc.delay_seconds
            logger.info("retrying later", extra={"message_id": record.message_id, "delay": exc.delay_seconds})
            raise

    processor = SqsFifoPartialProcessor(skip_group_on_error=True) if fifo else BatchProcessor(EventType.SQS)
    # report an all-failed batch as failures (with back-off) rather than failing the invocation, which
    # would hold every record for the queue's full visibility timeout
    processor.raise_on_entire_batch_failure = False
    result = process_partial_response(event=event, record_handler=handle, processor=processor, context=context)
    failed = {item["itemIdentifier"] for item in result.get("batchItemFailures", [])}
    for record in event.get("Records", []):
        if record["messageId"] in failed:
            delay = delays.get(_group_of(record), retry_delay(_receive_count(record)))
            try:
                visibility.postpone(queue_url, record["receiptHandle"], delay)
            except Exception:  # the record still returns after the visibility timeout; nothing is lost
                logger.exception("could not postpone a failed record")
    return result


def _group_of(record: dict[str, Any]) -> str:
    return str(record.get("attributes", {}).get("MessageGroupId") or record["messageId"])


def consume_conversations(
    event: dict[str, Any],
    work: Callable[[str], float | None],
    *,
    queue_url: str,
    visibility: SqsVisibility,
    requeue: Callable[[RouteJob, str], None],
    events: EventBuffer,
) -> PartialItemFailureResponse:
    """Run `work(conversation_id)` once per conversation in the batch, as one unit of work for `events`.

    `work` returns None when the conversation has nothing left to send, else the seconds after which it has
    work again. Then the conversation's first record stays (made visible again after that delay) and its other
    records are acknowledged: one job per waiting conversation is enough. An exception from `work` is a
    retry with back-off by the record's receive count. `requeue(job, dedupe_key)`
    replaces a job that was received REFRESH_AFTER_RECEIVES times (the route-job protocol's step 4,
    chat4all.services.route_jobs.refresh).
    """
    with events.unit_of_work():
        return _consume_conversations(event, work, queue_url=queue_url, visibility=visibility, requeue=requeue)


def _consume_conversations(
    event: dict[str, Any],
    work: Callable[[str], float | None],
    *,
    queue_url: str,
    visibility: SqsVisibility,
    requeue: Callable[[RouteJob, str], None],
) -> PartialItemFailureResponse:
    jobs: dict[str, list[tuple[dict[str, Any], RouteJob]]] = {}
    failures: list[str] = []
    for record in event.get("Records", []):
        try:
            job = RouteJob.parse(record["body"])
            jobs.setdefault(job.conversation_id, []).append((record, job))
        except (ValidationError, KeyError, TypeError):
            logger.error("not a route job; left to the dead-letter queue", extra={"body": str(record["body"])[:500]})
            failures.append(record["messageId"])
    for conversation_id, records in jobs.items():
        first, first_job = records[0]
        receives = _receive_count(first)
        try:
            delay = work(conversation_id)
        except Exception:
            logger.exception("conversation work failed", extra={"conversation_id": conversation_id})
            delay = float(retry_delay(receives))
        if delay is None:
            continue
        if receives >= REFRESH_AFTER_RECEIVES:
            try:
                requeue(first_job, f"{first['messageId']}:{receives}")
                continue
            except Exception:  # the record stays; the next receive tries again
                logger.exception("could not refresh a waiting job")
        failures.append(first["messageId"])
        try:
            visibility.postpone(queue_url, first["receiptHandle"], max(0, min(int(delay + 0.999), 43_200)))
        except Exception:  # the record still returns after the visibility timeout; nothing is lost
            logger.exception("could not postpone a waiting job")
    return {"batchItemFailures": [{"itemIdentifier": message_id} for message_id in failures]}


def retry_delay(receives: int) -> int:
    """Back-off of a record that failed for the `receives`-th time: 2, 4, 8 ... 60 s."""
    return int(min(2 ** min(max(receives, 1), 6), MAX_RETRY_DELAY_SECONDS))


def _receive_count(record: dict[str, Any]) -> int:
    try:
        return int(record.get("attributes", {}).get("ApproximateReceiveCount", 1))
    except (TypeError, ValueError):
        return 1
