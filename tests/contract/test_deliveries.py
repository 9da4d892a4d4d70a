"""DeliveryStore (GROUP deliveries and their lanes), the MessageStore and UserRepository reads the GROUP engine
adds, and delivery events in the outbox: the fake and the real adapters agree."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from chat4all.domain.models import (
    ConversationType,
    Delivery,
    DomainEvent,
    MessageStatus,
    Platform,
    StatusEntry,
)
from tests.contract.conftest import T0, a_conversation, a_message, a_user, an_identity, audit, new_id

if TYPE_CHECKING:
    from tests.contract.conftest import Ports


def a_delivery(
    message_id: str,
    conversation_id: str,
    user_id: str,
    sequence: int = 1,
    *,
    status: MessageStatus = MessageStatus.PENDING,
    channel_id: str = "ch-1",
    at: datetime = T0,
) -> Delivery:
    return Delivery(
        message_id,
        conversation_id,
        user_id,
        sequence,
        Platform.WHATSAPP,
        channel_id,
        status,
        [StatusEntry(MessageStatus.PENDING, at)],
        address="5511999990000",
        created_at=at,
    )


def test_deliveries_are_stored_once_and_read_by_message_lane_and_platform_id(ports: Ports) -> None:
    conversation, message = new_id(), new_id()
    users = sorted(new_id() for _ in range(3))
    stored = [a_delivery(message, conversation, u) for u in reversed(users)]
    ports.deliveries.add_deliveries(stored)
    # a fan-out done again keeps what is stored (here: one delivery sent meanwhile)
    sent = stored[0]
    assert ports.deliveries.begin_attempt(sent, T0, T0 + timedelta(seconds=30)) == 1
    entry = StatusEntry(MessageStatus.SENT, T0 + timedelta(seconds=1))
    assert ports.deliveries.record_sent(sent.delivery_id, 1, entry, "wamid.contract-1")
    ports.deliveries.add_deliveries(stored)
    found = ports.deliveries.deliveries_of(message)
    assert [d.user_id for d in found] == users
    assert ports.deliveries.status_counts(message) == {MessageStatus.PENDING: 2, MessageStatus.SENT: 1}
    again = ports.deliveries.get_delivery(sent.delivery_id)
    assert again is not None
    assert (again.status, again.platform_message_id, again.attempts, again.in_flight) == (
        MessageStatus.SENT,
        "wamid.contract-1",
        1,
        None,
    )
    assert [h.status for h in again.history] == [MessageStatus.PENDING, MessageStatus.SENT]
    assert (again.platform, again.channel_id, again.address, again.sequence) == (
        Platform.WHATSAPP,
        "ch-1",
        "5511999990000",
        1,
    )
    # by the channel that sent it, not another channel's same id
    assert ports.deliveries.find_by_platform_id("ch-1", "wamid.contract-1") == again
    assert ports.deliveries.find_by_platform_id("ch-2", "wamid.contract-1") is None


def test_a_lanes_pending_deliveries_come_lowest_sequence_first(ports: Ports) -> None:
    conversation, user = new_id(), new_id()
    messages = [new_id() for _ in range(4)]
    for sequence, message in zip((3, 1, 4, 2), messages, strict=True):
        ports.deliveries.add_deliveries([a_delivery(message, conversation, user, sequence)])
    ports.deliveries.add_deliveries([a_delivery(new_id(), conversation, new_id(), 1)])  # another lane
    first = ports.deliveries.lane_pending(conversation, user, 10)
    assert [d.sequence for d in first] == [1, 2, 3, 4]
    ports.deliveries.settle_failed(first[0].delivery_id, StatusEntry(MessageStatus.FAILED, T0, "gone"))
    assert [d.sequence for d in ports.deliveries.lane_pending(conversation, user, 2)] == [2, 3]


def test_a_deliverys_attempts_retries_and_settlement_are_the_messages(ports: Ports) -> None:
    delivery = a_delivery(new_id(), new_id(), new_id())
    ports.deliveries.add_deliveries([delivery])
    lease = T0 + timedelta(seconds=30)
    assert ports.deliveries.begin_attempt(delivery, T0, lease) == 1
    assert ports.deliveries.begin_attempt(delivery, T0, lease) is None  # claimed already
    assert ports.deliveries.end_attempt(delivery.delivery_id, 1, T0 + timedelta(seconds=2), "503")
    read = ports.deliveries.get_delivery(delivery.delivery_id)
    assert read is not None and read.in_flight is None and read.retry_at == T0 + timedelta(seconds=2)
    assert ports.deliveries.begin_attempt(delivery, T0, lease) is None  # as read before the first attempt
    assert ports.deliveries.begin_attempt(read, T0, lease) == 2
    assert not ports.deliveries.settle_failed(delivery.delivery_id, StatusEntry(MessageStatus.FAILED, T0, "x"))
    event = DomainEvent("DeliveryStatusChanged", {"status": "FAILED"}, event_id=new_id())
    assert ports.deliveries.settle_failed(
        delivery.delivery_id, StatusEntry(MessageStatus.FAILED, T0, "gave up"), attempt=2, events=[event]
    )
    failed = ports.deliveries.get_delivery(delivery.delivery_id)
    assert failed is not None
    assert (failed.status, failed.error, failed.in_flight) == (MessageStatus.FAILED, "gave up", None)
    assert [e.event_id for e in failed.unpublished_events] == [event.event_id]
    # a late receipt keeps the platform id (status webhooks still find it) and the status
    assert not ports.deliveries.record_sent(delivery.delivery_id, 2, StatusEntry(MessageStatus.SENT, T0), "wamid.late")
    late = ports.deliveries.get_delivery(delivery.delivery_id)
    assert late is not None and (late.status, late.platform_message_id) == (MessageStatus.FAILED, "wamid.late")
    # postponing a dependency failure counts the trouble from its first time
    other = a_delivery(new_id(), new_id(), new_id())
    ports.deliveries.add_deliveries([other])
    ports.deliveries.postpone(other.delivery_id, T0 + timedelta(seconds=2), T0, "KMS down")
    ports.deliveries.postpone(other.delivery_id, T0 + timedelta(seconds=6), T0 + timedelta(seconds=2), "KMS down")
    waited = ports.deliveries.get_delivery(other.delivery_id)
    assert waited is not None and (waited.troubled_since, waited.troubles) == (T0, 2)


def test_status_reports_on_a_delivery_move_forward_only_once_each(ports: Ports) -> None:
    delivery = a_delivery(new_id(), new_id(), new_id(), status=MessageStatus.SENT)
    ports.deliveries.add_deliveries([delivery])
    read = StatusEntry(MessageStatus.READ, T0 + timedelta(seconds=5))
    event = DomainEvent("DeliveryStatusChanged", {"status": "READ"}, event_id=new_id())
    assert ports.deliveries.append_status(delivery.delivery_id, read, dedupe_key="r1", events=[event])
    assert not ports.deliveries.append_status(delivery.delivery_id, read, dedupe_key="r1")
    late = StatusEntry(MessageStatus.DELIVERED, T0 + timedelta(seconds=4))
    assert not ports.deliveries.append_status(delivery.delivery_id, late, dedupe_key="d1")
    stored = ports.deliveries.get_delivery(delivery.delivery_id)
    assert stored is not None and stored.status is MessageStatus.READ
    assert [h.status for h in stored.history] == [MessageStatus.PENDING, MessageStatus.READ, MessageStatus.DELIVERED]
    assert [e.event_id for e in stored.unpublished_events] == [event.event_id]


def test_stale_pending_deliveries_give_one_job_per_lane_at_its_lowest_sequence(ports: Ports) -> None:
    era = datetime(1975, 1, 1, tzinfo=UTC)  # before every other test's deliveries
    conversation, first, second = new_id(), new_id(), new_id()
    for sequence in (2, 1, 3):
        ports.deliveries.add_deliveries([a_delivery(new_id(), conversation, first, sequence, at=era)])
    ports.deliveries.add_deliveries([a_delivery(new_id(), conversation, second, 5, at=era)])
    ports.deliveries.add_deliveries([a_delivery(new_id(), conversation, second, 4, at=era, status=MessageStatus.SENT)])
    jobs = [
        j for j in ports.deliveries.stale_pending(era + timedelta(seconds=1), 100) if j.conversation_id == conversation
    ]
    assert sorted((j.user_id or "", j.sequence) for j in jobs) == sorted([(first, 1), (second, 5)])
    assert ports.deliveries.stale_pending(era, 100) == []


def test_lane_marks_and_counters(ports: Ports) -> None:
    conversation, a, b = new_id(), new_id(), new_id()
    assert ports.deliveries.lane_counter(conversation, a) is None
    ports.deliveries.fan_into_lanes(conversation, [a, b], 3)
    ports.deliveries.fan_into_lanes(conversation, [a], 2)  # never lowered
    assert (ports.deliveries.lane_counter(conversation, a), ports.deliveries.lane_counter(conversation, b)) == (3, 3)
    assert sorted(ports.deliveries.lanes_to_mark(conversation, [a, b], T0)) == sorted([a, b])
    ports.deliveries.mark_lanes(conversation, [a, b], T0 + timedelta(microseconds=1500))
    assert ports.deliveries.lanes_to_mark(conversation, [a, b], T0) == []
    # a mark older than `stale_before` is taken up again
    assert sorted(ports.deliveries.lanes_to_mark(conversation, [a, b], T0 + timedelta(seconds=1))) == sorted([a, b])
    # the run unmarks its lane only while the counter it read is unmoved
    ports.deliveries.fan_into_lanes(conversation, [a], 4)
    assert not ports.deliveries.finish_lane(conversation, a, 3)
    assert ports.deliveries.lanes_to_mark(conversation, [a], T0) == []
    assert ports.deliveries.finish_lane(conversation, a, 4)
    assert ports.deliveries.lanes_to_mark(conversation, [a, b], T0) == [a]
    ports.deliveries.release_lanes(conversation, [b])
    assert sorted(ports.deliveries.lanes_to_mark(conversation, [a, b], T0)) == sorted([a, b])


def test_events_kept_on_deliveries_are_pending_until_published(ports: Ports) -> None:
    message_id = new_id()
    event = DomainEvent("DeliveryStatusChanged", {"status": "FAILED", "message_id": message_id}, event_id=new_id())
    delivery = dataclasses.replace(
        a_delivery(message_id, new_id(), new_id(), status=MessageStatus.FAILED), unpublished_events=(event,)
    )
    ports.deliveries.add_deliveries([delivery])
    kept = [(i, e) for i, e in ports.outbox.pending(1000) if e.event_id == event.event_id]
    assert [(e.delivery_id, e.message_id, e.detail_type) for _, e in kept] == [
        (delivery.delivery_id, message_id, "DeliveryStatusChanged")
    ]
    ports.outbox.published([e for _, e in kept])
    assert [e for _, e in ports.outbox.pending(1000) if e.event_id == event.event_id] == []
    stored = ports.deliveries.get_delivery(delivery.delivery_id)
    assert stored is not None and stored.unpublished_events == ()


def test_identities_of_many_users_in_one_read(ports: Ports) -> None:
    one, two, none = a_user(), a_user(), a_user()
    for user in (one, two, none):
        ports.users.add_user(user, audit(entity_id=user.user_id))
    for identity in (
        an_identity(one.user_id, Platform.TELEGRAM),
        an_identity(one.user_id, Platform.WHATSAPP, verified=True),
        an_identity(two.user_id, Platform.INSTAGRAM),
    ):
        ports.users.add_identity(identity, audit())
    found = ports.users.identities_of([one.user_id, two.user_id, none.user_id, "not-a-uuid"])
    assert sorted(found) == sorted([one.user_id, two.user_id])
    assert [i.platform for i in found[one.user_id]] == [Platform.WHATSAPP, Platform.TELEGRAM]  # verified first
    assert [i.platform for i in found[two.user_id]] == [Platform.INSTAGRAM]


def test_a_fanned_out_message_leaves_its_conversations_run_and_moves_by_its_aggregate(ports: Ports) -> None:
    conversation = a_conversation(new_id(), new_id(), new_id(), kind=ConversationType.GROUP)
    ports.conversations.add_conversation(conversation)
    cid = conversation.conversation_id
    stored = []
    for n in range(13):
        message = dataclasses.replace(a_message(cid, at=T0 + timedelta(seconds=n)), recipients=("a", "b"))
        added = ports.messages.add_message(message)
        assert added is not None
        stored.append(added)
    assert ports.messages.get_messages([stored[0].message_id, "missing"]) == {stored[0].message_id: stored[0]}
    assert stored[0].recipients == ("a", "b")
    # the first eleven fanned out: the run's window skips them and still holds the next ones
    for message in stored[:11]:
        assert ports.messages.mark_fanned_out(message.message_id)
    assert [m.sequence for m in ports.messages.unsettled(cid, 10)] == [12, 13]
    # a fanned-out message is not settled whole, nor swept as a message
    failed = StatusEntry(MessageStatus.FAILED, T0, "dead-lettered")
    assert not ports.messages.settle_failed(stored[0].message_id, failed)
    swept = {j.message_id for j in ports.messages.stale_pending(T0 + timedelta(hours=1), 10_000)}
    assert stored[0].message_id not in swept and stored[12].message_id in swept
    # its aggregate moves forward only, with its history and its event
    event = DomainEvent("MessageSent", {"status": "SENT"}, event_id=new_id())
    sent = StatusEntry(MessageStatus.SENT, T0 + timedelta(seconds=30))
    assert ports.messages.advance_aggregate(stored[0].message_id, sent, events=[event])
    assert not ports.messages.advance_aggregate(stored[0].message_id, sent)
    assert not ports.messages.advance_aggregate(stored[0].message_id, StatusEntry(MessageStatus.PENDING, T0))
    moved = ports.messages.get_message(stored[0].message_id)
    assert moved is not None and moved.status is MessageStatus.SENT and moved.fanned_out
    assert [h.status for h in moved.history] == [MessageStatus.PENDING, MessageStatus.SENT]
    assert [e.event_id for e in moved.unpublished_events] == [event.event_id]
    assert not ports.messages.mark_fanned_out(stored[0].message_id)  # no longer PENDING
