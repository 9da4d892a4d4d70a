"""Services over in-memory ports: acceptance rules, delivery at most once with bounded retries, statuses."""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest

from chat4all.domain.commands import CreateConversation, CreateUser, LinkIdentity, SendMessage
from chat4all.domain.errors import (
    ChannelCredentialsRejectedError,
    ChannelOutcomeUnknownError,
    ChannelRateLimitedError,
    ChannelRecipientRejectedError,
    ChannelRejectedError,
    ChannelRetryableError,
    ConflictError,
    DependencyUnavailableError,
    ForbiddenError,
    StatusTargetMissingError,
    ValidationFailedError,
)
from chat4all.domain.models import (
    BreakerState,
    ChannelConfig,
    ConversationType,
    Direction,
    DomainEvent,
    InboundMessage,
    Message,
    MessageStatus,
    Platform,
    Principal,
    ProviderReceipt,
    Role,
    StatusEntry,
    StatusReport,
    User,
    UserType,
)
from chat4all.ports import ChannelRate, Passage
from chat4all.services.conversations import ConversationService
from chat4all.services.delivery import ConversationProgress, DeliveryService
from chat4all.services.identity import IdentityService
from chat4all.services.inbound import InboundService
from chat4all.services.messages import MessageService
from chat4all.services.notifications import EventBuffer, EventRelay
from chat4all.services.statuses import StatusService
from tests.fakes.in_memory import (
    InMemoryApiKeyRepository,
    InMemoryChannelRepository,
    InMemoryConversationStore,
    InMemoryEventOutbox,
    InMemoryEventPublisher,
    InMemoryMessageStore,
    InMemoryOutboundQueue,
    InMemoryUserRepository,
)

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from chat4all.domain.models import OutboundMessage

ADMIN = Principal("admin-key", Role.ADMIN)


@dataclass
class ScriptedConnector:
    """A connector whose answers are scripted: an exception to raise, or None to succeed."""

    script: list[Exception | None] = field(default_factory=list)
    sent: list[OutboundMessage] = field(default_factory=list)

    def send(self, credentials: Mapping[str, str], message: OutboundMessage) -> ProviderReceipt:
        self.sent.append(message)
        outcome = self.script.pop(0) if self.script else None
        if outcome is not None:
            raise outcome
        return ProviderReceipt(f"wamid.{len(self.sent)}")


@dataclass
class World:
    users: InMemoryUserRepository = field(default_factory=InMemoryUserRepository)
    channels: InMemoryChannelRepository = field(default_factory=InMemoryChannelRepository)
    conversations: InMemoryConversationStore = field(default_factory=InMemoryConversationStore)
    messages: InMemoryMessageStore = field(init=False)
    queue: InMemoryOutboundQueue = field(default_factory=InMemoryOutboundQueue)
    events: InMemoryEventPublisher = field(default_factory=InMemoryEventPublisher)
    connector: ScriptedConnector = field(default_factory=ScriptedConnector)

    def __post_init__(self) -> None:
        self.messages = InMemoryMessageStore(self.conversations)
        self.now = datetime(2026, 1, 1, 12, tzinfo=UTC)
        self.slept: list[float] = []
        self.identity = IdentityService(self.users, self.channels, InMemoryApiKeyRepository())
        self.agent = self.identity.create_user(CreateUser("Ana", UserType.AGENT), ADMIN)
        self.customer = self.identity.create_user(CreateUser("Carl", UserType.CUSTOMER), ADMIN)
        self.identity.link_identity(LinkIdentity(self.customer.user_id, Platform.WHATSAPP, "5511999990000"), ADMIN)
        now = datetime.now(UTC)
        self.channels.add_channel(
            ChannelConfig("ch-1", Platform.WHATSAPP, "line", {"access_token": "t"}, True, now, now),
            None,  # type: ignore[arg-type]
        )
        self.conversation = ConversationService(self.conversations, self.messages, self.users, self.channels).create(
            CreateConversation(
                ConversationType.ONE_TO_ONE, [self.agent.user_id, self.customer.user_id], Platform.WHATSAPP
            ),
            ADMIN,
        )
        self.message_service = MessageService(self.messages, self.conversations, self.users, self.queue)
        self.delivery = DeliveryService(
            self.messages,
            self.conversations,
            self.users,
            self.channels,
            {Platform.WHATSAPP: self.connector},  # type: ignore[dict-item]
            self.events,
            clock=lambda: self.now,
            sleep=self.slept.append,
        )

    def delivered_status(self, message_id: str) -> MessageStatus:
        """Run delivery for the message's conversation; the message's status afterwards."""
        message = self.messages.get_message(message_id)
        assert message is not None
        self.delivery.deliver_conversation(message.conversation_id, self.now + timedelta(seconds=30))
        stored = self.messages.get_message(message_id)
        assert stored is not None
        return stored.status

    def send(self, content: str = "hello", message_id: str | None = None, sender: str | None = None) -> SendMessage:
        return SendMessage(
            message_id or str(uuid.uuid4()), self.conversation.conversation_id, sender or self.agent.user_id, content
        )


