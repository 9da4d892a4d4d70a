"""SQS event source mappings, as Lambda runs them: long-polling pollers, batches invoked concurrently.

One poller long-polls while the queue is quiet; each poller that receives messages starts another, up to the
function's concurrency, and a poller that finds nothing stops while
others run. A FIFO queue needs nothing more: SQS hands out no message of a group while another of that group
is in flight, so concurrent pollers run one batch per message group at a time and many groups at once.
Successes are deleted in one DeleteMessageBatch call per ten; a failed invocation, or the records the
function reports in `batchItemFailures`, stay and come back after the visibility timeout.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import traceback
from typing import TYPE_CHECKING, Any, Protocol

from devstack.lambda_service import REGION

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from devstack.lambda_service import InvocationResult
    from devstack.template import QueueSubscription

MAX_RECEIVE = 10  # ReceiveMessage's own limit per call
RETRY_PAUSE_SECONDS = 1.0


class SqsCalls(Protocol):
    async def call(self, operation: str, params: dict[str, Any], *, timeout: float = 30.0) -> dict[str, Any]: ...


def _base64(value: bytes | str) -> str:
    """SQS's JSON protocol gives binary attributes base64-encoded already; boto3 gives bytes."""
    return value if isinstance(value, str) else base64.b64encode(value).decode()


def queue_arn(queue_url: str) -> str:
    """The ARN of a queue, from its URL (`.../<account id>/<queue name>`, in AWS as in LocalStack)."""
    account, name = queue_url.rstrip("/").split("/")[-2:]
    return f"arn:aws:sqs:{REGION}:{account}:{name}"


def sqs_record(message: dict[str, Any], queue_arn: str) -> dict[str, Any]:
    """An SQS message as the Lambda event source mapping delivers it."""
    attributes = {k: str(v) for k, v in message.get("Attributes", {}).items()}
    message_attributes = {}
    for name, attr in message.get("MessageAttributes", {}).items():
        message_attributes[name] = {
            "stringValue": attr.get("StringValue"),
            "binaryValue": _base64(attr["BinaryValue"]) if "BinaryValue" in attr else None,
            "stringListValues": attr.get("StringListValues", []),
            "binaryListValues": attr.get("BinaryListValues", []),
            "dataType": attr.get("DataType", "String"),
        }
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": attributes,
        "messageAttributes": message_attributes,
        "md5OfBody": message.get("MD5OfBody") or hashlib.md5(message["Body"].encode()).hexdigest(),  # noqa: S324
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": REGION,
    }


class InvalidBatchResponseError(ValueError):
    """A batchItemFailures answer Lambda would reject: the whole batch then counts as failed."""


def failed_message_ids(response: Any, batch_ids: set[str]) -> set[str]:
    """The message ids a ReportBatchItemFailures response names, validated as Lambda validates them."""
    if response is None or response in ({}, []):
        return set()
    items = response.get("batchItemFailures") if isinstance(response, dict) else "not an object"
    if not isinstance(items or [], list):
        raise InvalidBatchResponseError(f"batchItemFailures is not a list: {items!r}")
    failed = {item.get("itemIdentifier") if isinstance(item, dict) else None for item in items or []}
    if not failed <= batch_ids:
        raise InvalidBatchResponseError(f"itemIdentifier {failed - batch_ids} is not a message of the batch")
    return {str(identifier) for identifier in failed}


