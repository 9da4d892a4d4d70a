"""SQS batch consumption for the route and status functions.

Powertools reports partial batch failures; on top of that, every failed record is made visible again
after a back-off, instead of after the queue's full visibility timeout. For FIFO queues the records
skipped behind a failure in the same group get the same delay, so the group resumes in order.

The route queue is consumed per job key (`consume_conversations`): a record only says "this conversation has
work" (or "this recipient's lane of a GROUP conversation has deliveries"), the order comes from the sequences in
MongoDB. The keys of one batch (at most 10) are worked concurrently, each by one thread, so one recipient's slow
platform call never holds back another's within an invocation.

A batch is one unit of work for events: both consumers take the EventBuffer and publish what the batch
collected when it ends, however it ends (services/notifications.py); no handler has to remember it.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
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
from chat4all.observability import log_context, logger
from chat4all.services.route_jobs import REFRESH_AFTER_RECEIVES

if TYPE_CHECKING:
    from collections.abc import Callable

    from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
    from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
    from aws_lambda_powertools.utilities.typing import LambdaContext

    from chat4all.adapters.aws import SqsVisibility
    from chat4all.services.notifications import EventBuffer

MAX_RETRY_DELAY_SECONDS = 60
# job keys of one route batch worked at once (a batch holds at most 10 records)
MAX_CONCURRENT_KEYS = 10


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
    work: Callable[[RouteJob], float | None],
    *,
    queue_url: str,
    visibility: SqsVisibility,
    requeue: Callable[[RouteJob, str], None],
    events: EventBuffer,
) -> PartialItemFailureResponse:
    """Run `work(job)` once per job key in the batch (a conversation, or a conversation's lane: `RouteJob.group_id`)
    with the key's first job, the keys concurrently (one thread each), as one unit of work for `events`.

    `work` returns None when the key has nothing left to send, else the seconds after which it has
    work again. Then the key's first record stays (made visible again after that delay) and its other
    records are acknowledged: one job per waiting conversation or lane is enough. An exception from `work` is a
    retry with back-off by the record's receive count. `requeue(job, dedupe_key)`
    replaces a job that was received REFRESH_AFTER_RECEIVES times (the route-job protocol's step 4,
    chat4all.services.route_jobs.refresh).
    """
    with events.unit_of_work():
        jobs: dict[str, list[tuple[dict[str, Any], RouteJob]]] = {}
        failures: list[str] = []
        for record in event.get("Records", []):
            try:
                job = RouteJob.parse(record["body"])
                jobs.setdefault(job.group_id, []).append((record, job))
            except (ValidationError, KeyError, TypeError):
                logger.error(
                    "not a route job; left to the dead-letter queue", extra={"body": str(record["body"])[:500]}
                )
                failures.append(record["messageId"])

        def run(key: str) -> float | None:
            first, first_job = jobs[key][0]
            # the job's keys for the lines of its run (each message's own lines carry the message's correlation id)
            with log_context(
                correlation_id=first_job.correlation_id,
                message_id=first_job.message_id,
                conversation_id=first_job.conversation_id,
                user_id=first_job.user_id,
            ):
                try:
                    return work(first_job)
                except Exception:
                    logger.exception("route work failed", extra={"job": key})
                    return float(retry_delay(_receive_count(first)))

        if len(jobs) > 1:
            with ThreadPoolExecutor(max_workers=min(len(jobs), MAX_CONCURRENT_KEYS)) as pool:
                delays = dict(zip(jobs, pool.map(run, jobs), strict=True))
        else:
            delays = {key: run(key) for key in jobs}
        for key, records in jobs.items():
            first, first_job = records[0]
            receives = _receive_count(first)
            delay = delays[key]
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
