"""The correlation id (contract, "Correlation"): the header rule, the answer's header, and the id carried from the
accepting request to the stored message, its route job, its events and every log line about it, down to the
status report applied to it."""

from __future__ import annotations

import io
import json
import logging
import threading
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest

from chat4all.api.app import serve
from chat4all.domain.models import MessageStatus, Platform, StatusReport
from chat4all.domain.wire import (
    STATUS_EVENT_SOURCE,
    STATUS_EVENT_TYPE,
    ChannelStatusReported,
    MessageEventDetail,
    RouteJob,
    status_event_detail,
)
from chat4all.observability import logger
from chat4all.services.notifications import EventBuffer
from chat4all.services.statuses import StatusService
from chat4all.telemetry import correlation_id_for, current_correlation_id, log_context
from tests.fakes.in_memory import InMemoryEventOutbox, InMemoryEventPublisher
from tests.unit.test_access import Credentials, FakeContext, request, resolver
from tests.unit.test_services import ADMIN, World

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

# ------------------------------------------------------------------------------------------ the header rule


@pytest.mark.parametrize("value", ["a", "test-1.2_3", "A" * 128, "req-abc.DEF_0-9"])
def test_a_valid_header_is_kept(value: str) -> None:
    assert correlation_id_for({"X-Correlation-Id": value}, "req-1") == (value, False)


def test_the_header_name_is_matched_in_any_case() -> None:
    assert correlation_id_for({"x-correlation-id": "abc"}, "req-1") == ("abc", False)


@pytest.mark.parametrize("value", ["", "A" * 129, "has space", "semi;colon", "ünïcode", "new\nline", "a/b"])
def test_an_invalid_header_is_replaced_by_the_request_id_not_refused(value: str) -> None:
    assert correlation_id_for({"X-Correlation-Id": value}, "req-1") == ("req-1", True)


def test_without_the_header_the_request_id_is_the_correlation_id() -> None:
    assert correlation_id_for({"authorization": "Bearer x"}, "req-1") == ("req-1", False)


def test_without_header_or_request_id_a_uuid_is_made() -> None:
    made, replaced = correlation_id_for(None, None)
    assert str(uuid.UUID(made)) == made and not replaced


# --------------------------------------------------------------------------------- the answer's header


def _serve(event: dict[str, Any]) -> dict[str, Any]:
    app, _ = resolver(Credentials())
    return serve(app, event, FakeContext(30_000), EventBuffer(InMemoryEventPublisher(), InMemoryEventOutbox()))  # type: ignore[arg-type]


def test_every_answer_carries_the_correlation_id_problems_included() -> None:
    ok = request("GET /health", "/health")
    ok["headers"]["x-correlation-id"] = "client-42"
    assert _serve(ok)["headers"]["X-Correlation-Id"] == "client-42"
    # a 401 problem, and a request without the header: the request id
    problem = _serve(request("GET /v1/audit-log", "/v1/audit-log"))
    assert problem["statusCode"] == 401
    assert problem["headers"]["X-Correlation-Id"] == "req-1"
    # an invalid header: replaced, and the answer says by what
    bad = request("GET /health", "/health")
    bad["headers"]["x-correlation-id"] = "not valid!"
    assert _serve(bad)["headers"]["X-Correlation-Id"] == "req-1"
    # not even an API Gateway event: a 500 problem, still with an id
    broken = _serve({"not": "an API Gateway event"})
    assert broken["statusCode"] == 500
    assert uuid.UUID(broken["headers"]["X-Correlation-Id"])


# ---------------------------------------------------------------------------------------- the log lines


@pytest.fixture
def log_lines() -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """The JSON lines the Powertools handler wrote so far in the test (stdlib chat4all.* loggers included)."""
    buffer = io.StringIO()
    handler = logger.registered_handler
    assert isinstance(handler, logging.StreamHandler)
    previous = handler.setStream(buffer)
    try:
        yield lambda: [json.loads(line) for line in buffer.getvalue().splitlines() if line.startswith("{")]
    finally:
        handler.setStream(previous)


def test_log_context_keys_reach_powertools_and_stdlib_lines_and_are_removed_after(
    log_lines: Callable[[], list[dict[str, Any]]],
) -> None:
    stdlib = logging.getLogger("chat4all.services.somewhere")
    with log_context(correlation_id="c-1", message_id="m-1", conversation_id="k-1"):
        logger.info("powertools line")
        stdlib.warning("stdlib line %s", "x")
        with log_context(correlation_id="c-2", message_id=None):
            logger.info("inner line")
            assert current_correlation_id() == "c-2"
        logger.info("explicit", extra={"message_id": "m-explicit"})
    logger.info("after")
    assert current_correlation_id() is None
    by_message = {line["message"]: line for line in log_lines()}
    for name in ("powertools line", "stdlib line x"):
        assert by_message[name]["correlation_id"] == "c-1"
        assert by_message[name]["message_id"] == "m-1"
        assert by_message[name]["conversation_id"] == "k-1"
    assert by_message["inner line"]["correlation_id"] == "c-2"
    assert by_message["inner line"]["message_id"] == "m-1"  # None leaves the outer value
    assert by_message["explicit"]["message_id"] == "m-explicit"  # the call's extra wins
    assert "correlation_id" not in by_message["after"] and "message_id" not in by_message["after"]