@pytest.fixture
def world() -> World:
    return World()


def test_accept_stores_pending_with_next_sequence_and_enqueues(world: World) -> None:
    first = world.message_service.accept(world.send("one"), ADMIN)
    second = world.message_service.accept(world.send("two"), ADMIN)
    assert (first.sequence, second.sequence) == (1, 2)
    assert world.messages.get_message(first.message_id).status is MessageStatus.PENDING  # type: ignore[union-attr]
    # one job for the conversation: the run it starts sends the second message too
    assert world.queue.enqueued == [(first.message_id, world.conversation.conversation_id)]
    # each MessageAccepted is kept on its message, for route to publish with the events of its batch
    assert [e.detail_type for e in world.messages.kept_events] == ["MessageAccepted", "MessageAccepted"]
    assert world.events.events == []


def test_replay_is_the_same_answer_and_another_body_is_conflict(world: World) -> None:
    command = world.send("same")
    assert world.message_service.accept(command, ADMIN) == world.message_service.accept(command, ADMIN)
    assert len(world.messages.messages) == 1
    with pytest.raises(ConflictError):
        world.message_service.accept(
            SendMessage(command.message_id, command.conversation_id, command.sender_id, "other"), ADMIN
        )


def test_non_participant_and_unknown_conversation_store_nothing(world: World) -> None:
    outsider = world.identity.create_user(CreateUser("Out", UserType.AGENT), ADMIN)
    with pytest.raises(ForbiddenError):
        world.message_service.accept(world.send(sender=outsider.user_id), ADMIN)
    with pytest.raises(ValidationFailedError):
        world.message_service.accept(SendMessage(str(uuid.uuid4()), str(uuid.uuid4()), world.agent.user_id, "x"), ADMIN)
    assert world.messages.messages == {}
    assert world.queue.enqueued == []


def test_agent_cannot_send_as_someone_else(world: World) -> None:
    agent_key = Principal("k", Role.AGENT, world.agent.user_id)
    with pytest.raises(ForbiddenError):
        world.message_service.accept(world.send(sender=world.customer.user_id), agent_key)


class CountingUsers(InMemoryUserRepository):
    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def get_user(self, user_id: str) -> User | None:
        self.reads.append(user_id)
        return super().get_user(user_id)


def test_the_sender_is_read_only_when_authentication_did_not_already_find_it_active() -> None:
    world = World(users=CountingUsers())
    users = world.users
    assert isinstance(users, CountingUsers)
    users.reads.clear()
    world.message_service.accept(world.send("as itself"), Principal("k", Role.AGENT, world.agent.user_id))
    assert users.reads == []  # the authenticated caller is this active user
    world.message_service.accept(world.send("by an admin"), ADMIN)
    assert users.reads == [world.agent.user_id]
    # an admin sending as a deactivated participant is refused
    users.users[world.agent.user_id] = dataclasses.replace(users.users[world.agent.user_id], active=False)
    with pytest.raises(ValidationFailedError, match="unknown sender"):
        world.message_service.accept(world.send("as a deactivated user"), ADMIN)


def run(world: World) -> ConversationProgress:
    """One route run for the world's conversation, with a lease of 30 s from the world's clock."""
    return world.delivery.deliver_conversation(world.conversation.conversation_id, world.now + timedelta(seconds=30))


def test_delivery_records_sent_and_never_sends_twice(world: World) -> None:
    accepted = world.message_service.accept(world.send("hi"), ADMIN)
    progress = run(world)
    assert [(o.message_id, o.status) for o in progress.outcomes] == [(accepted.message_id, MessageStatus.SENT)]
    assert progress.retry_after_seconds is None
    assert run(world).outcomes == []
    assert len(world.connector.sent) == 1
    assert world.connector.sent[0].recipient == "5511999990000"
    stored = world.messages.get_message(accepted.message_id)
    assert stored is not None and stored.platform_message_id == "wamid.1"
    assert stored.in_flight is None and stored.attempts == 1
    assert [e[1] for e in world.events.events][-1] == "MessageSent"


def test_retryable_failures_back_off_then_fail_and_dead_letter_on_the_third(world: World) -> None:
    world.connector.script = [ChannelRetryableError("503"), ChannelRetryableError("429"), ChannelRetryableError("503")]
    accepted = world.message_service.accept(world.send("hi"), ADMIN)
    delays = []
    for _ in range(2):
        progress = run(world)
        assert progress.outcomes == []
        assert progress.retry_after_seconds is not None
        delays.append(progress.retry_after_seconds)
        # before the back-off is over, nothing is sent
        assert run(world).retry_after_seconds == progress.retry_after_seconds
        world.now += timedelta(seconds=progress.retry_after_seconds)
    assert delays == [2, 4]
    [outcome] = run(world).outcomes
    assert outcome.status is MessageStatus.FAILED
    assert outcome.dead_letter
    assert len(world.connector.sent) == 3
    assert world.messages.get_message(accepted.message_id).status is MessageStatus.FAILED  # type: ignore[union-attr]
    assert run(world).outcomes == []
    assert len(world.connector.sent) == 3


