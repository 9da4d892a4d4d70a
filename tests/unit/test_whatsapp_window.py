"""WhatsApp templates and the 24-hour window: the request's template rules, the window rule, the check in the
accepting transaction's draft over the in-memory fakes, where inbound messages record the window, and the
Cloud API body the connector builds."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from pydantic import ValidationError

from chat4all.api.schemas import SendMessageRequest
from chat4all.channels.whatsapp import WhatsAppConnector
from chat4all.domain.commands import CreateConversation, CreateUser, LinkIdentity, SendMessage
from chat4all.domain.errors import ValidationFailedError
from chat4all.domain.models import (
    ChannelConfig,
    Conversation,
    ConversationType,
    InboundMessage,
    MessageStatus,
    OutboundMessage,
    Participant,
    Platform,
    UserType,
)
from chat4all.services.conversations import ConversationService
from chat4all.services.inbound import InboundService
from chat4all.services.messages import WhatsAppWindowClosedError, whatsapp_window_closed
from tests.unit.test_services import ADMIN, World

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE: dict[str, Any] = {
    "name": "order_ready",
    "language": "pt_BR",
    "components": [
        {"type": "header", "parameters": [{"type": "image", "image": {"link": "https://cdn.example.com/a.jpg"}}]},
        {
            "type": "body",
            "parameters": [
                {"type": "text", "text": "Carlos"},
                {"type": "currency", "currency": {"fallback_value": "R$ 10", "code": "BRL", "amount_1000": 10000}},
                {"type": "date_time", "date_time": {"fallback_value": "25 de fevereiro"}},
            ],
        },
        {"type": "button", "sub_type": "quick_reply", "index": 0, "parameters": [{"type": "payload", "payload": "OK"}]},
        {"type": "button", "sub_type": "url", "index": "1", "parameters": [{"type": "text", "text": "8812"}]},
    ],
}


def request(**fields: Any) -> dict[str, Any]:
    return {"conversation_id": str(uuid.uuid4()), "sender_id": str(uuid.uuid4()), **fields}


# ---- the request


def test_a_template_alone_is_a_message_and_its_command_carries_it() -> None:
    command = SendMessageRequest.model_validate(request(template=TEMPLATE)).command()
    assert command.template == TEMPLATE
    assert command.content is None
    # minimal: name and language only
    assert SendMessageRequest.model_validate(request(template={"name": "hello_world", "language": "en"})).template


def test_the_documented_request_examples_are_accepted() -> None:
    document = yaml.safe_load((ROOT / "openapi.yaml").read_text())
    examples = document["paths"]["/v1/messages"]["post"]["requestBody"]["content"]["application/json"]["examples"]
    for example in examples.values():
        SendMessageRequest.model_validate(example["value"])


def _with_component(component: dict[str, Any]) -> dict[str, Any]:
    return {"name": "t", "language": "en", "components": [component]}


def _body(*parameters: dict[str, Any]) -> dict[str, Any]:
    return _with_component({"type": "body", "parameters": list(parameters)})


HOSTILE_TEMPLATES = {
    "name with capitals": {"name": "Order Ready", "language": "en"},
    "name too long": {"name": "a" * 513, "language": "en"},
    "name not a string": {"name": ["a"], "language": "en"},
    "language not a code": {"name": "t", "language": "english"},
    "language with a newline": {"name": "t", "language": "en\n"},
    "unknown field": {"name": "t", "language": "en", "namespace": "x"},
    "no components in the list": {"name": "t", "language": "en", "components": []},
    "too many components": {"name": "t", "language": "en", "components": [{"type": "body"}] * 13},
    "a footer": _with_component({"type": "footer", "parameters": [{"type": "text", "text": "x"}]}),
    "two bodies": {
        "name": "t",
        "language": "en",
        "components": [_body({"type": "text", "text": "a"})["components"][0]] * 2,
    },
    "too many parameters": _body(*[{"type": "text", "text": "a"}] * 21),
    "no parameters": _with_component({"type": "body", "parameters": []}),
    "empty text": _body({"type": "text", "text": ""}),
    "text too long": _body({"type": "text", "text": "a" * 1025}),
    "unknown parameter type": _body({"type": "location", "location": {}}),
    "image in a body": _body({"type": "image", "image": {"link": "https://a.b/c.png"}}),
    "two header parameters": _with_component(
        {"type": "header", "parameters": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
    ),
    "button without index": _with_component(
        {"type": "button", "sub_type": "quick_reply", "parameters": [{"type": "payload", "payload": "x"}]}
    ),
    "button index 10": _with_component(
        {"type": "button", "sub_type": "url", "index": 10, "parameters": [{"type": "text", "text": "x"}]}
    ),
    "button index true": _with_component(
        {"type": "button", "sub_type": "url", "index": True, "parameters": [{"type": "text", "text": "x"}]}
    ),
    "payload on a url button": _with_component(
        {"type": "button", "sub_type": "url", "index": 0, "parameters": [{"type": "payload", "payload": "x"}]}
    ),
    "huge amount": _body(
        {"type": "currency", "currency": {"fallback_value": "$", "code": "USD", "amount_1000": 10**20}}
    ),
    "amount as a float": _body(
        {"type": "currency", "currency": {"fallback_value": "$", "code": "USD", "amount_1000": 1.5}}
    ),
    "lowercase currency": _body(
        {"type": "currency", "currency": {"fallback_value": "$", "code": "usd", "amount_1000": 1}}
    ),
    "http media link": _with_component(
        {"type": "header", "parameters": [{"type": "image", "image": {"link": "http://a.b/c.png"}}]}
    ),
    "media link with a space": _with_component(
        {"type": "header", "parameters": [{"type": "video", "video": {"link": "https://a.b/c d.mp4"}}]}
    ),
    "media with link and id": _with_component(
        {"type": "header", "parameters": [{"type": "image", "image": {"link": "https://a.b/c", "id": "1"}}]}
    ),
    "media with neither": _with_component({"type": "header", "parameters": [{"type": "image", "image": {}}]}),
    "document filename with a slash": _with_component(
        {"type": "header", "parameters": [{"type": "document", "document": {"id": "1", "filename": "../x"}}]}
    ),
    "components an object": {"name": "t", "language": "en", "components": {"type": "body"}},
    "template a string": "order_ready",
}


@pytest.mark.parametrize("template", HOSTILE_TEMPLATES.values(), ids=HOSTILE_TEMPLATES.keys())
def test_hostile_templates_are_refused(template: Any) -> None:
    with pytest.raises(ValidationError):
        SendMessageRequest.model_validate(request(template=template))


@pytest.mark.parametrize(
    "extra", [{"content": "hi"}, {"file_id": str(uuid.uuid4())}], ids=["with content", "with file_id"]
)
def test_a_template_comes_alone(extra: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="neither content nor file_id"):
        SendMessageRequest.model_validate(request(template=TEMPLATE, **extra))


def test_a_message_without_content_file_or_template_is_refused() -> None:
    with pytest.raises(ValidationError, match="content, file_id or template"):
        SendMessageRequest.model_validate(request(template=None))


def test_the_fingerprint_of_a_message_without_template_is_as_before_templates() -> None:
    command = SendMessage("m", "c", "s", "hello")
    legacy = {"conversation_id": "c", "sender_id": "s", "content": "hello", "file_id": None, "channel_type": None}
    assert command.fingerprint == hashlib.sha256(json.dumps(legacy, sort_keys=True).encode()).hexdigest()
    assert SendMessage("m", "c", "s", None, template=TEMPLATE).fingerprint != command.fingerprint


# ---- the window rule

NOW = datetime(2026, 1, 2, 12, tzinfo=UTC)


def _conversation(
    kind: ConversationType = ConversationType.ONE_TO_ONE, last_inbound_at: datetime | None = None
) -> Conversation:
    return Conversation(
        "c", kind, [Participant("a", NOW), Participant("b", NOW)], Platform.WHATSAPP, 0, NOW, NOW, "ch",
        last_inbound_at=last_inbound_at,
    )  # fmt: skip


def test_the_window_closes_24_hours_after_the_customers_last_message() -> None:
    inside = _conversation(last_inbound_at=NOW - timedelta(hours=24))
    outside = _conversation(last_inbound_at=NOW - timedelta(hours=24, seconds=1))
    assert whatsapp_window_closed(inside, Platform.WHATSAPP, NOW) is None
    assert whatsapp_window_closed(outside, Platform.WHATSAPP, NOW) == NOW - timedelta(seconds=1)
    # unknown (the customer never wrote): not refused, WhatsApp decides
    assert whatsapp_window_closed(_conversation(), Platform.WHATSAPP, NOW) is None
    # another platform, or a GROUP: not refused at acceptance
    assert whatsapp_window_closed(outside, Platform.TELEGRAM, NOW) is None
    group = _conversation(ConversationType.GROUP, NOW - timedelta(days=3))
    assert whatsapp_window_closed(group, Platform.WHATSAPP, NOW) is None


# ---- the draft check over the fakes, and inbound messages recording the window


@pytest.fixture
def world() -> World:
    return World()


def _inbound(world: World, at: datetime, platform: Platform = Platform.WHATSAPP) -> None:
    channel = world.channels.get_channel("ch-1")
    assert channel is not None
    service = InboundService(world.users, world.conversations, world.messages, world.events)
    inbound = InboundMessage(platform, f"wamid.{uuid.uuid4().hex}", "5511999990000", "Carl", "oi", at)
    assert service.receive(channel, inbound) is not None


def _stored(world: World) -> int:
    return len(world.messages.messages)


def test_a_free_form_message_outside_the_window_is_refused_and_nothing_is_stored(world: World) -> None:
    # GIVEN the customer last wrote (by WhatsApp's timestamp) 25 hours ago
    _inbound(world, datetime.now(UTC) - timedelta(hours=25))
    conversation = world.conversations.get_conversation(world.conversation.conversation_id)
    assert conversation is not None and conversation.last_inbound_at is not None
    before = _stored(world)
    # WHEN the agent sends text THEN 422 saying to use a template, and nothing is stored or enqueued
    with pytest.raises(WhatsAppWindowClosedError, match="template") as refused:
        world.message_service.accept(world.send("are you there?"), ADMIN)
    assert refused.value.status == 422 and refused.value.slug == "whatsapp-window-closed"
    assert [e.field for e in refused.value.errors] == ["content"]
    assert _stored(world) == before
    assert world.queue.enqueued == []
    # AND a template goes
    template = SendMessage(str(uuid.uuid4()), world.conversation.conversation_id, world.agent.user_id, None,
                           template=TEMPLATE)  # fmt: skip
    accepted = world.message_service.accept(template, ADMIN)
    stored = world.messages.get_message(accepted.message_id)
    assert stored is not None
    assert (stored.template, stored.message_type, stored.content) == (
        TEMPLATE, "template", "[template order_ready (pt_BR)]",
    )  # fmt: skip
    # AND once the customer writes again, text goes too
    _inbound(world, datetime.now(UTC) - timedelta(minutes=1))
    world.message_service.accept(world.send("thanks for writing"), ADMIN)


def test_the_window_only_moves_forward(world: World) -> None:
    recent = datetime.now(UTC) - timedelta(hours=1)
    _inbound(world, recent)
    _inbound(world, recent - timedelta(hours=30))  # a late webhook of an older message
    conversation = world.conversations.get_conversation(world.conversation.conversation_id)
    assert conversation is not None and conversation.last_inbound_at == recent
    world.message_service.accept(world.send("inside the window"), ADMIN)


def test_a_customer_who_never_wrote_gets_the_message(world: World) -> None:
    assert world.message_service.accept(world.send("first contact"), ADMIN).status is MessageStatus.PENDING


def test_a_replayed_refused_message_id_is_refused_again_and_an_accepted_one_keeps_its_202(world: World) -> None:
    command = world.send("before the window closed")
    first = world.message_service.accept(command, ADMIN)
    _inbound(world, datetime.now(UTC) - timedelta(hours=25))  # (a late webhook: the window is measured from it)
    # a retry of the accepted message gets its 202 even though the window is closed now
    assert world.message_service.accept(command, ADMIN) == first
    with pytest.raises(WhatsAppWindowClosedError):
        world.message_service.accept(world.send("new text"), ADMIN)


def _telegram_world() -> tuple[World, str]:
    world = World()
    world.identity.link_identity(LinkIdentity(world.customer.user_id, Platform.TELEGRAM, "4242"), ADMIN)
    now = datetime.now(UTC)
    world.channels.add_channel(
        ChannelConfig("ch-tg", Platform.TELEGRAM, "bot", {"bot_token": "t"}, True, now, now),
        None,  # type: ignore[arg-type]
    )
    conversation = ConversationService(world.conversations, world.messages, world.users, world.channels).create(
        CreateConversation(ConversationType.ONE_TO_ONE, [world.agent.user_id, world.customer.user_id],
                           Platform.TELEGRAM),
        ADMIN,
    )  # fmt: skip
    return world, conversation.conversation_id


def test_a_template_off_whatsapp_or_in_a_group_is_refused() -> None:
    world, telegram = _telegram_world()
    command = SendMessage(str(uuid.uuid4()), telegram, world.agent.user_id, None, template=TEMPLATE)
    with pytest.raises(ValidationFailedError, match="WhatsApp") as refused:
        world.message_service.accept(command, ADMIN)
    assert [e.field for e in refused.value.errors] == ["template"]
    # channel_type naming another platform in a WhatsApp conversation: refused too
    other = SendMessage(str(uuid.uuid4()), world.conversation.conversation_id, world.agent.user_id, None,
                        channel_type=Platform.INSTAGRAM, template=TEMPLATE)  # fmt: skip
    with pytest.raises(ValidationFailedError, match="INSTAGRAM"):
        world.message_service.accept(other, ADMIN)
    # a GROUP
    third = world.identity.create_user(CreateUser("Dora", UserType.CUSTOMER), ADMIN)
    group = ConversationService(world.conversations, world.messages, world.users, world.channels).create(
        CreateConversation(ConversationType.GROUP, [world.agent.user_id, world.customer.user_id, third.user_id],
                           Platform.WHATSAPP),
        ADMIN,
    )  # fmt: skip
    in_group = SendMessage(str(uuid.uuid4()), group.conversation_id, world.agent.user_id, None, template=TEMPLATE)
    with pytest.raises(ValidationFailedError, match="ONE_TO_ONE"):
        world.message_service.accept(in_group, ADMIN)
    assert world.messages.messages == {}


def test_inbound_messages_on_other_platforms_record_no_window() -> None:
    world, telegram = _telegram_world()
    channel = world.channels.get_channel("ch-tg")
    assert channel is not None
    service = InboundService(world.users, world.conversations, world.messages, world.events)
    old = datetime.now(UTC) - timedelta(days=3)
    assert service.receive(channel, InboundMessage(Platform.TELEGRAM, "1", "4242", "Carl", "oi", old)) is not None
    conversation = world.conversations.get_conversation(telegram)
    assert conversation is not None and conversation.last_inbound_at is None
    world.message_service.accept(SendMessage(str(uuid.uuid4()), telegram, world.agent.user_id, "hi"), ADMIN)


def test_a_template_message_is_delivered_with_its_template(world: World) -> None:
    command = SendMessage(str(uuid.uuid4()), world.conversation.conversation_id, world.agent.user_id, None,
                          template=TEMPLATE)  # fmt: skip
    accepted = world.message_service.accept(command, ADMIN)
    assert world.delivered_status(accepted.message_id) is MessageStatus.SENT
    assert world.connector.sent[-1].template == TEMPLATE


# ---- the Cloud API body


def test_the_connector_sends_a_template_in_the_cloud_apis_format() -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(200, json={"messages": [{"id": "wamid.1"}]})

    wa = WhatsAppConnector("https://graph.example/v21.0", httpx.Client(transport=httpx.MockTransport(handler)))
    credentials = {"access_token": "t", "phone_number_id": "1065", "app_secret": "s", "verify_token": "v"}
    wa.send(credentials, OutboundMessage("m", "+5511999990000", "[template order_ready (pt_BR)]", TEMPLATE))
    wa.send(credentials, OutboundMessage("m", "5511999990000", "x", {"name": "hello_world", "language": "en_US"}))
    components = [dict(c) for c in TEMPLATE["components"]]
    components[2]["index"] = "0"  # the Cloud API takes a button's index as a string
    assert seen == [
        {
            "messaging_product": "whatsapp",
            "to": "5511999990000",
            "type": "template",
            "template": {"name": "order_ready", "language": {"code": "pt_BR"}, "components": components},
        },
        {
            "messaging_product": "whatsapp",
            "to": "5511999990000",
            "type": "template",
            "template": {"name": "hello_world", "language": {"code": "en_US"}},
        },
    ]
