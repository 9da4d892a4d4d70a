"""MessageStore's route-job marks (chat4all.services.route_jobs) and recovery's view of stale messages: the
fake and the MongoDB adapter agree."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest

from chat4all.domain.errors import ForbiddenError, NotFoundError
from chat4all.domain.models import Direction, MessageStatus, StatusEntry
from tests.contract.conftest import T0, a_conversation, a_message, new_id

if TYPE_CHECKING:
    from chat4all.domain.models import Conversation, DomainEvent, Message
    from chat4all.ports import OutboundDraft, StoredOutbound
    from tests.contract.conftest import Ports


def conversation_of(ports: Ports) -> str:
    conversation = a_conversation(new_id(), new_id())
    ports.conversations.add_conversation(conversation)
    return conversation.conversation_id


def draft_of(message: Message) -> OutboundDraft:
    def draft(conversation: Conversation) -> tuple[Message, list[DomainEvent]]:
        return message, []

    return draft


def outbound(ports: Ports, conversation_id: str, at: datetime = T0) -> StoredOutbound:
    stored = ports.messages.add_outbound(conversation_id, at, draft_of(a_message(conversation_id, at=at)))
    assert stored is not None
    return stored


def last_sequence(ports: Ports, conversation_id: str) -> int:
    conversation = ports.conversations.get_conversation(conversation_id)
    assert conversation is not None and conversation.last_sequence is not None
    return conversation.last_sequence


def test_the_first_outbound_message_marks_the_conversation_and_later_ones_find_the_earliest_mark(ports: Ports) -> None:
    cid = conversation_of(ports)
    # a time with microseconds: the mark keeps whole milliseconds, as MongoDB does
    first_at = T0 + timedelta(seconds=5, microseconds=123_456)

    first = outbound(ports, cid, first_at)
    second = outbound(ports, cid, T0 + timedelta(seconds=9))
    earlier = outbound(ports, cid, T0)  # the mark keeps the earliest time of the messages it stands for
    after_it = outbound(ports, cid, T0 + timedelta(seconds=10))

    assert first.previous_mark is None
    assert first.message.sequence == 1
    assert second.previous_mark == T0 + timedelta(seconds=5, microseconds=123_000)
    assert earlier.previous_mark == second.previous_mark
    assert after_it.previous_mark == T0
    assert [s.message.sequence for s in (second, earlier, after_it)] == [2, 3, 4]


def test_release_unmarks_and_reports_whether_there_was_a_mark(ports: Ports) -> None:
    cid = conversation_of(ports)
    assert ports.messages.release_route_job(cid) is False
    outbound(ports, cid)

    assert ports.messages.release_route_job(cid) is True
    assert ports.messages.release_route_job(cid) is False
    assert outbound(ports, cid).previous_mark is None


def test_finish_unmarks_only_when_no_message_was_stored_since_the_counter_was_read(ports: Ports) -> None:
    cid = conversation_of(ports)
    outbound(ports, cid)
    read = last_sequence(ports, cid)
    outbound(ports, cid)  # stored after the run read the counter

    assert ports.messages.finish_route_job(cid, read) is False
    assert outbound(ports, cid).previous_mark is not None  # still marked: the run looks again
    assert ports.messages.finish_route_job(cid, last_sequence(ports, cid)) is True
    assert outbound(ports, cid).previous_mark is None

    # not marked, counter as read: done all the same; a conversation that does not exist is not
    ports.messages.release_route_job(cid)
    assert ports.messages.finish_route_job(cid, last_sequence(ports, cid)) is True
    assert ports.messages.finish_route_job(new_id(), 0) is False


def test_an_outbound_message_the_draft_refuses_or_that_exists_already_changes_nothing(ports: Ports) -> None:
    cid = conversation_of(ports)
    with pytest.raises(NotFoundError):
        ports.messages.add_outbound(new_id(), T0, draft_of(a_message(cid)))

    def refuse(conversation: Conversation) -> tuple[Message, list[DomainEvent]]:
        raise ForbiddenError("not a participant")

    with pytest.raises(ForbiddenError):
        ports.messages.add_outbound(cid, T0, refuse)
    assert last_sequence(ports, cid) == 0
    assert ports.messages.release_route_job(cid) is False  # nor was it marked

    stored = outbound(ports, cid)
    ports.messages.release_route_job(cid)
    again = dataclasses.replace(stored.message, content="again")
    assert ports.messages.add_outbound(cid, T0, draft_of(again)) is None
    assert last_sequence(ports, cid) == 1
    assert ports.messages.release_route_job(cid) is False


def test_stale_pending_takes_the_oldest_outbound_pending_messages_in_conversation_order(ports: Ports) -> None:
    # an era of its own, before any other test's messages (1980-1991): the real store is shared with the session
    era = datetime(1980, 1, 1, tzinfo=UTC) + timedelta(days=int(new_id()[:3], 16))
    first, second = conversation_of(ports), conversation_of(ports)
    plan = [(first, 4), (second, 1), (first, 2), (second, 3), (first, 5)]  # (conversation, minute)
    stored = {}
    for cid, minute in plan:
        message = ports.messages.add_message(a_message(cid, at=era + timedelta(minutes=minute)))
        assert message is not None
        stored[(cid, minute)] = message
    settled = ports.messages.add_message(a_message(first, at=era))
    assert settled is not None
    ports.messages.settle_failed(settled.message_id, StatusEntry(MessageStatus.FAILED, era, "given up"))
    ports.messages.add_message(a_message(second, at=era, direction=Direction.INBOUND))

    jobs = ports.messages.stale_pending(era + timedelta(minutes=5), limit=3)

    # the three oldest (minutes 1, 2 and 3; minute 5 is not before the cutoff), by conversation and sequence
    oldest = [stored[(second, 1)], stored[(first, 2)], stored[(second, 3)]]
    expected = sorted((m.conversation_id, m.sequence, m.message_id) for m in oldest)
    assert [(j.conversation_id, j.sequence, j.message_id) for j in jobs] == expected
