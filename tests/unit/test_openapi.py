"""openapi.yaml describes exactly the routes template.yaml serves, and the views carry its required fields."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from chat4all.api import views
from chat4all.domain.models import (
    ApiKey,
    AuditRecord,
    ChannelInfo,
    Conversation,
    ConversationType,
    Delivery,
    Direction,
    ExternalIdentity,
    Message,
    MessageStatus,
    Participant,
    Platform,
    Role,
    StatusEntry,
    User,
    UserType,
)
from chat4all.services.messages import AcceptedMessage
from devstack.template import DEFAULT_ROUTE, http_routes, load_template

ROOT = Path(__file__).resolve().parents[2]
OPENAPI = yaml.safe_load((ROOT / "openapi.yaml").read_text())
NOW = datetime.now(UTC)


METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


def test_same_routes_as_the_template() -> None:
    served = {
        (r.method.lower(), r.path)
        for r in http_routes(load_template(ROOT / "template.yaml"))
        if r.path != DEFAULT_ROUTE  # the catch-all answers 404/405 only
    }
    documented = {(method, path) for path, item in OPENAPI["paths"].items() for method in item if method in METHODS}
    assert documented == served


@pytest.mark.parametrize(("path", "item"), list(OPENAPI["paths"].items()))
def test_authenticated_operations_document_401_and_problems(path: str, item: dict[str, Any]) -> None:
    for method, operation in item.items():
        if method not in METHODS or operation.get("security") == []:
            continue
        assert "401" in operation["responses"], path
        for status, response in operation["responses"].items():
            if status == "413":  # the function's problem, or API Gateway's own answer over its payload limit
                assert response == {"$ref": "#/components/responses/PayloadTooLarge"}, path
            elif status == "429":  # the credential's rate (a problem), or API Gateway's own throttling
                assert response == {"$ref": "#/components/responses/TooManyRequests"}, path
            elif status.startswith(("4", "5")):
                assert response == {"$ref": "#/components/responses/Problem"}, (path, status)


def test_the_one_answer_api_gateway_gives_itself_is_documented_as_its_own() -> None:
    content = OPENAPI["components"]["responses"]["PayloadTooLarge"]["content"]
    assert content["application/problem+json"]["schema"] == {"$ref": "#/components/schemas/Problem"}
    assert content["application/json"]["schema"]["required"] == ["message"]


def required(schema: str) -> set[str]:
    return set(OPENAPI["components"]["schemas"][schema]["required"])


def test_views_carry_the_required_fields() -> None:
    user_id = str(uuid.uuid4())
    identity = ExternalIdentity(str(uuid.uuid4()), user_id, Platform.WHATSAPP, "5511", True, NOW)
    user = User(user_id, "Ana", UserType.AGENT, None, None, {}, True, NOW, NOW, [identity])
    message = Message(
        str(uuid.uuid4()), str(uuid.uuid4()), user_id, "hi", None, Platform.WHATSAPP, Direction.OUTBOUND, 1,
        MessageStatus.PENDING, [StatusEntry(MessageStatus.PENDING, NOW)], NOW, "fp",
    )  # fmt: skip
    conversation = Conversation(
        str(uuid.uuid4()), ConversationType.ONE_TO_ONE, [Participant(user_id, NOW)], Platform.WHATSAPP, 0, NOW, NOW
    )
    accepted = AcceptedMessage(message.message_id, message.conversation_id, 1, MessageStatus.PENDING, "/x")
    assert required("User") <= set(views.user_view(user))
    assert required("ExternalIdentity") <= set(views.identity_view(identity))
    assert required("Message") <= set(views.message_view(message))
    assert required("Conversation") <= set(views.conversation_view(conversation))
    assert required("AcceptedMessage") <= set(views.accepted_view(accepted))
    assert views.message_view(message)["created_at"].endswith("Z")
    channel = ChannelInfo(str(uuid.uuid4()), Platform.TELEGRAM, "bot", True, None, NOW, NOW)
    assert required("Channel") <= set(views.channel_view(channel))
    record = AuditRecord(7, NOW, "key", "admin", "user.updated", "user", user_id, {"a": 1}, {"a": 2}, "r", "1.2.3.4")
    assert required("AuditEntry") <= set(views.audit_record_view(record))
    key = ApiKey(str(uuid.uuid4()), "k", Role.AGENT, user_id, NOW)
    assert required("ApiKey") <= set(views.api_key_view(key, "c4a_x"))


def valid(schema: str, instance: Any) -> None:
    """`instance` as the document's schema `schema` describes it (its $refs resolved in the document)."""
    jsonschema.Draft202012Validator({**OPENAPI, "$ref": f"#/components/schemas/{schema}"}).validate(instance)


