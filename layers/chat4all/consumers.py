"""SQS batch consumption shared by the route and status functions.

Powertools reports partial batch failures; on top of that, every failed record is made visible again
after a back-off, instead of after the queue's full visibility timeout. For FIFO queues the records
skipped behind a failure in the same group get the same delay, so the group resumes in order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    SqsFifoPartialProcessor,
    process_partial_response,
)

from chat4all.domain.errors import RetryLaterError
from chat4all.observability import logger

if TYPE_CHECKING:
    from collections.abc import Callable

    from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
    from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
    from aws_lambda_powertools.utilities.typing import LambdaContext

    from chat4all.adapters.aws import SqsVisibility

DEFAULT_RETRY_DELAY_SECONDS = 5


def consume_batch(
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
            delay = delays.get(_group_of(record), DEFAULT_RETRY_DELAY_SECONDS)
            try:
                visibility.postpone(queue_url, record["receiptHandle"], delay)
            except Exception:  # the record still returns after the visibility timeout; nothing is lost
                logger.exception("could not postpone a failed record")
    return result


def _group_of(record: dict[str, Any]) -> str:
    return str(record.get("attributes", {}).get("MessageGroupId") or record["messageId"])
