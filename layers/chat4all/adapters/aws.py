"""AWS adapters: SQS, EventBridge and KMS, each over an injected AwsJsonApi (chat4all.adapters.aws_api)."""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import json
from typing import TYPE_CHECKING, Any

from chat4all.adapters.aws_api import AwsApiError
from chat4all.domain.errors import CredentialsUnreadableError, DependencyUnavailableError
from chat4all.domain.wire import DEAD_LETTER_REASON_ATTRIBUTE, RouteJob
from chat4all.observability import current_correlation_id, logger
from chat4all.ports import (
    CredentialCipher,
    DeadLetterQueue,
    DependencyCheck,
    EventPublisher,
    MediaFetchQueue,
    OutboundQueue,
)

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from chat4all.adapters.aws_api import AwsJsonApi
    from chat4all.domain.models import DomainEvent
    from chat4all.domain.wire import MediaFetchJob
    from chat4all.ports import PendingJob


PUT_EVENTS_LIMIT = 10
SQS_BATCH = 10  # SendMessageBatch's own limit
# KMS answers that will not change on a retry: the key is gone, disabled, or not the one that encrypted
PERMANENT_KMS_ERRORS = frozenset(
    {
        "NotFoundException",
        "DisabledException",
        "KMSInvalidStateException",
        "InvalidCiphertextException",
        "IncorrectKeyException",
    }
)


@contextlib.contextmanager
def _translated(service: str) -> Iterator[None]:
    try:
        yield
    except AwsApiError as exc:
        # the error names endpoints and resources: it is logged, never answered
        logger.warning("AWS call failed", extra={"service": service, "error": repr(exc)[:500]})
        raise DependencyUnavailableError(f"{service} is unavailable") from exc


class SqsOutboundQueue(OutboundQueue):
    """The FIFO route queue: one message group per conversation, deduplicated by message id (or per round)."""

    def __init__(self, sqs: AwsJsonApi, queue_url: str) -> None:
        self.sqs = sqs
        self.queue_url = queue_url

    def enqueue(self, message_id: str, conversation_id: str, *, dedupe_key: str | None = None) -> None:
        # the job carries the correlation id of the work that asks for it (the accepting request's)
        job = RouteJob(message_id=message_id, conversation_id=conversation_id, correlation_id=current_correlation_id())
        with _translated("SQS"):
            self.sqs.call(
                "SendMessage",
                {
                    "QueueUrl": self.queue_url,
                    "MessageBody": job.body(),
                    "MessageGroupId": job.group_id,
                    "MessageDeduplicationId": dedupe_key or message_id,
                },
            )

    def requeue(self, jobs: list[PendingJob], round_id: str) -> int:
        taken = 0
        failures: list[str] = []
        for start in range(0, len(jobs), SQS_BATCH):
            chunk = jobs[start : start + SQS_BATCH]
            records = [
                RouteJob(message_id=job.message_id, conversation_id=job.conversation_id, user_id=job.user_id)
                for job in chunk
            ]
            entries = [
                {
                    "Id": str(i),
                    "MessageBody": record.body(),
                    "MessageGroupId": record.group_id,
                    "MessageDeduplicationId": f"{_dedupe_base(record)}:sweep:{round_id}",
                }
                for i, record in enumerate(records)
            ]
            with _translated("SQS"):
                result = self.sqs.call("SendMessageBatch", {"QueueUrl": self.queue_url, "Entries": entries})
            taken += len(result.get("Successful", []))
            failures += [f"{chunk[int(f['Id'])].message_id}: {f.get('Code')}" for f in result.get("Failed", [])]
        if failures:
            # a later sweep takes them up again; a dependency that refuses them all is worth a retry now
            logger.warning("re-enqueue refused", extra={"refused": failures[:20], "count": len(failures)})
            if not taken:
                raise DependencyUnavailableError(f"SQS refused all {len(failures)} re-enqueued messages")
        return taken

    def enqueue_lanes(self, jobs: Sequence[RouteJob]) -> list[RouteJob]:
        refused: list[RouteJob] = []
        for start in range(0, len(jobs), SQS_BATCH):
            chunk = list(jobs[start : start + SQS_BATCH])
            entries = [
                {
                    "Id": str(i),
                    "MessageBody": job.body(),
                    "MessageGroupId": job.group_id,
                    "MessageDeduplicationId": _dedupe_base(job),
                }
                for i, job in enumerate(chunk)
            ]
            try:
                with _translated("SQS"):
                    result = self.sqs.call("SendMessageBatch", {"QueueUrl": self.queue_url, "Entries": entries})
            except DependencyUnavailableError:
                refused += chunk
                continue
            refused += [chunk[int(f["Id"])] for f in result.get("Failed", [])]
        return refused