def test_retry_then_success(world: World) -> None:
    world.connector.script = [ChannelRetryableError("503"), None]
    world.message_service.accept(world.send("hi"), ADMIN)
    assert run(world).retry_after_seconds == 2
    world.now += timedelta(seconds=2)
    assert [o.status for o in run(world).outcomes] == [MessageStatus.SENT]


def test_a_later_message_waits_for_an_earlier_one_in_back_off(world: World) -> None:
    world.connector.script = [ChannelRetryableError("503")]
    first, second, third = (world.message_service.accept(world.send(f"m{n}"), ADMIN) for n in range(1, 4))
    assert run(world).retry_after_seconds == 2
    assert [m.text for m in world.connector.sent] == ["m1"]
    world.now += timedelta(seconds=2)
    progress = run(world)
    assert [o.message_id for o in progress.outcomes] == [first.message_id, second.message_id, third.message_id]
    assert [m.text for m in world.connector.sent] == ["m1", "m1", "m2", "m3"]


def test_a_4xx_fails_at_once_without_dead_letter(world: World) -> None:
    world.connector.script = [ChannelRejectedError("400 recipient not allowed", status_code=400)]
    accepted = world.message_service.accept(world.send("hi"), ADMIN)
    [outcome] = run(world).outcomes
    assert (outcome.status, outcome.dead_letter) == (MessageStatus.FAILED, False)
    stored = world.messages.get_message(accepted.message_id)
    assert stored is not None and stored.error == "400 recipient not allowed"
    assert len(world.connector.sent) == 1


def test_a_call_without_a_usable_answer_fails_as_unknown_and_is_never_repeated(world: World) -> None:
    world.connector.script = [ChannelOutcomeUnknownError("WhatsApp gave no answer: ReadTimeout")]
    accepted = world.message_service.accept(world.send("hi"), ADMIN)
    [outcome] = run(world).outcomes
    assert (outcome.status, outcome.dead_letter) == (MessageStatus.FAILED, False)
    world.now += timedelta(minutes=10)
    assert run(world).outcomes == []
    assert len(world.connector.sent) == 1
    stored = world.messages.get_message(accepted.message_id)
    assert stored is not None and stored.error is not None and stored.error.startswith("outcome unknown")


def test_recipient_without_identity_fails_without_a_call(world: World) -> None:
    world.users.identities.clear()
    world.message_service.accept(world.send("hi"), ADMIN)
    assert [o.status for o in run(world).outcomes] == [MessageStatus.FAILED]
    assert world.connector.sent == []


def test_an_open_attempt_waits_for_its_lease_then_fails_as_unknown_without_a_call(world: World) -> None:
    # GIVEN an invocation that recorded its attempt and died before recording the platform's answer
    first = world.message_service.accept(world.send("m1"), ADMIN)
    second = world.message_service.accept(world.send("m2"), ADMIN)
    lease = world.now + timedelta(seconds=20)
    assert world.messages.begin_attempt(world.messages.messages[first.message_id], world.now, lease) == 1
    # WHEN another run comes while the lease lasts, it waits for it (the call may still be under way)
    assert run(world).retry_after_seconds == 21
    assert world.connector.sent == []
    # AND after the lease, it settles the message FAILED, outcome unknown, never calling the platform for it
    world.now = lease + timedelta(seconds=1)
    progress = run(world)
    assert [(o.message_id, o.status) for o in progress.outcomes] == [
        (first.message_id, MessageStatus.FAILED),
        (second.message_id, MessageStatus.SENT),
    ]
    assert [m.text for m in world.connector.sent] == ["m2"]
    stored = world.messages.get_message(first.message_id)
    assert stored is not None and stored.error is not None and stored.error.startswith("outcome unknown")


def test_a_dependency_down_before_the_call_is_retried_then_failed(world: World) -> None:
    world.delivery.trouble_window = timedelta(seconds=60)
    world.channels.unavailable = True
    accepted = world.message_service.accept(world.send("hi"), ADMIN)
    delays = []
    while True:
        progress = run(world)
        if progress.retry_after_seconds is None:
            break
        delays.append(progress.retry_after_seconds)
        world.now += timedelta(seconds=progress.retry_after_seconds)
    assert delays == [2, 4, 8, 16, 32]
    stored = world.messages.get_message(accepted.message_id)
    assert stored is not None and stored.status is MessageStatus.FAILED
    assert stored.error is not None and "unavailable dependencies" in stored.error
    assert world.connector.sent == []