def test_a_group_messages_deliveries_are_as_documented() -> None:
    # GIVEN a GROUP message to three recipients: one SENT on Telegram, one FAILED without a route, one whose
    # delivery is not stored yet (accepted, not fanned out)
    sender, *recipients = sorted(str(uuid.uuid4()) for _ in range(4))
    on_telegram, nowhere, waiting = recipients[2], recipients[0], recipients[1]
    message = Message(
        str(uuid.uuid4()), str(uuid.uuid4()), sender, "hi all", None, Platform.WHATSAPP, Direction.OUTBOUND, 3,
        MessageStatus.SENT, [StatusEntry(MessageStatus.PENDING, NOW), StatusEntry(MessageStatus.SENT, NOW)], NOW,
        "fp", recipients=(on_telegram, nowhere, waiting),
    )  # fmt: skip
    channel_id = str(uuid.uuid4())
    deliveries = [
        Delivery(
            message.message_id, message.conversation_id, on_telegram, 3, Platform.TELEGRAM, channel_id,
            MessageStatus.SENT, [StatusEntry(MessageStatus.PENDING, NOW), StatusEntry(MessageStatus.SENT, NOW)],
            platform_message_id="7012345678:4242:57",
        ),
        Delivery(
            message.message_id, message.conversation_id, nowhere, 3, None, None, MessageStatus.FAILED,
            [StatusEntry(MessageStatus.PENDING, NOW), StatusEntry(MessageStatus.FAILED, NOW, "no identity")],
            error="no identity",
        ),
    ]  # fmt: skip

    # WHEN it is shown as GET /v1/messages/{id} and GET /v1/messages/{id}/status show it
    view = views.message_view(message, deliveries)
    status = views.message_status_view(message, deliveries)

    # THEN one delivery per recipient, by user_id, with the documented fields, and the counts of every status
    valid("Message", view)
    assert [d["user_id"] for d in view["deliveries"]] == sorted(recipients)
    for item in view["deliveries"]:
        assert required("Delivery") <= set(item)
        valid("Delivery", item)
    by_user = {d["user_id"]: d for d in view["deliveries"]}
    assert by_user[on_telegram]["platform_message_id"] == "57"  # Telegram's message_id, as the contract names it
    assert (by_user[on_telegram]["platform"], by_user[on_telegram]["channel_id"]) == ("TELEGRAM", channel_id)
    assert (by_user[nowhere]["status"], by_user[nowhere]["platform"], by_user[nowhere]["error"]) == (
        "FAILED", None, "no identity",
    )  # fmt: skip
    assert by_user[nowhere]["history"][-1] == {"status": "FAILED", "at": views.timestamp(NOW), "detail": "no identity"}
    assert (by_user[waiting]["status"], by_user[waiting]["platform"]) == ("PENDING", None)
    assert view["delivery_counts"] == {"PENDING": 1, "SENT": 1, "DELIVERED": 0, "READ": 0, "FAILED": 1}
    valid("DeliveryCounts", view["delivery_counts"])
    assert (status["deliveries"], status["delivery_counts"]) == (view["deliveries"], view["delivery_counts"])

    # AND a one-to-one message has neither field, nor does a history page list them
    one_to_one = Message(
        str(uuid.uuid4()), str(uuid.uuid4()), sender, "hi", None, Platform.WHATSAPP, Direction.OUTBOUND, 1,
        MessageStatus.PENDING, [StatusEntry(MessageStatus.PENDING, NOW)], NOW, "fp",
    )  # fmt: skip
    for shown in (views.message_view(one_to_one, []), views.message_status_view(one_to_one, [])):
        assert not {"deliveries", "delivery_counts"} & set(shown)
    assert "deliveries" not in views.message_view(message)


def test_the_documented_group_example_is_valid() -> None:
    response = OPENAPI["paths"]["/v1/messages/{message_id}"]["get"]["responses"]["200"]
    example = response["content"]["application/json"]["examples"]["group"]["value"]
    valid("Message", example)
    counts = {status: 0 for status in example["delivery_counts"]}
    for item in example["deliveries"]:
        counts[item["status"]] += 1
    assert counts == example["delivery_counts"]
    assert [d["user_id"] for d in example["deliveries"]] == sorted(d["user_id"] for d in example["deliveries"])