def _dedupe_base(job: RouteJob) -> str:
    """A job's deduplication id: its message's (a lane job's: its message's and recipient's); at most 128
    characters as SQS allows, hashed when longer."""
    base = job.message_id if job.user_id is None else f"{job.message_id}:{job.user_id}"
    return base if len(base) <= 80 else hashlib.sha256(base.encode()).hexdigest()


class SqsDeadLetterQueue(DeadLetterQueue):
    def __init__(self, sqs: AwsJsonApi, queue_url: str) -> None:
        self.sqs = sqs
        self.queue_url = queue_url

    def dead_letter(self, job: RouteJob, reason: str) -> None:
        body = job.body()
        with _translated("SQS"):
            self.sqs.call(
                "SendMessage",
                {
                    "QueueUrl": self.queue_url,
                    "MessageBody": body,
                    "MessageGroupId": job.group_id,
                    "MessageDeduplicationId": hashlib.sha256(body.encode()).hexdigest(),
                    "MessageAttributes": {
                        DEAD_LETTER_REASON_ATTRIBUTE: {"DataType": "String", "StringValue": reason[:1000]}
                    },
                },
            )


class SqsMediaFetchQueue(MediaFetchQueue):
    """The file-events queue (a standard queue: S3 notifies it too), for jobs that fetch an inbound file."""

    def __init__(self, sqs: AwsJsonApi, queue_url: str) -> None:
        self.sqs = sqs
        self.queue_url = queue_url

    def enqueue(self, job: MediaFetchJob) -> None:
        with _translated("SQS"):
            self.sqs.call("SendMessage", {"QueueUrl": self.queue_url, "MessageBody": job.body()})


class SqsVisibility:
    """Makes a received record visible again after a delay: the consumer's back-off between attempts."""

    def __init__(self, sqs: AwsJsonApi) -> None:
        self.sqs = sqs

    def postpone(self, queue_url: str, receipt_handle: str, delay_seconds: int) -> None:
        with _translated("SQS"):
            self.sqs.call(
                "ChangeMessageVisibility",
                {"QueueUrl": queue_url, "ReceiptHandle": receipt_handle, "VisibilityTimeout": delay_seconds},
            )