class BlinkingStore(InMemoryMessageStore):
    """Fails the first `failures` receipts as MongoDB would while it blinks."""

    def __init__(self, conversations: InMemoryConversationStore, failures: int) -> None:
        super().__init__(conversations)
        self.failures = failures

    def record_sent(
        self,
        message_id: str,
        attempt: int,
        entry: StatusEntry,
        platform_message_id: str,
        *,
        events: Sequence[DomainEvent] = (),
    ) -> bool:
        if self.failures:
            self.failures -= 1
            raise DependencyUnavailableError("MongoDB is unavailable")
        return super().record_sent(message_id, attempt, entry, platform_message_id, events=events)


def test_a_short_mongodb_blink_after_the_call_still_records_sent() -> None:
    world = World()
    store = BlinkingStore(world.conversations, failures=2)
    store.messages = world.messages.messages
    world.delivery.messages = world.message_service.messages = world.messages = store
    accepted = world.message_service.accept(world.send("hi"), ADMIN)
    assert [o.status for o in run(world).outcomes] == [MessageStatus.SENT]
    assert world.slept == [0.2, 0.5]
    assert world.messages.get_message(accepted.message_id).platform_message_id == "wamid.1"  # type: ignore[union-attr]


def test_a_long_mongodb_outage_after_the_call_leaves_the_attempt_open_and_never_resends() -> None:
    world = World()
    store = BlinkingStore(world.conversations, failures=99)
    store.messages = world.messages.messages
    world.delivery.messages = world.message_service.messages = world.messages = store
    accepted = world.message_service.accept(world.send("hi"), ADMIN)
    with pytest.raises(DependencyUnavailableError):
        run(world)
    store.failures = 0
    world.now += timedelta(seconds=31)
    [outcome] = run(world).outcomes
    assert outcome.status is MessageStatus.FAILED
    assert len(world.connector.sent) == 1
    stored = world.messages.get_message(accepted.message_id)
    assert stored is not None and stored.error is not None and stored.error.startswith("outcome unknown")


def test_status_reports_move_forward_only_and_replays_change_nothing(world: World) -> None:
    accepted = world.message_service.accept(world.send("hi"), ADMIN)
    run(world)
    statuses = StatusService(world.messages, world.events)
    at = datetime.now(UTC)
    read = StatusReport(Platform.WHATSAPP, "wamid.1", MessageStatus.READ, at)
    assert statuses.apply(read)
    assert not statuses.apply(read)
    assert not statuses.apply(StatusReport(Platform.WHATSAPP, "wamid.1", MessageStatus.DELIVERED, at))
    stored = world.messages.get_message(accepted.message_id)
    assert stored is not None
    assert stored.status is MessageStatus.READ
    assert [h.status for h in stored.history] == [
        MessageStatus.PENDING,
        MessageStatus.SENT,
        MessageStatus.READ,
        MessageStatus.DELIVERED,
    ]
    with pytest.raises(StatusTargetMissingError):
        statuses.apply(StatusReport(Platform.WHATSAPP, "wamid.unknown", MessageStatus.READ, at))


def test_conversation_participant_rules(world: World) -> None:
    service = ConversationService(world.conversations, world.messages, world.users, world.channels)
    with pytest.raises(ValidationFailedError):
        service.create(CreateConversation(ConversationType.ONE_TO_ONE, [world.agent.user_id], Platform.WHATSAPP), ADMIN)
    with pytest.raises(ValidationFailedError):
        service.create(
            CreateConversation(
                ConversationType.ONE_TO_ONE, [world.agent.user_id, world.agent.user_id], Platform.WHATSAPP
            ),
            ADMIN,
        )
    with pytest.raises(ValidationFailedError):
        service.create(
            CreateConversation(
                ConversationType.ONE_TO_ONE, [world.agent.user_id, str(uuid.uuid4())], Platform.WHATSAPP
            ),
            ADMIN,
        )
    outsider = Principal("k", Role.AGENT, str(uuid.uuid4()))
    with pytest.raises(ForbiddenError):
        service.get(world.conversation.conversation_id, outsider)


def inbound(world: World, platform_id: str, sender: str, text: str = "hi there") -> InboundMessage:
    return InboundMessage(Platform.WHATSAPP, platform_id, sender, "Sheena", text, datetime.now(UTC))


def test_inbound_from_a_known_person_lands_in_their_conversation(world: World) -> None:
    service = InboundService(world.users, world.conversations, world.messages, world.events)
    channel = world.channels.get_channel("ch-1")
    assert channel is not None
    stored = service.receive(channel, inbound(world, "wamid.in1", "5511999990000"))
    assert stored is not None
    assert stored.conversation_id == world.conversation.conversation_id
    assert stored.sender_id == world.customer.user_id
    assert (stored.direction, stored.status, stored.sequence) == (Direction.INBOUND, MessageStatus.DELIVERED, 1)
    assert world.events.events[-1][1] == "MessageReceived"
    # MessageReceived is kept on the message, written with it: the relay publishes it should this process die
    [kept] = world.messages.kept_events
    assert (kept.detail_type, kept.message_id, kept.detail) == (
        "MessageReceived",
        stored.message_id,
        world.events.events[-1][2],
    )
    assert stored.unpublished_events == (kept,)
    # a replay changes nothing
    assert service.receive(channel, inbound(world, "wamid.in1", "5511999990000")) is None
    assert len(world.messages.messages) == 1
    assert len(world.messages.kept_events) == 1


