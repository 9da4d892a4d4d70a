"""A conversation goes out through the channel it names; a channel that cannot be used blocks no other."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from chat4all.channels.whatsapp import WhatsAppConnector
from chat4all.domain.commands import CreateConversation
from chat4all.domain.errors import UnauthorizedError, ValidationFailedError
from chat4all.domain.models import (
    ChannelConfig,
    ConversationType,
    InboundMessage,
    MessageStatus,
    Platform,
    StatusReport,
)
from chat4all.services.conversations import ConversationService
from chat4all.services.inbound import InboundService
from chat4all.services.statuses import StatusService
from chat4all.services.webhooks import WebhookService
from tests.unit.test_services import ADMIN, World

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "whatsapp"


@pytest.fixture
def world() -> World:
    return World()


def _add_channel(
    world: World,
    channel_id: str,
    *,
    platform: Platform = Platform.WHATSAPP,
    enabled: bool = True,
    phone_number_id: str | None = None,
) -> None:
    now = datetime.now(UTC)
    secret = f"secret-{channel_id}"
    credentials = {"access_token": f"token-{channel_id}", "app_secret": secret, "verify_token": secret}
    if phone_number_id is not None:
        credentials["phone_number_id"] = phone_number_id
    world.channels.add_channel(ChannelConfig(channel_id, platform, channel_id, credentials, enabled, now, now), None)  # type: ignore[arg-type]


def _create(world: World, channel_id: str | None) -> str:
    service = ConversationService(world.conversations, world.messages, world.users, world.channels)
    participants = [world.agent.user_id, world.customer.user_id]
    command = CreateConversation(ConversationType.ONE_TO_ONE, participants, Platform.WHATSAPP, channel_id)
    return service.create(command, ADMIN).conversation_id


def test_a_conversation_is_bound_to_the_only_enabled_channel_or_must_name_one(world: World) -> None:
    conversation = world.conversations.get_conversation(world.conversation.conversation_id)
    assert conversation is not None and conversation.channel_id == "ch-1"
    _add_channel(world, "ch-2")
    with pytest.raises(ValidationFailedError) as error:
        _create(world, None)
    assert [e.field for e in error.value.errors] == ["channel_id"]
    named = world.conversations.get_conversation(_create(world, "ch-2"))
    assert named is not None and named.channel_id == "ch-2"


@pytest.mark.parametrize("problem", ["unknown", "disabled", "other-platform"])
def test_a_named_channel_must_exist_be_enabled_and_be_of_the_platform(world: World, problem: str) -> None:
    if problem == "disabled":
        _add_channel(world, "ch-x", enabled=False)
    elif problem == "other-platform":
        _add_channel(world, "ch-x", platform=Platform.TELEGRAM)
    with pytest.raises(ValidationFailedError) as error:
        _create(world, "ch-x")
    assert [e.field for e in error.value.errors] == ["channel_id"]


def test_delivery_uses_the_named_channel_not_the_first_that_works(world: World) -> None:
    _add_channel(world, "ch-2")
    conversation_id = _create(world, "ch-2")
    sent: list[str] = []
    original = world.connector.send

    def recording_send(credentials: dict[str, str], message: object) -> object:
        sent.append(credentials["access_token"])
        return original(credentials, message)  # type: ignore[arg-type]

    world.connector.send = recording_send  # type: ignore[method-assign,assignment]
    command = replace(world.send("via two"), conversation_id=conversation_id)
    accepted = world.message_service.accept(command, ADMIN)
    assert world.delivered_status(accepted.message_id) is MessageStatus.SENT
    assert sent == ["token-ch-2"]


def test_unreadable_credentials_fail_that_channels_messages_with_a_reason_and_block_no_other(world: World) -> None:
    _add_channel(world, "ch-2")
    broken_conversation = _create(world, "ch-2")
    world.channels.unreadable.add("ch-2")
    broken = world.message_service.accept(replace(world.send("lost key"), conversation_id=broken_conversation), ADMIN)
    working = world.message_service.accept(world.send("fine"), ADMIN)

    assert world.delivered_status(broken.message_id) is MessageStatus.FAILED
    failed = world.messages.get_message(broken.message_id)
    assert failed is not None and failed.error is not None and "cannot be decrypted" in failed.error
    assert world.delivered_status(working.message_id) is MessageStatus.SENT


def test_a_channel_with_unreadable_credentials_does_not_block_other_channels_webhooks(world: World) -> None:
    world.channels.channels["ch-1"] = replace(world.channels.channels["ch-1"], enabled=False)
    _add_channel(world, "ch-2", phone_number_id="555")
    _add_channel(world, "ch-3", phone_number_id="106540352242922")  # the number the fixture's webhook names
    world.channels.unreadable.add("ch-2")
    inbound = InboundService(world.users, world.conversations, world.messages, world.events)
    service = WebhookService(
        world.channels, {Platform.WHATSAPP: WhatsAppConnector("http://unused")}, world.events, inbound
    )
    params = {"hub.mode": "subscribe", "hub.verify_token": "secret-ch-3", "hub.challenge": "42"}
    assert service.subscription_challenge(Platform.WHATSAPP, params) == "42"

    body = (FIXTURES / "status_delivered.json").read_bytes()
    signature = "sha256=" + hmac.new(b"secret-ch-3", body, hashlib.sha256).hexdigest()
    events = service.receive(Platform.WHATSAPP, {"x-hub-signature-256": signature}, body)
    assert len(events) == 2
    forged = "sha256=" + hmac.new(b"secret-ch-2", body, hashlib.sha256).hexdigest()
    with pytest.raises(UnauthorizedError):
        service.receive(Platform.WHATSAPP, {"x-hub-signature-256": forged}, body)


def test_inbound_goes_to_the_conversation_on_its_channel_with_the_default_agent(world: World) -> None:
    _add_channel(world, "ch-2", phone_number_id="555")
    world.channels.channels["ch-2"] = replace(world.channels.channels["ch-2"], default_agent_id=world.agent.user_id)
    inbound = InboundService(world.users, world.conversations, world.messages, world.events)
    at = datetime.now(UTC)
    message = InboundMessage(Platform.WHATSAPP, "wamid.on2", "5511999990000", "Carl", "hi 2", at)
    on_two = inbound.receive(world.channels.channels["ch-2"], message)
    assert on_two is not None
    # the customer's conversation on ch-1 is not the one: a new one on ch-2, with its default agent
    assert on_two.conversation_id != world.conversation.conversation_id
    conversation = world.conversations.get_conversation(on_two.conversation_id)
    assert conversation is not None and conversation.channel_id == "ch-2"
    assert [p.user_id for p in conversation.participants] == [world.customer.user_id, world.agent.user_id]
    on_one = inbound.receive(world.channels.channels["ch-1"], replace(message, platform_message_id="wamid.on1"))
    assert on_one is not None and on_one.conversation_id == world.conversation.conversation_id

    # the derived id of a new conversation is taken by one the customer has left: a fresh conversation instead
    left = replace(conversation, participants=[conversation.participants[1]])
    world.conversations.conversations[conversation.conversation_id] = left
    again = inbound.receive(world.channels.channels["ch-2"], replace(message, platform_message_id="wamid.on3"))
    assert again is not None and again.conversation_id not in {conversation.conversation_id, on_one.conversation_id}


def test_a_channel_reports_status_on_its_own_messages_only(world: World) -> None:
    _add_channel(world, "ch-2", phone_number_id="555")
    world.message_service.accept(world.send("hello"), ADMIN)
    [accepted] = world.messages.messages.values()
    assert world.delivered_status(accepted.message_id) is MessageStatus.SENT
    sent = world.messages.get_message(accepted.message_id)
    assert sent is not None and sent.platform_message_id is not None
    statuses = StatusService(world.messages, world.events, world.conversations)
    at = datetime.now(UTC)
    report = StatusReport(Platform.WHATSAPP, sent.platform_message_id, MessageStatus.READ, at, channel_id="ch-2")
    assert not statuses.apply(report)
    assert world.messages.messages[sent.message_id].status is MessageStatus.SENT
    assert statuses.apply(replace(report, channel_id="ch-1"))
    assert world.messages.messages[sent.message_id].status is MessageStatus.READ


def test_a_webhook_is_verified_by_the_channel_it_names_only(world: World) -> None:
    _add_channel(world, "ch-a", phone_number_id="106540352242922")
    _add_channel(world, "ch-b", phone_number_id="777")
    inbound = InboundService(world.users, world.conversations, world.messages, world.events)
    service = WebhookService(
        world.channels, {Platform.WHATSAPP: WhatsAppConnector("http://unused")}, world.events, inbound
    )
    body = (FIXTURES / "message_text.json").read_bytes()  # names 106540352242922, ch-a's number

    def signed(secret: bytes, raw: bytes) -> dict[str, str]:
        return {"x-hub-signature-256": "sha256=" + hmac.new(secret, raw, hashlib.sha256).hexdigest()}

    with pytest.raises(UnauthorizedError):
        service.receive(Platform.WHATSAPP, signed(b"secret-ch-b", body), body)
    assert world.messages.messages == {}
    # a number left empty in one change cannot borrow the signature checked for another
    empty = body.replace(b'"phone_number_id": "106540352242922"', b'"phone_number_id": ""')
    with pytest.raises(UnauthorizedError):
        service.receive(Platform.WHATSAPP, signed(b"secret-ch-a", empty), empty)
    assert len(service.receive(Platform.WHATSAPP, signed(b"secret-ch-a", body), body)) == 1
    stored = next(iter(world.messages.messages.values()))
    conversation = world.conversations.get_conversation(stored.conversation_id)
    assert conversation is not None and conversation.channel_id == "ch-a"
