"""Each format that crosses a process boundary (chat4all.domain.wire), made by its real producers and read by
its real consumers: a producer whose output its consumer cannot read, or reads with a field missing, fails here."""

from __future__ import annotations

import hashlib
import hmac
import importlib.util
import json
import sys
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from chat4all import bootstrap
from chat4all.adapters.aws import EventBridgePublisher, SqsDeadLetterQueue, SqsMediaFetchQueue, SqsOutboundQueue
from chat4all.channels.whatsapp import WhatsAppConnector
from chat4all.consumers import consume_conversations
from chat4all.domain.models import InboundMessage, MessageStatus, Platform, StatusReport
from chat4all.domain.wire import (
    STATUS_EVENT_SOURCE,
    STATUS_EVENT_TYPE,
    MediaFetchJob,
    MessageEventDetail,
    RouteJob,
    status_event_detail,
)
from chat4all.ports import PendingJob
from chat4all.services.inbound import InboundService
from chat4all.services.media_in import MediaIntake
from chat4all.services.notifications import EventBuffer
from chat4all.services.recovery import RecoveryService, StatusSettlement
from chat4all.services.statuses import StatusService
from chat4all.services.webhooks import WebhookService
from tests.fakes.in_memory import InMemoryEventOutbox, InMemoryEventPublisher
from tests.unit.test_channel_binding import _add_channel
from tests.unit.test_files import InMemoryFileStore
from tests.unit.test_services import ADMIN, World

if TYPE_CHECKING:
    from collections.abc import Iterator
    from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "whatsapp"
QUEUE = "https://sqs.us-east-1.amazonaws.com/000000000000/queue.fifo"


class RecordingAws:
    """An AwsJsonApi that takes every call and keeps it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def call(self, action: str, params: dict[str, Any]) -> dict[str, Any]:
        self.calls.append((action, params))
        if action == "SendMessageBatch":
            return {"Successful": [{"Id": entry["Id"]} for entry in params["Entries"]]}
        if action == "PutEvents":
            return {"FailedEntryCount": 0, "Entries": [{"EventId": str(uuid.uuid4())} for _ in params["Entries"]]}
        return {}

    def sqs_records(self) -> list[dict[str, Any]]:
        """What SQS hands the consumer (a Lambda SQS event's records) for every message sent."""
        sent = [params for action, params in self.calls if action == "SendMessage"]
        sent += [entry for action, params in self.calls if action == "SendMessageBatch" for entry in params["Entries"]]
        return [
            {
                "messageId": str(uuid.uuid4()),
                "receiptHandle": "handle",
                "body": entry["MessageBody"],
                "attributes": {"ApproximateReceiveCount": "1"}
                | ({"MessageGroupId": entry["MessageGroupId"]} if "MessageGroupId" in entry else {}),
                "messageAttributes": {
                    name: {"stringValue": value["StringValue"], "dataType": value["DataType"]}
                    for name, value in entry.get("MessageAttributes", {}).items()
                },
            }
            for entry in sent
        ]

    def bus_envelopes(self) -> list[str]:
        """What the bus's rule puts on a queue (EventBridge's envelope) for every event published."""
        entries = [entry for action, params in self.calls if action == "PutEvents" for entry in params["Entries"]]
        return [
            json.dumps(
                {
                    "version": "0",
                    "id": str(uuid.uuid4()),
                    "detail-type": entry["DetailType"],
                    "source": entry["Source"],
                    "account": "000000000000",
                    "time": "2026-01-01T12:00:00Z",
                    "region": "us-east-1",
                    "resources": [],
                    "detail": json.loads(entry["Detail"]),
                }
            )
            for entry in entries
        ]


@pytest.fixture
def functions(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, ModuleType]]:
    """The route, status and dead-letter functions' modules, as Lambda imports them."""
    for name in ("DATABASE_URL", "MONGODB_URI", "REDIS_URL"):
        monkeypatch.setenv(name, "unused://")
    for name in ("ROUTE_QUEUE_URL", "ROUTE_DEAD_LETTER_QUEUE_URL", "STATUS_QUEUE_URL", "STATUS_DEAD_LETTER_QUEUE_URL"):
        monkeypatch.setenv(name, QUEUE)
    bootstrap.settings.cache_clear()
    modules = {}
    for name in ("route", "status", "deadletter"):
        spec = importlib.util.spec_from_file_location(f"function_{name}_app", ROOT / "functions" / name / "app.py")
        assert spec is not None and spec.loader is not None
        modules[name] = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, spec.name, modules[name])  # pydantic resolves annotations through it
        spec.loader.exec_module(modules[name])
    yield modules
    bootstrap.settings.cache_clear()


