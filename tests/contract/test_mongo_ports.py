"""ConversationStore, MessageStore (all but the route-job marks) and EventOutbox: the fakes and the MongoDB
adapters agree."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import pytest

from chat4all.domain.errors import NotFoundError
from chat4all.domain.models import (
    ConversationType,
    Direction,
    DomainEvent,
    MessageStatus,
    Participant,
    Platform,
    StatusEntry,
)
from tests.contract.conftest import T0, a_conversation, a_message, new_id

if TYPE_CHECKING:
    from chat4all.domain.models import Conversation, Message
    from tests.contract.conftest import Ports


def stored_conversation(ports: Ports, *user_ids: str, **kwargs: object) -> Conversation:
    conversation = a_conversation(*(user_ids or (new_id(), new_id())), **kwargs)  # type: ignore[arg-type]
    ports.conversations.add_conversation(conversation)
    return conversation


def event(message_id: str | None = None, detail_type: str = "MessageAccepted") -> DomainEvent:
    return DomainEvent(detail_type, {"message_id": message_id, "n": new_id()}, "chat4all", new_id(), message_id)


# ------------------------------------------------------------------ ConversationStore


def test_a_conversation_reads_back_with_its_counter_at_zero(ports: Ports) -> None:
    conversation = stored_conversation(ports, channel_id=new_id())

    assert ports.conversations.get_conversation(conversation.conversation_id) == dataclasses.replace(
        conversation, last_sequence=0
    )
    assert ports.conversations.get_conversation(new_id()) is None
    assert ports.conversations.add_conversation_once(conversation) is False
    fresh = a_conversation(new_id())
    assert ports.conversations.add_conversation_once(fresh) is True
    assert ports.conversations.get_conversation(fresh.conversation_id) is not None


def test_share_conversation(ports: Ports) -> None:
    ana, bruno, carla = new_id(), new_id(), new_id()
    stored_conversation(ports, ana, bruno)

    assert ports.conversations.share_conversation(ana, bruno)
    assert ports.conversations.share_conversation(bruno, ana)
    assert not ports.conversations.share_conversation(ana, carla)


def test_participants_join_up_to_the_capacity_once_and_the_last_one_stays(ports: Ports) -> None:
    ana, bruno, carla = new_id(), new_id(), new_id()
    conversation = stored_conversation(ports, ana, kind=ConversationType.GROUP)
    cid = conversation.conversation_id

    added = ports.conversations.add_participant(cid, Participant(bruno, T0), capacity=2)
    assert added is not None and [p.user_id for p in added.participants] == [ana, bruno]
    assert ports.conversations.add_participant(cid, Participant(bruno, T0), capacity=5) is None
    assert ports.conversations.add_participant(cid, Participant(carla, T0), capacity=2) is None
    assert ports.conversations.add_participant(new_id(), Participant(carla, T0), capacity=5) is None

    removed = ports.conversations.remove_participant(cid, ana)
    assert removed is not None and [p.user_id for p in removed.participants] == [bruno]
    assert ports.conversations.remove_participant(cid, ana) is None
    assert ports.conversations.remove_participant(cid, bruno) is None  # the last participant stays
    stored = ports.conversations.get_conversation(cid)
    assert stored is not None and [p.user_id for p in stored.participants] == [bruno]


def test_conversations_page_newest_activity_first_with_a_cursor(ports: Ports) -> None:
    me = new_id()
    times = [T0 + timedelta(minutes=n) for n in (3, 1, 2, 2)]
    mine = [stored_conversation(ports, me, new_id(), at=at) for at in times]
    stored_conversation(ports, new_id(), new_id(), at=T0 + timedelta(minutes=9))
    expected = sorted(mine, key=lambda c: (c.last_activity_at, c.conversation_id), reverse=True)

    first = ports.conversations.conversations_page(me, limit=2, before=None)
    assert [c.conversation_id for c in first] == [c.conversation_id for c in expected[:2]]
    cursor = (first[-1].last_activity_at, first[-1].conversation_id)
    rest = ports.conversations.conversations_page(me, limit=5, before=cursor)
    assert [c.conversation_id for c in rest] == [c.conversation_id for c in expected[2:]]


def test_open_on_channel_is_the_newest_one_to_one_on_that_channel(ports: Ports) -> None:
    customer, channel = new_id(), new_id()
    stored_conversation(ports, customer, new_id(), channel_id=channel, at=T0)
    newest = stored_conversation(ports, customer, new_id(), channel_id=channel, at=T0 + timedelta(minutes=1))
    stored_conversation(ports, customer, new_id(), channel_id=new_id(), at=T0 + timedelta(minutes=2))
    stored_conversation(
        ports, customer, new_id(), channel_id=channel, at=T0 + timedelta(minutes=3), kind=ConversationType.GROUP
    )

    found = ports.conversations.open_on_channel(customer, channel)
    assert found is not None and found.conversation_id == newest.conversation_id
    assert ports.conversations.open_on_channel(new_id(), channel) is None


# ------------------------------------------------------------------ MessageStore


def test_messages_take_the_next_sequences_and_move_the_conversation(ports: Ports) -> None:
    conversation = stored_conversation(ports)
    cid = conversation.conversation_id
    later = T0 + timedelta(minutes=5)
    first = ports.messages.add_message(a_message(cid, at=later))
    second = ports.messages.add_message(a_message(cid, at=T0 + timedelta(minutes=1), direction=Direction.INBOUND))

    assert first is not None and second is not None
    assert (first.sequence, second.sequence) == (1, 2)
    assert ports.messages.get_message(first.message_id) == first
    assert ports.messages.get_message(new_id()) is None
    moved = ports.conversations.get_conversation(cid)
    assert moved is not None
    assert (moved.message_count, moved.last_sequence, moved.last_activity_at) == (2, 2, later)
    # the same id again stores nothing and takes no sequence
    assert ports.messages.add_message(dataclasses.replace(first, content="again")) is None
    again = ports.conversations.get_conversation(cid)
    assert again is not None and (again.message_count, again.last_sequence) == (2, 2)


def test_an_inbound_message_keeps_its_platform_time_as_the_conversation_s_last_inbound_only_forward(
    ports: Ports,
) -> None:
    cid = stored_conversation(ports).conversation_id
    recent, older = T0 + timedelta(hours=2), T0 + timedelta(hours=1)

    def last_inbound() -> datetime | None:
        conversation = ports.conversations.get_conversation(cid)
        assert conversation is not None
        return conversation.last_inbound_at

    ports.messages.add_message(a_message(cid, direction=Direction.INBOUND))
    assert last_inbound() is None  # none given: none kept
    ports.messages.add_message(a_message(cid, direction=Direction.INBOUND), inbound_at=recent)
    assert last_inbound() == recent
    ports.messages.add_message(a_message(cid, direction=Direction.INBOUND), inbound_at=older)  # a late webhook
    assert last_inbound() == recent
    # a message already stored (a replay) moves nothing, not even with a later time
    replay = a_message(cid, direction=Direction.INBOUND)
    ports.messages.add_message(replay, inbound_at=recent)
    assert ports.messages.add_message(replay, inbound_at=recent + timedelta(hours=1)) is None
    assert last_inbound() == recent


def test_a_message_for_a_conversation_that_does_not_exist_is_not_found(ports: Ports) -> None:
    with pytest.raises(NotFoundError):
        ports.messages.add_message(a_message(new_id()))


def test_events_are_kept_on_their_message_with_it(ports: Ports) -> None:
    conversation = stored_conversation(ports)
    message = a_message(conversation.conversation_id)
    events = [event(message.message_id), event(message.message_id, "MessageSent")]

    stored = ports.messages.add_message(message, events=events)

    assert stored is not None
    kept = ports.messages.get_message(message.message_id)
    assert kept is not None
    assert [(e.event_id, e.detail_type, e.detail, e.message_id) for e in kept.unpublished_events] == [
        (e.event_id, e.detail_type, e.detail, message.message_id) for e in events
    ]


def test_pages_newest_first_before_a_sequence_and_since_a_time(ports: Ports) -> None:
    cid = stored_conversation(ports).conversation_id
    for n in range(1, 8):
        ports.messages.add_message(a_message(cid, at=T0 + timedelta(minutes=n), content=f"m{n}"))

    def page(limit: int, before: int | None = None, since_minute: int | None = None) -> list[int]:
        since = None if since_minute is None else T0 + timedelta(minutes=since_minute)
        return [
            m.sequence for m in ports.messages.conversation_page(cid, limit=limit, before_sequence=before, since=since)
        ]

    assert page(3) == [7, 6, 5]
    assert page(3, before=5) == [4, 3, 2]
    assert page(10, before=3) == [2, 1]
    assert page(10, since_minute=5) == [7, 6, 5]
    assert page(2, before=7, since_minute=5) == [6, 5]
    assert ports.messages.conversation_page(new_id(), limit=5, before_sequence=None, since=None) == []


def test_find_by_platform_id_on_its_platform_only(ports: Ports) -> None:
    cid = stored_conversation(ports).conversation_id
    wamid = f"wamid.{new_id()}"
    stored = ports.messages.add_message(a_message(cid, direction=Direction.INBOUND, platform_message_id=wamid))

    assert ports.messages.find_by_platform_id(Platform.WHATSAPP, wamid) == stored
    assert ports.messages.find_by_platform_id(Platform.TELEGRAM, wamid) is None
    assert ports.messages.find_by_platform_id(Platform.WHATSAPP, f"wamid.{new_id()}") is None


def test_unsettled_is_the_leading_run_of_pending_outbound_messages(ports: Ports) -> None:
    cid = stored_conversation(ports).conversation_id
    ids = []
    for direction in (Direction.OUTBOUND, Direction.OUTBOUND, Direction.OUTBOUND):
        stored = ports.messages.add_message(a_message(cid, direction=direction))
        assert stored is not None
        ids.append(stored.message_id)
    first = ports.messages.get_message(ids[0])
    assert first is not None
    attempt = ports.messages.begin_attempt(first, T0, T0 + timedelta(minutes=1))
    assert attempt is not None
    ports.messages.record_sent(ids[0], attempt, StatusEntry(MessageStatus.SENT, T0), f"wamid.{new_id()}")

    assert [m.message_id for m in ports.messages.unsettled(cid, 5)] == ids[1:]
    assert [m.message_id for m in ports.messages.unsettled(cid, 1)] == ids[1:2]


def pending(ports: Ports) -> Message:
    stored = ports.messages.add_message(a_message(stored_conversation(ports).conversation_id))
    assert stored is not None
    return stored


def test_an_attempt_is_claimed_once_and_closed_by_its_receipt(ports: Ports) -> None:
    message = pending(ports)
    lease = T0 + timedelta(minutes=1)

    assert ports.messages.begin_attempt(message, T0, lease) == 1
    assert ports.messages.begin_attempt(message, T0, lease) is None  # open already
    claimed = ports.messages.get_message(message.message_id)
    assert claimed is not None and claimed.attempts == 1
    assert claimed.in_flight is not None and (claimed.in_flight.number, claimed.in_flight.lease_until) == (1, lease)

    wamid = f"wamid.{new_id()}"
    sent_at = T0 + timedelta(seconds=2)
    sent_event = event(message.message_id, "MessageSent")
    assert ports.messages.record_sent(
        message.message_id, 1, StatusEntry(MessageStatus.SENT, sent_at), wamid, events=[sent_event]
    )
    sent = ports.messages.get_message(message.message_id)
    assert sent is not None
    assert (sent.status, sent.platform_message_id, sent.in_flight, sent.attempts) == (
        MessageStatus.SENT,
        wamid,
        None,
        1,
    )
    assert sent.history[-1] == StatusEntry(MessageStatus.SENT, sent_at)
    assert sent_event.event_id in [e.event_id for e in sent.unpublished_events]
    # a read of the message from before the attempt claims nothing any more
    assert ports.messages.begin_attempt(message, T0, lease) is None


def test_a_receipt_for_an_attempt_settled_meanwhile_keeps_only_the_platform_id(ports: Ports) -> None:
    message = pending(ports)
    attempt = ports.messages.begin_attempt(message, T0, T0 + timedelta(minutes=1))
    assert attempt is not None
    assert ports.messages.settle_failed(
        message.message_id, StatusEntry(MessageStatus.FAILED, T0, "outcome unknown"), attempt=attempt
    )
    wamid = f"wamid.{new_id()}"

    assert not ports.messages.record_sent(message.message_id, attempt, StatusEntry(MessageStatus.SENT, T0), wamid)

    failed = ports.messages.get_message(message.message_id)
    assert failed is not None
    assert (failed.status, failed.error, failed.platform_message_id) == (MessageStatus.FAILED, "outcome unknown", wamid)
    assert ports.messages.find_by_platform_id(Platform.WHATSAPP, wamid) == failed


def test_an_attempt_refused_for_now_is_closed_for_a_retry(ports: Ports) -> None:
    message = pending(ports)
    attempt = ports.messages.begin_attempt(message, T0, T0 + timedelta(minutes=1))
    assert attempt is not None
    retry_at = T0 + timedelta(seconds=30)

    assert ports.messages.end_attempt(message.message_id, attempt, retry_at, "429")
    assert not ports.messages.end_attempt(message.message_id, attempt, retry_at, "429")  # closed already

    waiting = ports.messages.get_message(message.message_id)
    assert waiting is not None
    assert (waiting.status, waiting.in_flight, waiting.retry_at, waiting.attempts) == (
        MessageStatus.PENDING,
        None,
        retry_at,
        1,
    )
    assert ports.messages.begin_attempt(waiting, T0, T0 + timedelta(minutes=1)) == 2


def test_postpone_counts_the_trouble_from_its_first_time(ports: Ports) -> None:
    message = pending(ports)
    first, second = T0 + timedelta(seconds=10), T0 + timedelta(seconds=20)

    ports.messages.postpone(message.message_id, first, first, "KMS down")
    ports.messages.postpone(message.message_id, second, second, "KMS down")

    postponed = ports.messages.get_message(message.message_id)
    assert postponed is not None
    assert (postponed.retry_at, postponed.troubled_since, postponed.troubles) == (second, first, 2)
    assert postponed.status is MessageStatus.PENDING


def test_settle_failed_needs_the_open_attempt_or_none(ports: Ports) -> None:
    never_tried = pending(ports)
    failed_event = event(never_tried.message_id, "MessageFailed")
    assert ports.messages.settle_failed(
        never_tried.message_id, StatusEntry(MessageStatus.FAILED, T0, "no recipient"), events=[failed_event]
    )
    failed = ports.messages.get_message(never_tried.message_id)
    assert failed is not None
    assert (failed.status, failed.error, failed.in_flight) == (MessageStatus.FAILED, "no recipient", None)
    assert failed_event.event_id in [e.event_id for e in failed.unpublished_events]
    assert not ports.messages.settle_failed(never_tried.message_id, StatusEntry(MessageStatus.FAILED, T0, "again"))

    in_flight = pending(ports)
    attempt = ports.messages.begin_attempt(in_flight, T0, T0 + timedelta(minutes=1))
    assert attempt is not None
    entry = StatusEntry(MessageStatus.FAILED, T0, "lease over")
    assert not ports.messages.settle_failed(in_flight.message_id, entry)  # an attempt is open
    assert not ports.messages.settle_failed(in_flight.message_id, entry, attempt=attempt + 1)
    assert ports.messages.settle_failed(in_flight.message_id, entry, attempt=attempt)


def test_append_status_moves_forward_only_and_keeps_every_report(ports: Ports) -> None:
    message = pending(ports)
    mid = message.message_id
    delivered = StatusEntry(MessageStatus.DELIVERED, T0 + timedelta(seconds=2))
    read = StatusEntry(MessageStatus.READ, T0 + timedelta(seconds=3))
    late_sent = StatusEntry(MessageStatus.SENT, T0 + timedelta(seconds=1))

    assert ports.messages.append_status(mid, delivered, dedupe_key="d")
    assert ports.messages.append_status(mid, read, events=[event(mid, "MessageRead")])
    assert not ports.messages.append_status(mid, late_sent, events=[event(mid, "MessageSent")])
    assert not ports.messages.append_status(mid, delivered, dedupe_key="d")  # a replay: changes nothing at all

    after = ports.messages.get_message(mid)
    assert after is not None
    assert after.status is MessageStatus.READ
    assert after.history == [*message.history, delivered, read, late_sent]
    # only the forward move's events were kept
    assert [e.detail_type for e in after.unpublished_events] == ["MessageRead"]


def test_a_failure_reported_after_the_message_was_read_is_history_only(ports: Ports) -> None:
    message = pending(ports)
    mid = message.message_id
    ports.messages.append_status(mid, StatusEntry(MessageStatus.READ, T0))

    assert not ports.messages.append_status(mid, StatusEntry(MessageStatus.FAILED, T0, "late failure"))

    after = ports.messages.get_message(mid)
    assert after is not None
    assert after.status is MessageStatus.READ
    assert after.history[-1] == StatusEntry(MessageStatus.FAILED, T0, "late failure")


def test_a_failure_report_moves_a_sent_message_to_failed_with_its_reason(ports: Ports) -> None:
    message = pending(ports)
    mid = message.message_id
    ports.messages.append_status(mid, StatusEntry(MessageStatus.SENT, T0))

    assert ports.messages.append_status(mid, StatusEntry(MessageStatus.FAILED, T0, "131026: undeliverable"))

    after = ports.messages.get_message(mid)
    assert after is not None
    assert (after.status, after.error) == (MessageStatus.FAILED, "131026: undeliverable")


# ------------------------------------------------------------------ EventOutbox


def test_events_about_no_message_are_kept_in_the_outbox_until_removed(ports: Ports) -> None:
    homeless = [event(None, f"UserCreated-{new_id()}"), event(None, f"UserCreated-{new_id()}")]
    types = {e.detail_type for e in homeless}

    ports.outbox.keep(homeless)

    found = [(outbox_id, e) for outbox_id, e in ports.outbox.pending(10_000) if e.detail_type in types]
    assert sorted((e.detail_type, e.source, str(e.detail)) for _, e in found) == sorted(
        (e.detail_type, e.source, str(e.detail)) for e in homeless
    )
    ports.outbox.remove([found[0][0]])
    left = [e.detail_type for _, e in ports.outbox.pending(10_000) if e.detail_type in types]
    assert left == [found[1][1].detail_type]
    ports.outbox.remove([found[1][0]])
    assert [e for _, e in ports.outbox.pending(10_000) if e.detail_type in types] == []


def test_events_kept_on_a_message_are_pending_until_published(ports: Ports) -> None:
    conversation = stored_conversation(ports)
    message = a_message(conversation.conversation_id)
    accepted, sent = event(message.message_id, "MessageAccepted"), event(message.message_id, "MessageSent")
    ports.messages.add_message(message, events=[accepted, sent])
    # keeping an event that is on its message already adds no second copy
    ports.outbox.keep([accepted])

    def on_it() -> list[str]:
        return sorted(e.event_id for _, e in ports.outbox.pending(10_000) if e.message_id == message.message_id)

    assert on_it() == sorted([accepted.event_id, sent.event_id])
    ports.outbox.published([accepted])
    assert on_it() == [sent.event_id]
    kept = ports.messages.get_message(message.message_id)
    assert kept is not None and [e.event_id for e in kept.unpublished_events] == [sent.event_id]
    [outbox_id] = [i for i, e in ports.outbox.pending(10_000) if e.message_id == message.message_id]
    ports.outbox.remove([outbox_id])
    assert on_it() == []
