"""Recovery's rules with in-memory ports: what the dead-letter consumer settles and what the sweeper takes up."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from chat4all.domain.models import Direction, Message, MessageStatus, Platform, StatusEntry, StatusReport
from chat4all.services.recovery import RecoveryService, StatusSettlement, dead_letter_reason
from chat4all.services.statuses import StatusService
from tests.fakes.in_memory import InMemoryEventPublisher, InMemoryMessageStore, InMemoryOutboundQueue

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def message(message_id: str, conversation: str, sequence: int, age_seconds: float, **changes: object) -> Message:
    created = NOW - timedelta(seconds=age_seconds)
    base = Message(
        message_id=message_id,
        conversation_id=conversation,
        sender_id="agent",
        content="hi",
        file_id=None,
        channel=Platform.WHATSAPP,
        direction=Direction.OUTBOUND,
        sequence=sequence,
        status=MessageStatus.PENDING,
        history=[StatusEntry(MessageStatus.PENDING, created)],
        created_at=created,
        request_fingerprint="f",
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


class World:
    def __init__(self) -> None:
        self.store = InMemoryMessageStore()
        self.events = InMemoryEventPublisher()
        self.requeue = InMemoryOutboundQueue()
        self.recovery = RecoveryService(
            self.store,
            self.requeue,
            StatusService(self.store, self.events),
            self.events,
            pending_after_seconds=120,
            clock=lambda: NOW,
        )

    def add(self, *messages: Message) -> None:
        for each in messages:  # as stored, sequence and all
            self.store.messages[each.message_id] = each


@pytest.fixture
def world() -> World:
    return World()


def test_a_dead_lettered_pending_message_fails_once_with_its_reason(world: World) -> None:
    world.add(message("m1", "c1", 1, 30))
    reason = dead_letter_reason(None)
    assert world.recovery.settle_dead_route("m1", "c1", reason) is True
    assert world.recovery.settle_dead_route("m1", "c1", reason) is False  # a redelivered record changes nothing
    failed = world.store.messages["m1"]
    assert failed.status is MessageStatus.FAILED
    assert failed.history[-1].detail == reason
    assert [(kind, detail["status"]) for _, kind, detail in world.events.events] == [("MessageFailed", "FAILED")]
    # written on the message with the change it reports, so the relay publishes it should this process die
    [kept] = world.store.kept_events
    assert (kept.detail_type, kept.message_id, kept.detail) == ("MessageFailed", "m1", world.events.events[0][2])
    assert kept.detail["reason"] == reason and kept.detail["at"] == NOW.isoformat()
    # each time, a fresh job for the conversation replaces the dead-lettered one (deduplicated by its round)
    assert [
        (round_id, [(j.message_id, j.conversation_id) for j in jobs]) for round_id, jobs in world.requeue.rounds
    ] == [("dead-letter", [("m1", "c1")])] * 2


def test_a_dead_lettered_record_of_a_settled_or_inbound_message_changes_nothing(world: World) -> None:
    world.add(
        message("sent", "c1", 1, 30, status=MessageStatus.SENT, platform_message_id="wamid.1"),
        message("inbound", "c1", 2, 30, direction=Direction.INBOUND),
        message("failed", "c1", 3, 30, status=MessageStatus.FAILED),
    )
    for message_id in ("sent", "inbound", "failed", "unknown"):
        assert world.recovery.settle_dead_route(message_id, "c1", dead_letter_reason("gave up")) is False
    assert world.store.messages["sent"].status is MessageStatus.SENT
    assert world.events.events == []


def test_a_dead_lettered_status_report_is_applied_once_more_or_dropped_with_its_reason(world: World) -> None:
    world.add(message("sent", "c1", 1, 30, status=MessageStatus.SENT, platform_message_id="wamid.1"))
    delivered = StatusReport(Platform.WHATSAPP, "wamid.1", MessageStatus.DELIVERED, NOW)
    assert world.recovery.settle_dead_status(delivered).settlement is StatusSettlement.APPLIED
    assert world.store.messages["sent"].status is MessageStatus.DELIVERED
    assert world.recovery.settle_dead_status(delivered).settlement is StatusSettlement.KEPT_IN_HISTORY
    unknown = world.recovery.settle_dead_status(StatusReport(Platform.WHATSAPP, "wamid.x", MessageStatus.READ, NOW))
    assert unknown.settlement is StatusSettlement.DROPPED
    assert unknown.reason is not None and "wamid.x" in unknown.reason


def test_the_sweep_takes_up_outbound_pending_past_the_threshold_in_conversation_order(world: World) -> None:
    world.add(
        message("c1-2", "c1", 2, 300),
        message("c1-1", "c1", 1, 301),
        message("c2-1", "c2", 1, 200),
        message("young", "c1", 3, 60),
        message("sent", "c2", 2, 400, status=MessageStatus.SENT),
        message("inbound", "c3", 1, 400, direction=Direction.INBOUND),
    )
    report = world.recovery.sweep()
    assert (report.found, report.requeued) == (3, 3)
    round_id, jobs = world.requeue.rounds[-1]
    assert [j.message_id for j in jobs] == ["c1-1", "c1-2", "c2-1"]
    # at start the local stack takes up every PENDING message, however young; the same round deduplicates
    everything = world.recovery.sweep(pending_after_seconds=0)
    assert everything.found == 4
    assert world.requeue.rounds[-1][0] == round_id


def test_a_sweep_with_nothing_pending_enqueues_nothing(world: World) -> None:
    world.add(message("sent", "c1", 1, 400, status=MessageStatus.SENT))
    assert world.recovery.sweep().requeued == 0
    assert world.requeue.rounds == []
