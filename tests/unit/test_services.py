"""Services over in-memory ports: acceptance rules, delivery at most once with bounded retries, statuses."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest

from chat4all.domain.commands import CreateConversation, CreateUser, LinkIdentity, SendMessage
from chat4all.domain.errors import (
    ChannelRejectedError,
    ChannelRetryableError,
    ConflictError,
    DependencyUnavailableError,
    ForbiddenError,
    RetryLaterError,
    StatusTargetMissingError,
    ValidationFailedError,
)
from chat4all.domain.models import (
    ChannelConfig,
    ConversationType,
    Direction,
    InboundMessage,
    MessageStatus,
    Platform,
    Principal,
    ProviderReceipt,
    Role,
    StatusReport,
    UserType,
)
from chat4all.services.conversations import ConversationService
from chat4all.services.delivery import DeliveryService
from chat4all.services.identity import IdentityService
from chat4all.services.inbound import InboundService
from chat4all.services.messages import MessageService
from chat4all.services.statuses import StatusService
from tests.fakes.in_memory import (
    InMemoryApiKeyRepository,
    InMemoryChannelRepository,
    InMemoryConversationStore,
    InMemoryEventPublisher,
    InMemoryMessageStore,
    InMemoryOutboundQueue,
    InMemoryUserRepository,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

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
    messages: InMemoryMessageStore = field(default_factory=InMemoryMessageStore)
    queue: InMemoryOutboundQueue = field(default_factory=InMemoryOutboundQueue)
    events: InMemoryEventPublisher = field(default_factory=InMemoryEventPublisher)
    connector: ScriptedConnector = field(default_factory=ScriptedConnector)

    def __post_init__(self) -> None:
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
        self.message_service = MessageService(self.messages, self.conversations, self.users, self.queue, self.events)
        self.delivery = DeliveryService(
            self.messages,
            self.conversations,
            self.users,
            self.channels,
            {Platform.WHATSAPP: self.connector},
            self.events,  # type: ignore[dict-item]
        )

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
    assert world.queue.enqueued == [
        (first.message_id, world.conversation.conversation_id),
        (second.message_id, world.conversation.conversation_id),
    ]
    assert [e[1] for e in world.events.events] == ["MessageAccepted", "MessageAccepted"]


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


def test_delivery_records_sent_and_never_sends_twice(world: World) -> None:
    accepted = world.message_service.accept(world.send("hi"), ADMIN)
    outcome = world.delivery.deliver(accepted.message_id)
    assert outcome.status is MessageStatus.SENT
    assert world.delivery.deliver(accepted.message_id).status is MessageStatus.SENT
    assert len(world.connector.sent) == 1
    assert world.connector.sent[0].recipient == "5511999990000"
    stored = world.messages.get_message(accepted.message_id)
    assert stored is not None and stored.platform_message_id == "wamid.1"
    assert [e[1] for e in world.events.events][-1] == "MessageSent"


def test_retryable_failures_back_off_then_fail_and_dead_letter_on_the_third(world: World) -> None:
    world.connector.script = [ChannelRetryableError("503"), ChannelRetryableError("429"), ChannelRetryableError("503")]
    accepted = world.message_service.accept(world.send("hi"), ADMIN)
    delays = []
    for _ in range(2):
        with pytest.raises(RetryLaterError) as retry:
            world.delivery.deliver(accepted.message_id)
        delays.append(retry.value.delay_seconds)
    assert delays == [2, 4]
    outcome = world.delivery.deliver(accepted.message_id)
    assert outcome.status is MessageStatus.FAILED
    assert outcome.dead_letter
    assert len(world.connector.sent) == 3
    assert world.messages.get_message(accepted.message_id).status is MessageStatus.FAILED  # type: ignore[union-attr]
    assert world.delivery.deliver(accepted.message_id).status is MessageStatus.FAILED
    assert len(world.connector.sent) == 3


def test_retry_then_success(world: World) -> None:
    world.connector.script = [ChannelRetryableError("503"), None]
    accepted = world.message_service.accept(world.send("hi"), ADMIN)
    with pytest.raises(RetryLaterError):
        world.delivery.deliver(accepted.message_id)
    assert world.delivery.deliver(accepted.message_id).status is MessageStatus.SENT


def test_a_4xx_fails_at_once_without_dead_letter(world: World) -> None:
    world.connector.script = [ChannelRejectedError("400 recipient not allowed", status_code=400)]
    accepted = world.message_service.accept(world.send("hi"), ADMIN)
    outcome = world.delivery.deliver(accepted.message_id)
    assert (outcome.status, outcome.dead_letter) == (MessageStatus.FAILED, False)
    stored = world.messages.get_message(accepted.message_id)
    assert stored is not None and stored.error == "400 recipient not allowed"
    assert len(world.connector.sent) == 1


def test_recipient_without_identity_fails_without_a_call(world: World) -> None:
    world.users.identities.clear()
    accepted = world.message_service.accept(world.send("hi"), ADMIN)
    assert world.delivery.deliver(accepted.message_id).status is MessageStatus.FAILED
    assert world.connector.sent == []


def test_status_reports_move_forward_only_and_replays_change_nothing(world: World) -> None:
    accepted = world.message_service.accept(world.send("hi"), ADMIN)
    world.delivery.deliver(accepted.message_id)
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
    # a replay changes nothing
    assert service.receive(channel, inbound(world, "wamid.in1", "5511999990000")) is None
    assert len(world.messages.messages) == 1


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
    world.message_service.events = BrokenEventBus()
    world.delivery.events = BrokenEventBus()
    accepted = world.message_service.accept(world.send("hi"), ADMIN)
    assert world.delivery.deliver(accepted.message_id).status is MessageStatus.SENT
    assert world.delivery.deliver(accepted.message_id).status is MessageStatus.SENT
    assert len(world.connector.sent) == 1


class FailingOnceQueue(InMemoryOutboundQueue):
    def __init__(self) -> None:
        super().__init__()
        self.failures = 1

    def enqueue(self, message_id: str, conversation_id: str) -> None:
        if self.failures:
            self.failures -= 1
            raise DependencyUnavailableError("SQS unavailable")
        super().enqueue(message_id, conversation_id)


def test_a_queue_failure_after_storing_is_recovered_by_the_retry(world: World) -> None:
    # GIVEN the queue fails once, after the message is stored
    world.message_service.queue = queue = FailingOnceQueue()
    command = world.send("stored first")
    with pytest.raises(DependencyUnavailableError):
        world.message_service.accept(command, ADMIN)
    assert world.messages.get_message(command.message_id) is not None
    assert queue.enqueued == []
    # WHEN the client retries with the same message_id
    accepted = world.message_service.accept(command, ADMIN)
    # THEN it is enqueued once, with the sequence it got the first time, and no second message exists
    assert queue.enqueued == [(command.message_id, world.conversation.conversation_id)]
    assert accepted.sequence == 1
    assert len(world.messages.messages) == 1