def test_inbound_from_a_stranger_creates_a_customer_and_a_conversation(world: World) -> None:
    service = InboundService(world.users, world.conversations, world.messages, world.events)
    channel = world.channels.get_channel("ch-1")
    assert channel is not None
    first = service.receive(channel, inbound(world, "wamid.s1", "4915112345678", "hallo"))
    second = service.receive(channel, inbound(world, "wamid.s2", "4915112345678", "noch da?"))
    assert first is not None and second is not None
    assert first.conversation_id == second.conversation_id != world.conversation.conversation_id
    assert (first.sequence, second.sequence) == (1, 2)
    user = world.users.get_user(first.sender_id)
    assert user is not None
    assert (user.user_type, user.display_name, user.phone) == (UserType.CUSTOMER, "Sheena", "+4915112345678")
    assert [(i.platform, i.platform_user_id) for i in user.external_identities] == [
        (Platform.WHATSAPP, "4915112345678")
    ]
    conversation = world.conversations.get_conversation(first.conversation_id)
    assert conversation is not None and conversation.channel_id == "ch-1"


class BrokenEventBus(InMemoryEventPublisher):
    def publish(self, detail_type: str, detail: dict[str, Any], *, source: str = "chat4all") -> None:
        raise DependencyUnavailableError("EventBridge unavailable")


def test_a_failing_event_bus_neither_fails_nor_repeats_a_send(world: World) -> None:
    world.delivery.events = BrokenEventBus()
    world.message_service.accept(world.send("hi"), ADMIN)
    assert [o.status for o in run(world).outcomes] == [MessageStatus.SENT]
    assert run(world).outcomes == []
    assert len(world.connector.sent) == 1


def test_a_conversation_has_one_route_job_at_a_time_and_gets_a_new_one_once_its_run_ended(world: World) -> None:
    conversation_id = world.conversation.conversation_id
    first = world.message_service.accept(world.send("one"), ADMIN)
    world.message_service.accept(world.send("two"), ADMIN)
    assert world.queue.enqueued == [(first.message_id, conversation_id)]
    # the run the job starts sends both, and ends by unmarking the conversation
    assert [o.status for o in run(world).outcomes] == [MessageStatus.SENT, MessageStatus.SENT]
    assert conversation_id not in world.messages.route_marked
    third = world.message_service.accept(world.send("three"), ADMIN)
    assert world.queue.enqueued[1:] == [(third.message_id, conversation_id)]
    assert [m.text for m in world.connector.sent] == ["one", "two"]


def test_a_run_reads_pending_messages_ten_at_a_time_and_sends_them_in_sequence_order(world: World) -> None:
    texts = [f"m{n}" for n in range(23)]
    for text in texts:
        world.message_service.accept(world.send(text), ADMIN)
    reads: list[int] = []
    unsettled = world.messages.unsettled

    def counted(conversation_id: str, limit: int) -> list[Message]:
        found = unsettled(conversation_id, limit)
        reads.append(len(found))
        return found

    world.messages.unsettled = counted  # type: ignore[method-assign]
    outcomes = run(world).outcomes
    assert [o.status for o in outcomes] == [MessageStatus.SENT] * 23
    assert [m.text for m in world.connector.sent] == texts
    # three windows (10, 10, 3); the conversation's counter had not moved, so it was unmarked without a look more
    assert reads == [10, 10, 3]
    assert world.conversation.conversation_id not in world.messages.route_marked


class SendsWhileUnmarking(InMemoryMessageStore):
    """A message accepted by another request between the run's last look and its unmarking of the conversation."""

    def __init__(self, world: World) -> None:
        super().__init__(world.conversations)
        self.world = world
        self.late: str | None = None

    def finish_route_job(self, conversation_id: str, last_sequence: int) -> bool:
        if self.late is None:
            self.late = self.world.message_service.accept(self.world.send("late"), ADMIN).message_id
        return super().finish_route_job(conversation_id, last_sequence)


def test_a_message_stored_while_the_run_ends_is_sent_by_that_run_without_a_job_of_its_own(world: World) -> None:
    store = SendsWhileUnmarking(world)
    world.messages = world.message_service.messages = world.delivery.messages = store
    first = world.message_service.accept(world.send("first"), ADMIN)
    outcomes = run(world).outcomes
    # the late message found the conversation marked (no job for it); the run saw the counter move and looked again
    assert [job[0] for job in world.queue.enqueued] == [first.message_id]
    assert [(o.message_id, o.status) for o in outcomes] == [
        (first.message_id, MessageStatus.SENT),
        (store.late, MessageStatus.SENT),
    ]
    assert [m.text for m in world.connector.sent] == ["first", "late"]


