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
from chat4all.domain.models import ChannelConfig, ConversationType, MessageStatus, Platform
from chat4all.services.conversations import ConversationService
from chat4all.services.inbound import InboundService
from chat4all.services.webhooks import WebhookService
from tests.unit.test_services import ADMIN, World

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "whatsapp"


@pytest.fixture
def world() -> World:
    return World()


def _add_channel(
    world: World, channel_id: str, *, platform: Platform = Platform.WHATSAPP, enabled: bool = True
) -> None:
    now = datetime.now(UTC)
    secret = f"secret-{channel_id}"
    credentials = {"access_token": f"token-{channel_id}", "app_secret": secret, "verify_token": secret}
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
    _add_channel(world, "ch-2")
    _add_channel(world, "ch-3")
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