class RecordingRecovery:
    def __init__(self) -> None:
        self.routes: list[tuple[str, str, str]] = []
        self.reports: list[StatusReport] = []

    def settle_dead_route(self, message_id: str, conversation_id: str, reason: str, user_id: str | None = None) -> bool:
        self.routes.append((message_id, conversation_id, reason) if user_id is None else (message_id, user_id, reason))
        return True

    def settle_dead_status(self, report: StatusReport) -> Any:
        self.reports.append(report)
        return type("Outcome", (), {"settlement": StatusSettlement.APPLIED, "reason": None})()


class RecordingStatuses:
    def __init__(self) -> None:
        self.reports: list[StatusReport] = []

    def apply(self, report: StatusReport) -> bool:
        self.reports.append(report)
        return True


def test_every_route_job_producer_is_read_by_route_and_by_the_dead_letter_consumer(
    functions: dict[str, ModuleType], monkeypatch: pytest.MonkeyPatch
) -> None:
    aws = RecordingAws()
    SqsOutboundQueue(aws, QUEUE).enqueue("m1", "c1")  # type: ignore[arg-type]  # ingest, and route's refresh
    SqsOutboundQueue(aws, QUEUE).requeue([PendingJob("m2", "c2", 1)], "round")  # type: ignore[arg-type]  # sweeper
    SqsDeadLetterQueue(aws, QUEUE).dead_letter(RouteJob(message_id="m3", conversation_id="c3"), "gave up")  # type: ignore[arg-type]
    # GROUP lanes: fan-out's lane jobs, the sweeper's, route's copy of a delivery it gave up on
    lanes = SqsOutboundQueue(aws, QUEUE)  # type: ignore[arg-type]
    assert lanes.enqueue_lanes([RouteJob(message_id="m4", conversation_id="c4", user_id="u4")]) == []
    lanes.requeue([PendingJob("m5", "c5", 1, "u5")], "round")
    lane_copy = RouteJob(message_id="m6", conversation_id="c6", user_id="u6")
    SqsDeadLetterQueue(aws, QUEUE).dead_letter(lane_copy, "gave up")  # type: ignore[arg-type]
    records = aws.sqs_records()
    assert sorted(r["attributes"]["MessageGroupId"] for r in records) == ["c1", "c2", "c3", "c4:u4", "c5:u5", "c6:u6"]

    worked: list[tuple[str, str | None]] = []
    answer = consume_conversations(
        {"Records": records},
        lambda job: worked.append((job.conversation_id, job.user_id)),
        queue_url=QUEUE,
        visibility=None,  # type: ignore[arg-type]  # nothing waits
        requeue=lambda *_: None,
        events=EventBuffer(InMemoryEventPublisher(), InMemoryEventOutbox()),
    )
    assert answer == {"batchItemFailures": []}
    assert sorted(worked) == [("c1", None), ("c2", None), ("c3", None), ("c4", "u4"), ("c5", "u5"), ("c6", "u6")]

    recovery = RecordingRecovery()
    monkeypatch.setattr(bootstrap, "recovery_service", lambda: recovery)
    for record in records:
        functions["deadletter"].route_record(SQSRecord(record))
    limit = "dead-lettered: the route queue's receive limit was reached before the message was delivered"
    assert sorted(recovery.routes) == [
        ("m1", "c1", limit),
        ("m2", "c2", limit),
        ("m3", "c3", "dead-lettered: gave up"),
        ("m4", "u4", limit),
        ("m5", "u5", limit),
        ("m6", "u6", "dead-lettered: gave up"),
    ]


def _status_webhook_world() -> tuple[World, RecordingAws, WebhookService]:
    world = World()
    _add_channel(world, "ch-2", phone_number_id="106540352242922")  # the number the fixture's webhook names
    aws = RecordingAws()
    bus = EventBridgePublisher(aws, "chat4all")  # type: ignore[arg-type]
    inbound = InboundService(world.users, world.conversations, world.messages, bus)
    service = WebhookService(world.channels, {Platform.WHATSAPP: WhatsAppConnector("http://unused")}, bus, inbound)
    return world, aws, service