def test_a_message_whose_job_could_not_be_enqueued_unmarks_its_conversation(world: World) -> None:
    world.message_service.queue = queue = FailingOnceQueue()
    world.message_service.accept(world.send("not enqueued"), ADMIN)
    assert queue.enqueued == []
    # the next message of the conversation enqueues a job, which sends both
    second = world.message_service.accept(world.send("next"), ADMIN)
    assert queue.enqueued == [(second.message_id, world.conversation.conversation_id)]
    assert [o.status for o in run(world).outcomes] == [MessageStatus.SENT, MessageStatus.SENT]


class FailingOnceQueue(InMemoryOutboundQueue):
    def __init__(self) -> None:
        super().__init__()
        self.failures = 1

    def enqueue(self, message_id: str, conversation_id: str, *, dedupe_key: str | None = None) -> None:
        if self.failures:
            self.failures -= 1
            raise DependencyUnavailableError("SQS unavailable")
        super().enqueue(message_id, conversation_id)


def test_a_queue_failure_after_storing_is_still_accepted_and_enqueued_by_the_retry(world: World) -> None:
    # GIVEN the queue fails once, after the message is stored
    world.message_service.queue = queue = FailingOnceQueue()
    command = world.send("stored first")
    # THEN the message is accepted all the same: it is stored, and the sweeper enqueues what waits
    first = world.message_service.accept(command, ADMIN)
    assert world.messages.get_message(command.message_id) is not None
    assert queue.enqueued == []
    # WHEN the client retries with the same message_id, it is enqueued, with the same answer
    accepted = world.message_service.accept(command, ADMIN)
    assert accepted == first
    assert queue.enqueued == [(command.message_id, world.conversation.conversation_id)]
    assert accepted.sequence == 1
    assert len(world.messages.messages) == 1


def test_each_event_is_written_with_the_change_it_reports(world: World) -> None:
    world.connector.script = [None, ChannelRejectedError("400", status_code=400)]
    first = world.message_service.accept(world.send("one"), ADMIN)
    second = world.message_service.accept(world.send("two"), ADMIN)
    run(world)
    kept = [(e.detail_type, e.message_id, e.detail["status"]) for e in world.messages.kept_events]
    assert kept == [
        ("MessageAccepted", first.message_id, "PENDING"),
        ("MessageAccepted", second.message_id, "PENDING"),
        ("MessageSent", first.message_id, "SENT"),
        ("MessageFailed", second.message_id, "FAILED"),
    ]
    # and the publisher got the same events, with the time of each change: each MessageAccepted when route
    # took its message, ahead of what route did with it
    events = world.messages.kept_events
    assert [e[2] for e in world.events.events] == [events[i].detail for i in (0, 2, 1, 3)]
    assert world.messages.kept_events[2].detail["at"] == world.now.isoformat()


def test_events_of_a_unit_of_work_go_out_together_and_refused_ones_are_kept_then_relayed() -> None:
    bus = CountingBus()
    outbox = InMemoryEventOutbox()
    buffer = EventBuffer(bus, outbox)
    for n in range(12):
        buffer.publish("MessageSent", {"n": n})
    assert bus.calls == []
    assert buffer.flush() == 12
    assert [len(call) for call in bus.calls] == [12]  # the adapter splits into PutEvents of 10
    bus.refuse = {3, 7}
    for n in range(10):
        buffer.publish("MessageSent", {"n": n})
    assert buffer.flush() == 8
    assert sorted(e.detail["n"] for _, e in outbox.pending(10)) == [3, 7]
    bus.refuse = set()
    relay = EventRelay(bus, outbox)
    assert relay.publish_pending_events(10) == 2
    assert outbox.pending(10) == []
    assert relay.publish_pending_events(10) == 0


def test_a_long_unit_of_work_publishes_as_it_goes_in_whole_put_events() -> None:
    bus = CountingBus()
    buffer = EventBuffer(bus, InMemoryEventOutbox(), flush_at=20)
    for n in range(19):
        buffer.publish("MessageSent", {"n": n})
    assert bus.calls == []
    buffer.publish_many([DomainEvent("MessageSent", {"n": 19}), DomainEvent("MessageSent", {"n": 20})])
    assert [[e.detail["n"] for e in call] for call in bus.calls] == [list(range(21))]
    for n in range(21, 25):
        buffer.publish("MessageSent", {"n": n})
    assert buffer.flush() == 4
    assert [len(call) for call in bus.calls] == [21, 4]
    assert buffer.flush() == 0


@dataclass
class CountingBus(InMemoryEventPublisher):
    calls: list[list[DomainEvent]] = field(default_factory=list)
    refuse: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        super().__init__()

    def publish_many(self, events: Sequence[DomainEvent]) -> list[DomainEvent]:
        self.calls.append(list(events))
        return [e for e in events if e.detail["n"] in self.refuse]


