"""openapi.yaml describes exactly the routes template.yaml serves, and the views carry its required fields."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from chat4all.api import views
from chat4all.domain.models import (
    ApiKey,
    AuditRecord,
    ChannelInfo,
    Conversation,
    ConversationType,
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