def test_a_status_report_from_a_webhook_reaches_status_and_the_dead_letter_consumer_whole(
    functions: dict[str, ModuleType], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, aws, webhooks = _status_webhook_world()
    body = (FIXTURES / "status_delivered.json").read_bytes()
    signature = "sha256=" + hmac.new(b"secret-ch-2", body, hashlib.sha256).hexdigest()
    webhooks.receive(Platform.WHATSAPP, {"x-hub-signature-256": signature}, body)
    envelopes = aws.bus_envelopes()
    assert [(json.loads(e)["source"], json.loads(e)["detail-type"]) for e in envelopes] == [
        (STATUS_EVENT_SOURCE, STATUS_EVENT_TYPE)
    ] * 2
    expected = [
        StatusReport(
            Platform.WHATSAPP,
            "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBJDQjZCMzlEQUE4OTJBMTE4RTUA",
            MessageStatus.DELIVERED,
            datetime.fromtimestamp(1750263773, UTC),
            channel_id="ch-2",
        ),
    ]
    records = [{"messageId": str(uuid.uuid4()), "receiptHandle": "h", "body": e, "attributes": {}} for e in envelopes]

    statuses = RecordingStatuses()
    monkeypatch.setattr(bootstrap, "status_service", lambda: statuses)
    for record in records:
        functions["status"].record_handler(SQSRecord(record))
    recovery = RecordingRecovery()
    monkeypatch.setattr(bootstrap, "recovery_service", lambda: recovery)
    for record in records:
        functions["deadletter"].status_record(SQSRecord(record))

    for received in (statuses.reports, recovery.reports):
        assert [replace(r, detail=None) for r in received[:1]] == expected
        assert received[1].status is MessageStatus.FAILED and received[1].channel_id == "ch-2"
    assert statuses.reports == recovery.reports


def test_a_dead_lettered_status_report_is_applied_only_to_a_message_of_the_channel_that_reported_it(
    functions: dict[str, ModuleType], monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a message sent through ch-1, and another WhatsApp channel ch-2
    world = World()
    _add_channel(world, "ch-2", phone_number_id="555")
    world.message_service.accept(world.send("hello"), ADMIN)
    [accepted] = world.messages.messages.values()
    assert world.delivered_status(accepted.message_id) is MessageStatus.SENT
    wamid = world.messages.messages[accepted.message_id].platform_message_id
    assert wamid is not None
    statuses = StatusService(world.messages, world.events, world.conversations)
    recovery = RecoveryService(None, None, statuses, world.events)  # type: ignore[arg-type]
    monkeypatch.setattr(bootstrap, "recovery_service", lambda: recovery)

    def dead_lettered(channel_id: str) -> SQSRecord:
        report = StatusReport(Platform.WHATSAPP, wamid, MessageStatus.READ, datetime.now(UTC), channel_id=channel_id)
        detail = status_event_detail(report)
        envelope = {"source": STATUS_EVENT_SOURCE, "detail-type": STATUS_EVENT_TYPE, "detail": detail}
        return SQSRecord({"messageId": "x", "receiptHandle": "h", "body": json.dumps(envelope), "attributes": {}})

    # WHEN ch-2 reports on it from the status dead-letter queue THEN nothing moves, as on the live path
    functions["deadletter"].status_record(dead_lettered("ch-2"))
    assert world.messages.messages[accepted.message_id].status is MessageStatus.SENT
    # and its own channel's report is applied
    functions["deadletter"].status_record(dead_lettered("ch-1"))
    assert world.messages.messages[accepted.message_id].status is MessageStatus.READ


def test_every_message_event_as_produced_and_as_the_bus_carries_it_has_the_contract_detail() -> None:
    world = World()
    world.message_service.accept(world.send("hello"), ADMIN)
    [first] = world.messages.messages.values()
    world.delivered_status(first.message_id)
    wamid = world.messages.messages[first.message_id].platform_message_id
    assert wamid is not None
    StatusService(world.messages, world.events, world.conversations).apply(
        StatusReport(Platform.WHATSAPP, wamid, MessageStatus.DELIVERED, datetime.now(UTC), channel_id="ch-1")
    )
    InboundService(world.users, world.conversations, world.messages, world.events).receive(
        world.channels.channels["ch-1"],
        InboundMessage(Platform.WHATSAPP, "wamid.in", "5511999990000", "Carl", "Oi", datetime.now(UTC)),
    )
    kinds = {event.detail_type for event in world.messages.kept_events}
    assert {"MessageAccepted", "MessageSent", "MessageStatusChanged"} <= kinds
    aws = RecordingAws()
    EventBridgePublisher(aws, "chat4all").publish_many(world.messages.kept_events)  # type: ignore[arg-type]
    for event, envelope in zip(world.messages.kept_events, aws.bus_envelopes(), strict=True):
        carried = json.loads(envelope)
        assert carried["detail-type"] == event.detail_type
        detail = MessageEventDetail.model_validate(carried["detail"])
        assert detail.message_id == event.message_id
        assert detail.at.tzinfo is not None


def test_an_inbound_media_job_from_a_webhook_is_read_by_the_files_function_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ingest's webhook sends it through SqsMediaFetchQueue; the files function's record handler reads it (beside
    S3's notifications on the same queue) and hands it to the fetcher with the record's receive count."""
    for name in ("DATABASE_URL", "MONGODB_URI", "REDIS_URL"):
        monkeypatch.setenv(name, "unused://")
    monkeypatch.setenv("FILE_EVENTS_QUEUE_URL", QUEUE)
    bootstrap.settings.cache_clear()
    spec = importlib.util.spec_from_file_location("function_files_app", ROOT / "functions" / "files" / "app.py")
    assert spec is not None and spec.loader is not None
    files_app = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, files_app)
    spec.loader.exec_module(files_app)
    bootstrap.settings.cache_clear()

    world = World()
    _add_channel(world, "ch-2", phone_number_id="106540352242922")  # the number the fixture's webhook names
    aws = RecordingAws()
    intake = MediaIntake(InMemoryFileStore(), SqsMediaFetchQueue(aws, QUEUE))  # type: ignore[arg-type]
    inbound = InboundService(world.users, world.conversations, world.messages, world.events, media=intake)
    service = WebhookService(
        world.channels, {Platform.WHATSAPP: WhatsAppConnector("http://unused")}, world.events, inbound
    )
    body = json.loads((FIXTURES / "message_text.json").read_bytes())
    message = body["entry"][0]["changes"][0]["value"]["messages"][0]
    message.pop("text")
    message.update(type="image", image={"id": "1479", "mime_type": "image/jpeg", "sha256": "x", "caption": "c"})
    raw = json.dumps(body).encode()
    signature = "sha256=" + hmac.new(b"secret-ch-2", raw, hashlib.sha256).hexdigest()
    service.receive(Platform.WHATSAPP, {"x-hub-signature-256": signature}, raw)

    seen: list[tuple[MediaFetchJob, int]] = []

    class Fetcher:
        def fetch(self, job: MediaFetchJob, attempt: int) -> None:
            seen.append((job, attempt))

    monkeypatch.setattr(bootstrap, "media_fetcher", Fetcher)
    [record] = [dict(r, attributes={"ApproximateReceiveCount": "3"}) for r in aws.sqs_records()]
    files_app.record_handler(SQSRecord(record))
    [(job, attempt)] = seen
    stored = next(iter(world.messages.messages.values()))
    assert (job.file_id, job.channel_id, job.platform, job.reference, job.mime_type, attempt) == (
        stored.file_id,
        "ch-2",
        Platform.WHATSAPP,
        "1479",
        "image/jpeg",
        3,
    )


@pytest.mark.parametrize("queue", ["route", "status"])
def test_a_dead_letter_record_is_dropped_unread_retried_while_a_dependency_is_down_and_given_up_at_the_limit(
    functions: dict[str, ModuleType], monkeypatch: pytest.MonkeyPatch, queue: str
) -> None:
    from chat4all.domain.errors import DependencyUnavailableError
    from chat4all.services.recovery import DEAD_LETTER_GIVE_UP_RECEIVES

    deadletter = functions["deadletter"]
    handle = deadletter.route_record if queue == "route" else deadletter.status_record
    report = StatusReport(Platform.WHATSAPP, "wamid.1", MessageStatus.READ, datetime.now(UTC), channel_id="ch-1")
    envelope = {"source": STATUS_EVENT_SOURCE, "detail-type": STATUS_EVENT_TYPE}
    body = (
        RouteJob(message_id="m1", conversation_id="c1").model_dump_json()
        if queue == "route"
        else json.dumps(envelope | {"detail": status_event_detail(report)})
    )

    def record(text: str, receives: int) -> SQSRecord:
        attributes = {"ApproximateReceiveCount": str(receives)}
        fields = {"body": text, "attributes": attributes, "messageAttributes": {}}
        return SQSRecord({"messageId": "x", "receiptHandle": "h", **fields})

    class DownRecovery:
        calls = 0

        def settle_dead_route(self, *args: Any, **kwargs: Any) -> bool:
            self.calls += 1
            raise DependencyUnavailableError("mongodb")

        settle_dead_status = settle_dead_route

    recovery = DownRecovery()
    monkeypatch.setattr(bootstrap, "recovery_service", lambda: recovery)
    counted: list[str] = []
    monkeypatch.setattr(deadletter.metrics, "add_metric", lambda name, **_: counted.append(name))
    prefix = "RouteDeadLetters" if queue == "route" else "StatusDeadLetters"

    # a body that is not the queue's record: dropped, counted, never settled
    handle(record('{"not": "a record"}', 1))
    assert (recovery.calls, counted) == (0, [f"{prefix}Dropped"])
    # a dependency down below the limit: raised, so that SQS hands the record out again
    with pytest.raises(DependencyUnavailableError):
        handle(record(body, DEAD_LETTER_GIVE_UP_RECEIVES - 1))
    assert (recovery.calls, counted) == (1, [f"{prefix}Dropped"])
    # at the limit: given up, counted, not raised
    handle(record(body, DEAD_LETTER_GIVE_UP_RECEIVES))
    given_up = "RouteDeadLettersNotSettled" if queue == "route" else "StatusDeadLettersDropped"
    assert (recovery.calls, counted) == (2, [f"{prefix}Dropped", given_up])