# ---------------------------------------------------------------- channels protecting each other (issue 17)


@dataclass
class FakeBreaker:
    """A channel breaker whose answers are scripted; it remembers what it was told."""

    passages: list[Passage] = field(default_factory=list)
    recorded: list[tuple[str, bool]] = field(default_factory=list)
    rates: list[tuple[str, ChannelRate | None]] = field(default_factory=list)  # what each admit was asked

    def admit(self, channel_id: str, rate: ChannelRate | None = None) -> Passage:
        self.rates.append((channel_id, rate))
        return self.passages.pop(0) if self.passages else Passage(allowed=True)

    def record(self, channel_id: str, *, success: bool) -> BreakerState:
        self.recorded.append((channel_id, success))
        return BreakerState.CLOSED

    def state(self, channel_id: str) -> BreakerState:
        return BreakerState.CLOSED


@dataclass
class FakeLimiter:
    waits: list[float] = field(default_factory=list)
    asked: list[tuple[str, int]] = field(default_factory=list)
    holds: list[tuple[str, float]] = field(default_factory=list)
    again: bool = False

    def wait_seconds(self, key: str, per_second: int, burst: int | None = None) -> float:
        self.asked.append((key, per_second))
        return self.waits.pop(0) if self.waits else 0.0

    def hold(self, key: str, seconds: float) -> bool:
        self.holds.append((key, seconds))
        return self.again


def protected(world: World, breaker: FakeBreaker | None = None, limiter: FakeLimiter | None = None) -> World:
    world.delivery.breaker = breaker or FakeBreaker()  # type: ignore[assignment]
    world.delivery.limiter = limiter or FakeLimiter()  # type: ignore[assignment]
    return world


def stored(world: World, message_id: str) -> Message:
    message = world.messages.get_message(message_id)
    assert message is not None
    return message


def test_an_open_breaker_makes_the_conversation_wait_in_order_without_spending_an_attempt(world: World) -> None:
    breaker = FakeBreaker([Passage(allowed=False, wait_seconds=12.5)])
    protected(world, breaker)
    first = world.message_service.accept(world.send("one"), ADMIN)
    second = world.message_service.accept(world.send("two"), ADMIN)
    progress = run(world)
    assert progress.outcomes == [] and progress.retry_after_seconds == 12.5
    assert world.connector.sent == []
    assert stored(world, first.message_id).attempts == 0  # waiting for the breaker is not an attempt
    assert stored(world, first.message_id).status is MessageStatus.PENDING
    # once the breaker lets calls through, both go, in order, and the breaker hears of each success
    assert [o.message_id for o in run(world).outcomes] == [first.message_id, second.message_id]
    assert [m.text for m in world.connector.sent] == ["one", "two"]
    assert breaker.recorded == [("ch-1", True), ("ch-1", True)]


def test_the_probe_is_a_normal_attempt_and_its_failure_is_recorded(world: World) -> None:
    breaker = FakeBreaker([Passage(allowed=True, probe=True)])
    protected(world, breaker)
    world.connector.script = [ChannelRetryableError("WhatsApp answered 500")]
    accepted = world.message_service.accept(world.send("probe"), ADMIN)
    assert run(world).retry_after_seconds == 2
    assert stored(world, accepted.message_id).attempts == 1
    assert breaker.recorded == [("ch-1", False)]


def test_a_wait_past_the_delivery_window_fails_the_message_with_why(world: World) -> None:
    protected(world, FakeBreaker([Passage(allowed=False, wait_seconds=15)]))
    accepted = world.message_service.accept(world.send("late"), ADMIN)
    world.now = stored(world, accepted.message_id).created_at + timedelta(hours=1, seconds=1)
    [outcome] = run(world).outcomes
    assert outcome.status is MessageStatus.FAILED
    assert "delivery window (3600 s" in (outcome.reason or "") and "circuit breaker is open" in (outcome.reason or "")
    assert world.connector.sent == []


def test_the_channel_rate_limit_sleeps_short_waits_and_brings_the_job_back_for_long_ones(world: World) -> None:
    # the breaker takes the channel's token in its own admit: one step for both
    breaker = FakeBreaker([Passage(False, wait_seconds=0.2, limited=True), Passage(True), limited_for(3.0)])
    protected(world, breaker)
    world.channels.channels["ch-1"] = dataclasses.replace(world.channels.channels["ch-1"], rate_limit=5)
    first = world.message_service.accept(world.send("one"), ADMIN)
    second = world.message_service.accept(world.send("two"), ADMIN)
    progress = run(world)
    assert [o.message_id for o in progress.outcomes] == [first.message_id]  # slept 0.2 s, then sent
    assert world.slept == [0.2]
    assert progress.retry_after_seconds == 3.0  # the second waits for its token: its job comes back
    assert stored(world, second.message_id).attempts == 0
    assert breaker.rates == [("ch-1", ChannelRate(5, 1))] * 3
    assert isinstance(world.delivery.limiter, FakeLimiter) and world.delivery.limiter.asked == []