def test_each_thread_has_its_own_keys() -> None:
    seen: dict[str, str | None] = {}

    def work(name: str) -> None:
        with log_context(correlation_id=name):
            barrier.wait()
            seen[name] = current_correlation_id()

    barrier = threading.Barrier(2)
    threads = [threading.Thread(target=work, args=(n,)) for n in ("one", "two")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == {"one": "one", "two": "two"}


# ------------------------------------------------------------- the message, its job, its events, its status


def test_the_message_keeps_the_id_and_its_job_events_and_lines_carry_it(
    log_lines: Callable[[], list[dict[str, Any]]],
) -> None:
    world = World()
    command = world.send("hello")
    with log_context(correlation_id="test-abc"):
        world.message_service.accept(command, ADMIN, correlation_id="test-abc")
    stored = world.messages.get_message(command.message_id)
    assert stored is not None and stored.correlation_id == "test-abc"
    # MessageAccepted, kept on the message until it is published
    accepted = [e for e in stored.unpublished_events if e.detail_type == "MessageAccepted"]
    assert accepted and accepted[0].detail["correlation_id"] == "test-abc"
    # route runs it in another context: the message's own id is on its lines
    assert world.delivered_status(command.message_id) is MessageStatus.SENT
    sent = world.messages.get_message(command.message_id)
    assert sent is not None and sent.platform_message_id is not None
    sent_events = [e for e in world.messages.kept_events if e.detail_type == "MessageSent"]
    assert sent_events and sent_events[-1].detail["correlation_id"] == "test-abc"
    # a status webhook's report (its own request's id) applied to the message
    report = StatusReport(
        Platform.WHATSAPP, sent.platform_message_id, MessageStatus.READ, datetime.now(UTC), correlation_id="webhook-1"
    )
    assert StatusService(world.messages, world.events, world.conversations).apply(report)
    read_events = [e for e in world.messages.kept_events if e.detail_type == "MessageStatusChanged"]
    assert read_events and read_events[-1].detail["correlation_id"] == "test-abc"
    lines = [line for line in log_lines() if line.get("message_id") == command.message_id]
    messages = {line["message"] for line in lines}
    assert "message accepted" in messages
    assert "platform call" in messages
    assert any(m.startswith("status READ") for m in messages)
    assert {line["correlation_id"] for line in lines} == {"test-abc"}
    status_line = next(line for line in lines if line["message"].startswith("status READ"))
    assert status_line["webhook_correlation_id"] == "webhook-1"
    call = next(line for line in lines if line["message"] == "platform call")
    assert call["platform"] == "WHATSAPP" and call["outcome"] == "sent"


def test_the_wire_formats_carry_the_id_and_omit_it_when_absent() -> None:
    job = RouteJob(message_id="m", conversation_id="c", correlation_id="cid")
    assert RouteJob.parse(job.body()).correlation_id == "cid"
    assert "correlation_id" not in RouteJob(message_id="m", conversation_id="c").body()
    report = StatusReport(Platform.WHATSAPP, "wamid", MessageStatus.READ, datetime.now(UTC), correlation_id="w")
    detail = status_event_detail(report)
    envelope = json.dumps({"source": STATUS_EVENT_SOURCE, "detail-type": STATUS_EVENT_TYPE, "detail": detail})
    assert detail["correlation_id"] == "w" and ChannelStatusReported.parse(envelope).correlation_id == "w"
    plain = StatusReport(Platform.WHATSAPP, "wamid", MessageStatus.READ, datetime.now(UTC))
    assert "correlation_id" not in status_event_detail(plain)
    assert "correlation_id" in MessageEventDetail.model_fields


def test_the_route_job_carries_the_enqueuing_work_s_correlation_id() -> None:
    from chat4all.adapters.aws import SqsOutboundQueue

    class Sqs:
        def __init__(self) -> None:
            self.bodies: list[str] = []

        def call(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
            self.bodies.append(params["MessageBody"])
            return {}

    sqs = Sqs()
    queue = SqsOutboundQueue(sqs, "https://sqs.example/route.fifo")  # type: ignore[arg-type]
    with log_context(correlation_id="req-9"):
        queue.enqueue("m-1", "c-1")
    queue.enqueue("m-2", "c-1")
    assert [RouteJob.parse(body).correlation_id for body in sqs.bodies] == ["req-9", None]
