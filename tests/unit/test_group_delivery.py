"""GROUP messages over in-memory ports: fan-out into one delivery per recipient (routes and why none), the
recipients' lanes (order, isolation, the lane marks of route_jobs steps 7-10), the message's aggregate status,
status webhooks on deliveries, events per delivery and per aggregate move, the sweeper and the dead-letter
consumer for lanes."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest

from chat4all.domain.commands import CreateConversation, CreateUser, LinkIdentity, SendMessage
from chat4all.domain.errors import ChannelRejectedError, ChannelRetryableError, ForbiddenError
from chat4all.domain.models import (
    ChannelConfig,
    ConversationType,
    Delivery,
    MessageStatus,
    Platform,
    StatusEntry,
    StatusReport,
    UserType,
)
from chat4all.services import route_jobs
from chat4all.services.conversations import ConversationService
from chat4all.services.delivery import DeliveryService
from chat4all.services.notifications import EventBuffer, EventRelay, delivery_event
from chat4all.services.recovery import RecoveryService
from chat4all.services.statuses import StatusService
from tests.fakes.in_memory import InMemoryDeliveryStore, InMemoryEventOutbox, InMemoryEventPublisher
from tests.unit.test_services import ADMIN, ScriptedConnector, World

if TYPE_CHECKING:
    from chat4all.domain.models import Message
    from chat4all.services.delivery import ConversationProgress


class GroupWorld(World):
    """World's agent and WhatsApp customer, plus a customer on Telegram, one on Instagram and one on no platform,
    in a GROUP on the WhatsApp line; a connector per platform."""

    def __post_init__(self) -> None:
        super().__post_init__()
        now = datetime.now(UTC)
        for channel_id, platform in (("ch-tg", Platform.TELEGRAM), ("ch-ig", Platform.INSTAGRAM)):
            config = ChannelConfig(channel_id, platform, channel_id, {"token": channel_id}, True, now, now)
            self.channels.add_channel(config, None)  # type: ignore[arg-type]
        self.on_telegram = self._customer("Tereza", Platform.TELEGRAM, "4242")
        self.on_instagram = self._customer("Iris", Platform.INSTAGRAM, "1789")
        self.nowhere = self._customer("Nina", None, "")
        self.on_whatsapp = self.customer.user_id
        self.connectors = {
            Platform.WHATSAPP: self.connector,
            Platform.TELEGRAM: ScriptedConnector(),
            Platform.INSTAGRAM: ScriptedConnector(),
        }
        self.deliveries = InMemoryDeliveryStore()
        self.group = ConversationService(self.conversations, self.messages, self.users, self.channels).create(
            CreateConversation(
                ConversationType.GROUP,
                [self.agent.user_id, self.on_whatsapp, self.on_telegram, self.on_instagram, self.nowhere],
                Platform.WHATSAPP,
                "ch-1",
            ),
            ADMIN,
        )
        self.delivery = DeliveryService(
            self.messages,
            self.conversations,
            self.users,
            self.channels,
            self.connectors,  # type: ignore[arg-type]
            self.events,
            deliveries=self.deliveries,
            queue=self.queue,
            clock=lambda: self.now,
            sleep=self.slept.append,
        )
        self.statuses = StatusService(self.messages, self.events, self.conversations, self.deliveries)

    def _customer(self, name: str, platform: Platform | None, platform_user_id: str) -> str:
        user = self.identity.create_user(CreateUser(name, UserType.CUSTOMER), ADMIN)
        if platform is not None:
            self.identity.link_identity(LinkIdentity(user.user_id, platform, platform_user_id), ADMIN)
        return user.user_id

    def post(self, content: str) -> str:
        command = SendMessage(str(uuid.uuid4()), self.group.conversation_id, self.agent.user_id, content)
        return self.message_service.accept(command, ADMIN).message_id

    def route(self) -> ConversationProgress:
        return self.delivery.deliver_conversation(self.group.conversation_id, self.now + timedelta(seconds=30))

    def lane(self, user_id: str) -> ConversationProgress:
        return self.delivery.deliver_lane(self.group.conversation_id, user_id, self.now + timedelta(seconds=30))

    def stored(self, message_id: str) -> Message:
        message = self.messages.get_message(message_id)
        assert message is not None
        return message

    def delivery_of(self, message_id: str, user_id: str) -> Delivery:
        found = self.deliveries.get_delivery(f"{message_id}:{user_id}")
        assert found is not None
        return found

    def texts(self, platform: Platform) -> list[str]:
        return [m.text for m in self.connectors[platform].sent]


@pytest.fixture
def group() -> GroupWorld:
    return GroupWorld()


def test_a_group_message_keeps_its_recipients_from_the_transaction_that_accepts_it(group: GroupWorld) -> None:
    message_id = group.post("hello")
    recipients = group.stored(message_id).recipients
    assert recipients is not None
    assert sorted(recipients) == sorted([group.on_whatsapp, group.on_telegram, group.on_instagram, group.nowhere])
    # someone who joins later is not a recipient of it
    assert group.agent.user_id not in recipients


def test_a_non_participant_cannot_send_to_a_group_and_nothing_is_stored(group: GroupWorld) -> None:
    outsider = group.identity.create_user(CreateUser("Out", UserType.AGENT), ADMIN)
    command = SendMessage(str(uuid.uuid4()), group.group.conversation_id, outsider.user_id, "hi")
    with pytest.raises(ForbiddenError):
        group.message_service.accept(command, ADMIN)
    assert group.messages.messages == {}
    assert group.group.conversation_id not in group.messages.route_marked


def test_fan_out_makes_one_delivery_per_recipient_on_their_route_in_few_round_trips(group: GroupWorld) -> None:
    message_id = group.post("hello")
    progress = group.route()
    assert progress.retry_after_seconds is None
    # one identity read for every recipient, one write of the deliveries, the lanes raised, read and marked once
    assert group.users.identity_reads == 1
    assert group.deliveries.writes == ["add_deliveries", "fan_into_lanes", "lanes_to_mark", "mark_lanes"]
    routes = {
        d.user_id: (d.status, d.platform, d.channel_id, d.address) for d in group.deliveries.deliveries_of(message_id)
    }
    assert routes == {
        group.on_whatsapp: (MessageStatus.PENDING, Platform.WHATSAPP, "ch-1", "5511999990000"),
        group.on_telegram: (MessageStatus.PENDING, Platform.TELEGRAM, "ch-tg", "4242"),
        group.on_instagram: (MessageStatus.PENDING, Platform.INSTAGRAM, "ch-ig", "1789"),
        group.nowhere: (MessageStatus.FAILED, None, None, None),
    }
    assert "has no identity" in (group.delivery_of(message_id, group.nowhere).error or "")
    # the three lanes with work got a job each, in one batch; nothing was sent by the conversation's run
    [batch] = group.queue.lane_batches
    assert sorted((j.user_id or "", j.group_id) for j in batch) == sorted(
        (u, f"{group.group.conversation_id}:{u}") for u in (group.on_whatsapp, group.on_telegram, group.on_instagram)
    )
    assert all(c.sent == [] for c in group.connectors.values())  # type: ignore[attr-defined]
    # the message left its conversation's run, still PENDING: its status is its deliveries' aggregate
    message = group.stored(message_id)
    assert (message.fanned_out, message.status) == (True, MessageStatus.PENDING)
    assert group.messages.unsettled(group.group.conversation_id, 10) == []
    # the unreachable delivery's event says who it was for, and was published with the run's events
    failed = [d for _, t, d in group.events.events if t == "DeliveryStatusChanged"]
    assert [(d["user_id"], d["status"], d["message_id"]) for d in failed] == [(group.nowhere, "FAILED", message_id)]
    # a fan-out done again (a crashed run's job comes back) stores nothing twice and enqueues nothing more
    group.messages._replace(message_id, fanned_out=False)
    group.route()
    assert len(group.deliveries.deliveries_of(message_id)) == 4
    assert len(group.queue.lane_batches) == 1


def test_each_recipient_without_a_route_fails_with_its_reason_and_the_others_go_on(group: GroupWorld) -> None:
    # Telegram's only channel is disabled, Instagram's credentials no longer decrypt
    tg = group.channels.channels["ch-tg"]
    group.channels.channels["ch-tg"] = dataclasses.replace(tg, enabled=False)
    group.channels.unreadable.add("ch-ig")
    # a customer on WhatsApp and Telegram goes through the conversation's WhatsApp line
    group.identity.link_identity(LinkIdentity(group.on_telegram, Platform.WHATSAPP, "5511888880000"), ADMIN)
    message_id = group.post("hello")
    group.route()
    by_user = {d.user_id: d for d in group.deliveries.deliveries_of(message_id)}
    assert (by_user[group.on_telegram].channel_id, by_user[group.on_telegram].address) == ("ch-1", "5511888880000")
    assert by_user[group.on_instagram].status is MessageStatus.FAILED
    assert "cannot be decrypted" in (by_user[group.on_instagram].error or "")
    assert by_user[group.on_whatsapp].status is MessageStatus.PENDING
    # with Telegram only: no single enabled channel
    group.identity.link_identity(LinkIdentity(group.nowhere, Platform.TELEGRAM, "777"), ADMIN)
    second = group.post("again")
    group.route()
    assert "no single enabled TELEGRAM channel" in (group.delivery_of(second, group.nowhere).error or "")


def test_lanes_send_in_sequence_order_and_the_message_ends_sent(group: GroupWorld) -> None:
    first, second = group.post("m1"), group.post("m2")
    group.route()
    for user in (group.on_whatsapp, group.on_telegram, group.on_instagram):
        progress = group.lane(user)
        assert progress.retry_after_seconds is None
        assert [o.user_id for o in progress.outcomes] == [user, user]
    for platform in (Platform.WHATSAPP, Platform.TELEGRAM, Platform.INSTAGRAM):
        assert group.texts(platform) == ["m1", "m2"]
    for message_id in (first, second):
        message = group.stored(message_id)
        assert message.status is MessageStatus.SENT
        assert [h.status for h in message.history] == [MessageStatus.PENDING, MessageStatus.SENT]
    # every lane ends unmarked; nothing is sent again by another job of a lane
    assert group.deliveries.marked == {}
    assert group.lane(group.on_whatsapp).outcomes == []
    assert group.texts(Platform.WHATSAPP) == ["m1", "m2"]
    # one DeliveryStatusChanged per delivery move, one MessageSent per message (with its aggregate move)
    kinds = [(t, d.get("user_id")) for _, t, d in group.events.events if t != "MessageAccepted"]
    assert kinds.count(("MessageSent", None)) == 2
    assert sorted(u for t, u in kinds if t == "DeliveryStatusChanged") == sorted(
        [group.nowhere] * 2 + [group.on_whatsapp, group.on_telegram, group.on_instagram] * 2
    )


def test_a_lane_waiting_out_retries_holds_back_only_its_own_recipient(group: GroupWorld) -> None:
    group.connector.script = [ChannelRetryableError("503"), ChannelRetryableError("503")]
    first, second = group.post("m1"), group.post("m2")
    group.route()
    # WhatsApp answers 503: its lane waits (its job comes back after the back-off), m2 is not sent before m1
    assert group.lane(group.on_whatsapp).retry_after_seconds == 2
    assert group.texts(Platform.WHATSAPP) == ["m1"]
    # the other recipients get both at once
    group.lane(group.on_telegram)
    group.lane(group.on_instagram)
    assert group.texts(Platform.TELEGRAM) == group.texts(Platform.INSTAGRAM) == ["m1", "m2"]
    assert group.stored(first).status is MessageStatus.PENDING  # one delivery that has not failed is PENDING
    group.now += timedelta(seconds=2)
    assert group.lane(group.on_whatsapp).retry_after_seconds == 4
    group.now += timedelta(seconds=4)
    assert group.lane(group.on_whatsapp).retry_after_seconds is None
    assert group.texts(Platform.WHATSAPP) == ["m1", "m1", "m1", "m2"]
    assert group.stored(first).status is group.stored(second).status is MessageStatus.SENT


def test_a_delivery_given_up_after_three_attempts_is_dead_lettered_as_its_lane_and_the_rest_is_sent(
    group: GroupWorld,
) -> None:
    group.connector.script = [ChannelRetryableError("503")] * 3
    first = group.post("m1")
    group.route()
    for delay in (2, 4):
        assert group.lane(group.on_whatsapp).retry_after_seconds == delay
        group.now += timedelta(seconds=delay)
    [outcome] = group.lane(group.on_whatsapp).outcomes
    assert (outcome.status, outcome.dead_letter, outcome.user_id) == (MessageStatus.FAILED, True, group.on_whatsapp)
    for user in (group.on_telegram, group.on_instagram):
        group.lane(user)
    # FAILED deliveries do not count: every other delivery is SENT
    assert group.stored(first).status is MessageStatus.SENT


def test_the_message_fails_only_when_every_delivery_failed(group: GroupWorld) -> None:
    refusal = ChannelRejectedError("400 recipient not allowed", status_code=400)
    for connector in group.connectors.values():
        connector.script = [refusal]  # type: ignore[attr-defined]
    message_id = group.post("m1")
    group.route()
    group.lane(group.on_whatsapp)
    group.lane(group.on_telegram)
    assert group.stored(message_id).status is MessageStatus.PENDING
    group.lane(group.on_instagram)
    message = group.stored(message_id)
    assert message.status is MessageStatus.FAILED
    assert message.error == "every delivery failed (4)"
    assert [t for _, t, d in group.events.events if d.get("user_id") is None][-1] == "MessageFailed"


def test_status_webhooks_move_their_delivery_forward_only_and_the_aggregate_follows(group: GroupWorld) -> None:
    message_id = group.post("m1")
    group.route()
    for user in (group.on_whatsapp, group.on_telegram, group.on_instagram):
        group.lane(user)
    receipts = {u: group.delivery_of(message_id, u) for u in (group.on_whatsapp, group.on_telegram, group.on_instagram)}
    at = datetime.now(UTC)

    def report(user: str, status: MessageStatus, seconds: int = 0) -> StatusReport:
        delivery = receipts[user]
        assert delivery.platform is not None and delivery.platform_message_id is not None
        return StatusReport(
            delivery.platform,
            delivery.platform_message_id,
            status,
            at + timedelta(seconds=seconds),
            None,
            delivery.channel_id,
        )

    # Telegram's report is looked for among Telegram's channel's deliveries, not WhatsApp's same-named id
    read = report(group.on_telegram, MessageStatus.READ)
    assert group.statuses.apply(read)
    assert not group.statuses.apply(read)  # a replay changes nothing
    assert not group.statuses.apply(report(group.on_telegram, MessageStatus.DELIVERED, 1))  # late: history only
    telegram = group.delivery_of(message_id, group.on_telegram)
    assert telegram.status is MessageStatus.READ
    assert [h.status for h in telegram.history][-2:] == [MessageStatus.READ, MessageStatus.DELIVERED]
    assert group.delivery_of(message_id, group.on_whatsapp).status is MessageStatus.SENT
    assert group.stored(message_id).status is MessageStatus.SENT
    # the others delivered: the message is DELIVERED (the furthest state all of them reached)
    assert group.statuses.apply(report(group.on_whatsapp, MessageStatus.DELIVERED))
    assert group.stored(message_id).status is MessageStatus.SENT
    assert group.statuses.apply(report(group.on_instagram, MessageStatus.READ))
    message = group.stored(message_id)
    assert message.status is MessageStatus.DELIVERED
    assert [h.status for h in message.history] == [MessageStatus.PENDING, MessageStatus.SENT, MessageStatus.DELIVERED]
    moves = [(t, d["status"], d.get("user_id")) for _, t, d in group.events.events]
    assert moves[-2:] == [
        ("DeliveryStatusChanged", "READ", group.on_instagram),
        ("MessageStatusChanged", "DELIVERED", None),
    ]


def test_a_fan_out_whose_lane_jobs_are_refused_is_done_again(group: GroupWorld) -> None:
    group.queue.refuse_lanes = True
    message_id = group.post("m1")
    assert group.route().retry_after_seconds == 2  # the conversation's job comes back
    assert not group.stored(message_id).fanned_out
    assert group.deliveries.marked == {}  # the refused lanes are unmarked again: the next fan-out enqueues
    group.queue.refuse_lanes = False
    group.now += timedelta(seconds=2)
    group.route()
    assert group.stored(message_id).fanned_out
    assert len(group.queue.lane_batches) == 1
    assert len(group.deliveries.deliveries_of(message_id)) == 4


def test_a_lane_is_unmarked_only_when_nothing_was_fanned_into_it_since_its_run_began(group: GroupWorld) -> None:
    first = group.post("m1")
    group.route()
    conversation = group.group.conversation_id
    lane = route_jobs.lane_deliveries(conversation, group.on_telegram, group.deliveries, group.messages)
    delivery, message = next(lane)
    assert (delivery.message_id, message is not None) == (first, True)
    group.deliveries.settle_failed(delivery.delivery_id, StatusEntry(MessageStatus.FAILED, group.now, "as sent"))
    # WHILE the run is on, a second message is fanned out: the lane is still marked, so no job is enqueued
    second = group.post("m2")
    group.route()
    assert len(group.queue.lane_batches) == 1
    # THEN the run's unmark finds the counter moved, looks again, and sends the second one itself
    assert [d.message_id for d, _ in lane] == [second]
    assert (conversation, group.on_telegram) not in group.deliveries.marked
    # a stale mark (its job lost) gets the next fan-out a job of its own, as the lane the run unmarked does
    key = (conversation, group.on_whatsapp)
    group.deliveries.marked[key] = group.now - route_jobs.ROUTE_JOB_STALE - timedelta(seconds=1)
    group.post("m3")
    group.route()
    assert sorted(j.user_id or "" for j in group.queue.lane_batches[-1]) == sorted(
        [group.on_whatsapp, group.on_telegram]
    )


def test_the_sweeper_takes_up_each_stale_lane_once_and_not_fanned_out_messages(group: GroupWorld) -> None:
    group.post("m1")
    group.post("m2")
    group.route()
    recovery = RecoveryService(
        group.messages,
        group.queue,
        group.statuses,
        group.events,
        clock=lambda: group.now + timedelta(minutes=5),
        deliveries=group.deliveries,
    )
    report = recovery.sweep()
    # one job per lane with PENDING deliveries (its lowest sequence); the fanned-out messages are not swept
    assert report.found == report.requeued == 3
    [(_, jobs)] = group.queue.rounds
    assert sorted(j.user_id or "" for j in jobs) == sorted([group.on_whatsapp, group.on_telegram, group.on_instagram])
    assert {j.sequence for j in jobs} == {1}


def test_a_dead_lettered_lane_record_fails_its_unsent_delivery_and_gets_a_fresh_lane_job(group: GroupWorld) -> None:
    message_id = group.post("m1")
    group.route()
    for user in (group.on_telegram, group.on_instagram):
        group.lane(user)
    recovery = RecoveryService(group.messages, group.queue, group.statuses, group.events, deliveries=group.deliveries)
    conversation = group.group.conversation_id
    assert recovery.settle_dead_route(message_id, conversation, "dead-lettered: x", user_id=group.on_whatsapp)
    assert group.delivery_of(message_id, group.on_whatsapp).status is MessageStatus.FAILED
    assert group.stored(message_id).status is MessageStatus.SENT  # the others were sent
    assert group.queue.lane_jobs[-1] == (message_id, conversation, group.on_whatsapp)
    # a sent delivery is left alone; the message itself is never settled whole once fanned out
    assert not recovery.settle_dead_route(message_id, conversation, "dead-lettered: x", user_id=group.on_telegram)
    assert not recovery.settle_dead_route(message_id, conversation, "dead-lettered: x")
    assert group.delivery_of(message_id, group.on_telegram).status is MessageStatus.SENT


def test_events_kept_on_deliveries_are_forgotten_once_published_and_relayed_when_not() -> None:
    group = GroupWorld()
    outbox = InMemoryEventOutbox(group.messages, group.deliveries)
    bus = InMemoryEventPublisher()
    buffer = EventBuffer(bus, outbox)
    group.delivery.events = buffer
    message_id = group.post("m1")
    with buffer.unit_of_work():
        group.route()
    # the unreachable recipient's DeliveryStatusChanged went out and is no longer kept on its delivery
    assert "DeliveryStatusChanged" in [t for _, t, _ in bus.events]
    assert group.delivery_of(message_id, group.nowhere).unpublished_events == ()
    # one kept and never published (the process died): the relay finds it on its delivery and forgets it there
    delivery = group.delivery_of(message_id, group.on_telegram)
    message = group.stored(message_id)
    event = delivery_event(delivery, message, MessageStatus.FAILED, at=group.now, reason="x")
    group.deliveries.settle_failed(
        delivery.delivery_id, StatusEntry(MessageStatus.FAILED, group.now, "x"), events=[event]
    )
    [(outbox_id, kept)] = outbox.pending(10)
    assert outbox_id == f"delivery:{delivery.delivery_id}/{event.event_id}"
    assert (kept.detail_type, kept.detail["user_id"], kept.detail["channel_id"]) == (
        "DeliveryStatusChanged",
        group.on_telegram,
        "ch-tg",
    )
    assert EventRelay(bus, outbox).publish_pending_events() == 1
    assert group.delivery_of(message_id, group.on_telegram).unpublished_events == ()