def test_without_a_breaker_the_rate_limit_is_the_limiters_alone(world: World) -> None:
    limiter = FakeLimiter(waits=[0.2, 0.0, 3.0])
    protected(world, limiter=limiter)
    world.delivery.breaker = None
    world.channels.channels["ch-1"] = dataclasses.replace(world.channels.channels["ch-1"], rate_limit=5)
    first = world.message_service.accept(world.send("one"), ADMIN)
    world.message_service.accept(world.send("two"), ADMIN)
    progress = run(world)
    assert [o.message_id for o in progress.outcomes] == [first.message_id]
    assert world.slept == [0.2] and progress.retry_after_seconds == 3.0
    assert limiter.asked == [("channel:ch-1", 5)] * 3


def limited_for(seconds: float) -> Passage:
    return Passage(allowed=False, wait_seconds=seconds, limited=True)


def test_a_platform_rate_limit_holds_the_channel_and_gives_the_attempt_back(world: World) -> None:
    limiter = FakeLimiter()
    breaker = FakeBreaker()
    protected(world, breaker, limiter)
    limited = ChannelRateLimitedError("WhatsApp answered 429, error 130429: Rate limit hit", retry_after_seconds=7)
    world.connector.script = [limited, limited, limited, limited, None]
    accepted = world.message_service.accept(world.send("patient"), ADMIN)
    for _ in range(4):  # more rate limits than the attempts budget: none FAILs it
        assert run(world).retry_after_seconds == 7
        message = stored(world, accepted.message_id)
        assert message.attempts == 0 and message.status is MessageStatus.PENDING
        world.now += timedelta(seconds=7)
    assert run(world).outcomes[0].status is MessageStatus.SENT
    assert limiter.holds == [("channel:ch-1", 7)] * 4
    assert breaker.recorded == [("ch-1", True)]  # a rate limit alone does not count against the breaker
    # one repeated right after its own retry-after ended does
    limiter.again = True
    world.connector.script = [limited]
    world.message_service.accept(world.send("again"), ADMIN)
    run(world)
    assert breaker.recorded[-1] == ("ch-1", False)


def test_a_pair_rate_limit_holds_only_its_message(world: World) -> None:
    limiter = FakeLimiter()
    protected(world, limiter=limiter)
    world.connector.script = [
        ChannelRateLimitedError("error 131056: pair rate limit hit", retry_after_seconds=6, channel_wide=False)
    ]
    world.message_service.accept(world.send("pair"), ADMIN)
    assert run(world).retry_after_seconds == 6
    assert limiter.holds == []


def test_credentials_rejected_mark_the_channel_and_fail_its_messages_until_rotated(world: World) -> None:
    breaker = FakeBreaker()
    protected(world, breaker)
    world.connector.script = [ChannelCredentialsRejectedError("WhatsApp answered 401, error 190: token expired")]
    first = world.message_service.accept(world.send("one"), ADMIN)
    second = world.message_service.accept(world.send("two"), ADMIN)
    outcomes = run(world).outcomes
    assert [o.status for o in outcomes] == [MessageStatus.FAILED, MessageStatus.FAILED]
    assert "credentials rejected" in (outcomes[0].reason or "") and "error 190" in (outcomes[0].reason or "")
    assert "rejected its credentials" in (outcomes[1].reason or "")
    assert len(world.connector.sent) == 1  # the second was not sent with a token known to be refused
    assert world.channels.channels["ch-1"].credentials_rejected is not None
    assert stored(world, second.message_id).history[-1].detail == outcomes[1].reason
    assert first.message_id != second.message_id
    # new credentials (what PATCH does: the mark cleared, updated_at moved) let the next message go
    later = world.channels.channels["ch-1"].updated_at + timedelta(seconds=1)
    world.channels.channels["ch-1"] = dataclasses.replace(
        world.channels.channels["ch-1"], credentials_rejected=None, updated_at=later
    )
    world.message_service.accept(world.send("three"), ADMIN)
    assert run(world).outcomes[0].status is MessageStatus.SENT


def test_a_recipient_refusal_fails_the_message_at_once_with_the_platforms_reason(world: World) -> None:
    breaker = FakeBreaker()
    protected(world, breaker)
    world.connector.script = [
        ChannelRecipientRejectedError("Telegram answered 403 (error_code 403): Forbidden: bot was blocked by the user")
    ]
    accepted = world.message_service.accept(world.send("hi"), ADMIN)
    [outcome] = run(world).outcomes
    assert outcome.status is MessageStatus.FAILED and not outcome.dead_letter
    detail = stored(world, accepted.message_id).history[-1].detail or ""
    assert detail.startswith("recipient cannot be reached") and "bot was blocked by the user" in detail
    assert breaker.recorded == [("ch-1", True)]  # about the recipient, not the platform's health