class SqsEventSource:
    """One SQS event source mapping of the template."""

    def __init__(
        self,
        *,
        subscription: QueueSubscription,
        queue_url: str,
        queue_arn: str,
        sqs: SqsCalls,
        invoke: Callable[[str, bytes], Awaitable[InvocationResult]],
        max_pollers: int,
        wait_seconds: int = 2,
        log: Callable[[str], None] = print,
    ) -> None:
        self.subscription = subscription
        self.queue_url = queue_url
        self.queue_arn = queue_arn
        self.sqs = sqs
        self.invoke = invoke
        self.max_pollers = max(1, max_pollers)
        self.wait_seconds = wait_seconds
        self.log = log
        self.batches = 0
        self.running = False
        self._pollers: set[asyncio.Task[None]] = set()
        self._processing: set[asyncio.Task[None]] = set()  # pollers with a batch in hand
        self._polling = 0  # pollers that have not decided to stop: counted at once, unlike finished tasks

    @property
    def function(self) -> str:
        return self.subscription.function

    def start(self) -> None:
        """Start polling (again, after a stop); nothing when it polls already."""
        if not self.running:
            self.running = True
            self._polling = 0
            self._spawn()

    async def stop(self) -> None:
        """Stop polling. A batch being processed is abandoned (its records come back after the visibility
        timeout, as after a crash); a receive in flight is let finish, and what it brings goes straight back."""
        self.running = False
        for task in self._processing:
            task.cancel()
        if pending := set(self._pollers):
            _, late = await asyncio.wait(pending, timeout=self.wait_seconds + 5)
            for task in late:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def _spawn(self) -> None:
        self._polling += 1
        task = asyncio.create_task(self._poll(), name=f"sqs-poller-{self.subscription.queue_logical_id}")
        self._pollers.add(task)
        task.add_done_callback(self._pollers.discard)

    async def _poll(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        while self.running:
            try:
                messages = await self._receive(min(self.subscription.batch_size, MAX_RECEIVE), self.wait_seconds)
                if not messages:
                    if self._polling > 1:
                        self._polling -= 1
                        return  # the queue is quiet: one poller keeps watching
                    continue
                if self._polling < self.max_pollers:
                    self._spawn()  # there may be more waiting: poll concurrently while this batch runs
                self._processing.add(task)
                try:
                    await self._process(messages)
                finally:
                    self._processing.discard(task)
            except asyncio.CancelledError:
                raise
            except Exception:
                self.log(f"{self.function} poller of {self.subscription.queue_logical_id}: {traceback.format_exc()}")
                await asyncio.sleep(RETRY_PAUSE_SECONDS)

    async def _receive(self, count: int, wait_seconds: int) -> list[dict[str, Any]]:
        reply = await self.sqs.call(
            "ReceiveMessage",
            {
                "QueueUrl": self.queue_url,
                "MaxNumberOfMessages": count,
                "WaitTimeSeconds": wait_seconds,
                "MessageSystemAttributeNames": ["All"],
                "MessageAttributeNames": ["All"],
            },
            timeout=wait_seconds + 30,
        )
        messages: list[dict[str, Any]] = reply.get("Messages", [])
        if messages and not self.running:
            entries = [
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
                for i, m in enumerate(messages)
            ]
            await self.sqs.call("ChangeMessageVisibilityBatch", {"QueueUrl": self.queue_url, "Entries": entries})
            return []
        return messages

    async def _process(self, messages: list[dict[str, Any]]) -> None:
        records = [sqs_record(m, self.queue_arn) for m in messages]
        self.batches += 1
        result = await self.invoke(self.function, json.dumps({"Records": records}).encode())
        if not result.ok:
            self.log(f"{self.function}: a batch of {len(records)} failed ({result.error_type}); back to the queue")
            return
        try:
            reported = result.json() if self.subscription.report_batch_item_failures else None
            failed = failed_message_ids(reported, {r["messageId"] for r in records})
        except ValueError as exc:  # InvalidBatchResponseError, or no JSON at all
            self.log(f"{self.function}: invalid batchItemFailures ({exc}); the whole batch returns to the queue")
            return
        done = [r for r in records if r["messageId"] not in failed]
        for start in range(0, len(done), MAX_RECEIVE):
            chunk = done[start : start + MAX_RECEIVE]
            entries = [{"Id": str(i), "ReceiptHandle": r["receiptHandle"]} for i, r in enumerate(chunk)]
            await self.sqs.call("DeleteMessageBatch", {"QueueUrl": self.queue_url, "Entries": entries})
