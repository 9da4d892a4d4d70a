"""MessageStore's part of the route-job protocol (chat4all.services.route_jobs): the conversation's mark, set with
an outbound message and removed by a run; and the stale PENDING messages the sweeper re-enqueues. The fake and
the MongoDB adapter agree."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import TYPE_CHECKING

from chat4all.domain.models import Direction
from chat4all.services import route_jobs
from tests.contract.conftest import T0, a_conversation, a_message, new_id

if TYPE_CHECKING:
    from chat4all.domain.models import Conversation, Message
    from tests.contract.conftest import Ports


def stored_conversation(ports: Ports) -> Conversation:
    conversation = a_conversation(new_id(), new_id())
    ports.conversations.add_conversation(conversation)
    return conversation


def send(ports: Ports, conversation: Conversation, seconds: int) -> tuple[Message, bool]:
    """An outbound message stored at T0 + `seconds`; and whether its sender owes the conversation a job."""
    at = T0 + timedelta(seconds=seconds)
    message = a_message(conversation.conversation_id, at=at)
    stored = ports.messages.add_outbound(conversation.conversation_id, at, lambda _: (message, []))
    assert stored is not None
    return stored.message, route_jobs.needs_job(stored)


def test_the_first_message_marks_the_conversation_and_the_next_ones_find_the_mark(ports: Ports) -> None:
    conversation = stored_conversation(ports)
    first, owes = send(ports, conversation, 0)
    assert owes
    stored = ports.messages.add_outbound(
        conversation.conversation_id, T0 + timedelta(seconds=1), lambda _: (a_message(conversation.conversation_id), [])
    )
    assert stored is not None and stored.previous_mark == first.created_at
    assert not route_jobs.needs_job(stored)
    # an inbound message neither takes nor needs the mark
    inbound = dataclasses.replace(a_message(conversation.conversation_id), direction=Direction.INBOUND)
    assert ports.messages.add_message(inbound) is not None
    assert send(ports, conversation, 2)[1] is False
    # a mark older than ROUTE_JOB_STALE (its job may be lost) makes every message enqueue a job of its own
    stale = int(route_jobs.ROUTE_JOB_STALE.total_seconds()) + 1
    assert [send(ports, conversation, stale)[1], send(ports, conversation, stale + 1)[1]] == [True, True]


def test_a_release_unmarks_once_and_the_next_message_marks_again(ports: Ports) -> None:
    conversation = stored_conversation(ports)
    send(ports, conversation, 0)
    assert ports.messages.release_route_job(conversation.conversation_id) is True
    assert ports.messages.release_route_job(conversation.conversation_id) is False
    assert send(ports, conversation, 1)[1] is True


def test_a_run_unmarks_only_when_the_counter_it_read_is_still_the_conversations(ports: Ports) -> None:
    conversation = stored_conversation(ports)
    send(ports, conversation, 0)
    send(ports, conversation, 1)
    # a run read the counter at 1; the second message moved it to 2: nothing is unmarked, the run looks again
    assert ports.messages.finish_route_job(conversation.conversation_id, 1) is False
    assert send(ports, conversation, 2)[1] is False
    assert ports.messages.finish_route_job(conversation.conversation_id, 3) is True
    assert send(ports, conversation, 3)[1] is True
    assert ports.messages.finish_route_job(new_id(), 0) is False  # no such conversation


def test_stale_pending_is_the_old_outbound_pending_messages_in_conversation_and_sequence_order(ports: Ports) -> None:
    first, second = stored_conversation(ports), stored_conversation(ports)
    old = [send(ports, second, 0)[0], send(ports, first, 1)[0], send(ports, second, 2)[0]]
    young = send(ports, first, 600)[0]
    inbound = dataclasses.replace(a_message(first.conversation_id), direction=Direction.INBOUND)
    ports.messages.add_message(inbound)
    mine = {first.conversation_id, second.conversation_id}

    found = [
        job for job in ports.messages.stale_pending(T0 + timedelta(seconds=300), 100_000) if job.conversation_id in mine
    ]
    expected = sorted(old, key=lambda m: (m.conversation_id, m.sequence))
    assert [(j.message_id, j.conversation_id, j.sequence) for j in found] == [
        (m.message_id, m.conversation_id, m.sequence) for m in expected
    ]
    assert young.message_id not in {j.message_id for j in found}
