"""Every format that crosses a process boundary: one pydantic model each, used by its producers and consumers.

- `RouteJob`, the body of a route queue record (SQS FIFO, group = conversation) and of its dead-letter queue's.
  Produced by ingest (`SqsOutboundQueue`), the sweeper and the dead-letter consumer (`SqsRouteRequeue`),
  route's refresh of a job that waits long (`SqsOutboundQueue`) and route's copy of a message it gave up on
  (`SqsDeadLetterQueue`, with why in the `reason` attribute). Consumed by route
  (`chat4all.consumers.consume_conversations`) and the dead-letter consumer (functions/deadletter).
- `ChannelStatusReported`, a platform's status report on the bus (`source: chat4all.channels`), and then, in
  EventBridge's envelope, on the status queue and its dead-letter queue. Produced by ingest's webhooks
  (`WebhookService`); consumed by status and the dead-letter consumer.
- `MessageEventDetail`, the `detail` of every event about a message on the bus (`source: chat4all`), kept on
  the message until it is published. Produced by `chat4all.services.notifications.message_event`; consumed by
  whoever listens on the bus.
- `MediaFetchJob`, a record of ours on the file-events queue (beside S3's ObjectCreated notifications): "fetch
  this inbound message's file from its platform". Produced by ingest's webhooks (`InboundService`, through
  `SqsMediaFetchQueue`); consumed by the files function (`MediaFetcher`).

Nothing else writes or parses these bodies by hand; tests/unit/test_wire.py produces each through its real
producers and parses it as its consumers do.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_serializer

from chat4all.domain.models import MessageStatus, Platform, StatusReport, utcnow

if TYPE_CHECKING:
    from chat4all.domain.models import Message

# ---------------------------------------------------------------------------------------------- route jobs

# the message attribute of a route dead-letter record that says why route gave the message up
DEAD_LETTER_REASON_ATTRIBUTE = "reason"


class RouteJob(BaseModel):
    """A route queue record: "this conversation has work" (the message that asked for it, for logs and dedupe),
    or, with `user_id`, a lane job: "this recipient of this GROUP conversation has deliveries to send"."""

    model_config = ConfigDict(frozen=True)

    message_id: str
    conversation_id: str
    user_id: str | None = None
    # the correlation id of the work that enqueued it (the accepting request's, or its message's for a lane job),
    # for the lines logged before the message is read; each message's own lines carry the message's own
    correlation_id: str | None = None

    def body(self) -> str:
        return self.model_dump_json(exclude_none=True)

    @property
    def group_id(self) -> str:
        """The FIFO message group: one per conversation, or per conversation and recipient for a lane job, so
        the jobs of one conversation (of one lane) are never worked at once, and lanes never wait for each other."""
        return self.conversation_id if self.user_id is None else f"{self.conversation_id}:{self.user_id}"

    @classmethod
    def parse(cls, body: str) -> RouteJob:
        """Raises pydantic.ValidationError when the body is not a route job."""
        return cls.model_validate_json(body)


# ------------------------------------------------------------------------------ channel status reports

STATUS_EVENT_SOURCE = "chat4all.channels"
STATUS_EVENT_TYPE = "ChannelStatusReported"


_STATUS_REPORT = TypeAdapter(StatusReport)


def status_event_detail(report: StatusReport) -> dict[str, Any]:
    """The report as ChannelStatusReported's `detail` (PutEvents' `Detail`): attributed to the reporting channel,
    whose messages only it is applied to (`account_id` stays behind: the channel is named); the webhook
    request's `correlation_id` only when there is one."""
    detail: dict[str, Any] = _STATUS_REPORT.dump_python(report, mode="json", exclude={"account_id"})
    if detail.get("correlation_id") is None:
        detail.pop("correlation_id", None)
    return detail


class ChannelStatusReported(BaseModel):
    """The EventBridge envelope the ChannelStatusRule puts on the status queue (and SQS then on its DLQ)."""

    source: str = STATUS_EVENT_SOURCE
    detail_type: str = Field(alias="detail-type")
    detail: StatusReport

    @classmethod
    def parse(cls, body: str) -> StatusReport:
        """The report a status queue record carries; raises pydantic.ValidationError when it carries none."""
        return cls.model_validate_json(body).detail


# -------------------------------------------------------------------------------------- message events

MESSAGE_EVENT_SOURCE = "chat4all"


class MessageEventDetail(BaseModel):
    """The `detail` of every event about a message (MessageAccepted, MessageSent, MessageStatusChanged,
    MessageReceived, MessageFailed) and of DeliveryStatusChanged, a GROUP recipient's delivery (with the
    recipient's `user_id` and the delivery's `channel_id`; `channel` is then the delivery's platform);
    `at` is the time of the change, not of publishing; `correlation_id` is the message's (absent only on a
    message stored before messages kept one)."""

    model_config = ConfigDict(extra="forbid")

    message_id: str
    conversation_id: str
    status: MessageStatus
    channel: Platform
    at: datetime
    platform_message_id: str | None = None
    reason: str | None = None
    user_id: str | None = None
    channel_id: str | None = None
    correlation_id: str | None = None

    @classmethod
    def of(
        cls,
        message: Message,
        status: MessageStatus | None = None,
        at: datetime | None = None,
        *,
        platform_message_id: str | None = None,
        reason: str | None = None,
    ) -> MessageEventDetail:
        return cls(
            message_id=message.message_id,
            conversation_id=message.conversation_id,
            status=status or message.status,
            channel=message.channel,
            at=at or utcnow(),
            platform_message_id=platform_message_id,
            reason=reason,
            correlation_id=message.correlation_id,
        )

    @field_serializer("at")
    def _at(self, at: datetime) -> str:
        return at.isoformat()

    def event_detail(self) -> dict[str, Any]:
        """As it is put on the bus, and kept on the message until then (JSON types, no absent fields)."""
        return self.model_dump(mode="json", exclude_none=True)


# ------------------------------------------------------------------------------------- inbound media jobs

MEDIA_FETCH_JOB = "inbound-media"


class MediaFetchJob(BaseModel):
    """Fetch the file of an inbound message: the file record (UPLOADING) its bytes go to, the channel whose
    credentials fetch it and the platform's reference (a WhatsApp media id, a Telegram file_id, an Instagram
    attachment URL), with the type and name the webhook gave. No credential is ever in it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    job: Literal["inbound-media"] = "inbound-media"
    file_id: str
    channel_id: str
    platform: Platform
    reference: str
    mime_type: str | None = None
    filename: str | None = None
    correlation_id: str | None = None

    def body(self) -> str:
        return self.model_dump_json(exclude_none=True)

    @classmethod
    def of(cls, record: dict[str, Any]) -> MediaFetchJob | None:
        """The job a file-events record's parsed body is, or None when it is no job of ours (an S3 notification);
        raises pydantic.ValidationError when it names itself a job but is not one."""
        if record.get("job") != MEDIA_FETCH_JOB:
            return None
        return cls.model_validate(record)