class EventBridgePublisher(EventPublisher):
    def __init__(self, events: AwsJsonApi, bus_name: str) -> None:
        self.events = events
        self.bus_name = bus_name

    def publish(self, detail_type: str, detail: dict[str, Any], *, source: str = "chat4all") -> None:
        entry = {
            "Source": source,
            "DetailType": detail_type,
            "Detail": json.dumps(detail),
            "EventBusName": self.bus_name,
        }
        with _translated("EventBridge"):
            result = self.events.call("PutEvents", {"Entries": [entry]})
        if result.get("FailedEntryCount"):
            failure = result["Entries"][0]
            raise DependencyUnavailableError(f"EventBridge refused {detail_type}: {failure.get('ErrorMessage')}")

    def publish_many(self, events: Sequence[DomainEvent]) -> list[DomainEvent]:
        """PutEvents of up to 10 entries per call (the API's limit); returns the events it did not take."""
        failed: list[DomainEvent] = []
        for start in range(0, len(events), PUT_EVENTS_LIMIT):
            chunk = list(events[start : start + PUT_EVENTS_LIMIT])
            entries = [
                {
                    "Source": e.source,
                    "DetailType": e.detail_type,
                    "Detail": json.dumps(e.detail),
                    "EventBusName": self.bus_name,
                }
                for e in chunk
            ]
            try:
                with _translated("EventBridge"):
                    result = self.events.call("PutEvents", {"Entries": entries})
            except DependencyUnavailableError:
                failed.extend(chunk)
                continue
            if result.get("FailedEntryCount"):
                answers = result.get("Entries", [])
                failed.extend(e for e, answer in zip(chunk, answers, strict=False) if answer.get("ErrorCode"))
        return failed


class KmsCredentialCipher(CredentialCipher):
    """Channel credentials as KMS ciphertext bound to an encryption context; plaintext is cached per container,
    keyed by ciphertext and context (a bounded LRU)."""

    def __init__(self, kms: AwsJsonApi, key_id: str) -> None:
        self.kms = kms
        self.key_id = key_id
        self._decrypt_cached = functools.lru_cache(maxsize=256)(self._decrypt)

    def encrypt(self, credentials: dict[str, str], context: dict[str, str] | None = None) -> bytes:
        params: dict[str, Any] = {
            "KeyId": self.key_id,
            "Plaintext": base64.b64encode(json.dumps(credentials, sort_keys=True).encode()).decode(),
        }
        if context:
            params["EncryptionContext"] = context
        with _translated("KMS"):
            result = self.kms.call("Encrypt", params)
        return base64.b64decode(result["CiphertextBlob"])

    def decrypt(self, ciphertext: bytes, context: dict[str, str] | None = None) -> dict[str, str]:
        frozen = tuple(sorted(context.items())) if context else ()
        return dict(self._decrypt_cached(ciphertext, frozen))

    def _decrypt(self, ciphertext: bytes, context: tuple[tuple[str, str], ...]) -> dict[str, str]:
        params: dict[str, Any] = {"CiphertextBlob": base64.b64encode(ciphertext).decode()}
        if context:
            params["EncryptionContext"] = dict(context)
        try:
            result = self.kms.call("Decrypt", params)
        except AwsApiError as exc:
            if exc.code in PERMANENT_KMS_ERRORS:
                # also ciphertext bound to another channel: its encryption context does not match this one
                raise CredentialsUnreadableError(f"credentials cannot be decrypted (KMS {exc.code})") from exc
            logger.warning("AWS call failed", extra={"service": "KMS", "error": repr(exc)[:500]})
            raise DependencyUnavailableError("KMS is unavailable") from exc
        decoded: dict[str, str] = json.loads(base64.b64decode(result["Plaintext"]))
        return decoded


class SqsCheck(DependencyCheck):
    name = "sqs"
    iam_actions = ("sqs:GetQueueAttributes",)

    def __init__(self, sqs: AwsJsonApi, queue_url: str) -> None:
        self.sqs = sqs
        self.queue_url = queue_url

    def check(self) -> None:
        self.sqs.call("GetQueueAttributes", {"QueueUrl": self.queue_url, "AttributeNames": ["QueueArn"]})


class EventBridgeCheck(DependencyCheck):
    name = "eventbridge"
    iam_actions = ("events:DescribeEventBus",)

    def __init__(self, events: AwsJsonApi, bus_name: str) -> None:
        self.events = events
        self.bus_name = bus_name

    def check(self) -> None:
        self.events.call("DescribeEventBus", {"Name": self.bus_name})


class RedisCheck(DependencyCheck):
    name = "redis"

    def __init__(self, client: Any) -> None:
        self.client = client

    def check(self) -> None:
        self.client.ping()
