"""Every /v1 operation against every kind of caller: exactly the contract's status, and nobody else's data.

Callers: no token, a bad token, a revoked key, an expired JWT, a JWT from another issuer, a deactivated
user's key (401 each), an agent key of another user (403: the resources belong to other people), and an
admin key (the operation's success status).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from devstack.template import http_routes, load_template
from tests.support.jwks import LocalIssuer, new_key

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    import httpx

    from tests.integration.conftest import Api

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class World:
    """Resources of agent B and customer C, and one credential of each kind of caller."""

    api: Api
    agent_b: dict[str, Any]
    customer_c: dict[str, Any]
    conversation_id: str
    message_id: str
    channel_id: str
    conversation_channel_id: str  # the enabled WhatsApp channel conversations go out through
    credentials: dict[str, str | None]  # caller -> Authorization header value (None: no header)
    secrets: list[str]  # values that belong to B and C and must never reach another caller

    def fresh_identity(self) -> str:
        body = {"platform": "TELEGRAM", "platform_user_id": str(uuid.uuid4().int)[:12]}
        return str(self.api.created(f"/v1/users/{self.customer_c['user_id']}/identities", body)["identity_id"])

    def fresh_file(self) -> str:
        """A file of B's conversation, made by an admin (no bytes uploaded)."""
        body = {
            "filename": "matrix.png",
            "mime_type": "image/png",
            "size": 1000,
            "conversation_id": self.conversation_id,
        }
        return str(self.api.created("/v1/files", body)["file_id"])

    def fresh_channel(self) -> str:
        return str(self.api.created("/v1/channels", whatsapp_channel_body("to delete"))["channel_id"])

    def fresh_user(self) -> str:
        return str(self.api.created("/v1/users", {"display_name": "Extra", "user_type": "AGENT"})["user_id"])

    def fresh_group(self) -> tuple[str, str]:
        """A GROUP conversation of B, C and a third user; returns its id and the third user's."""
        third = self.fresh_user()
        body = {
            "conversation_type": "GROUP",
            "participants": [self.agent_b["user_id"], self.customer_c["user_id"], third],
            "primary_channel": "WHATSAPP",
            "channel_id": self.conversation_channel_id,
        }
        return str(self.api.created("/v1/conversations", body)["conversation_id"]), third

    def fresh_key(self) -> str:
        body = {"name": "to revoke", "role": "agent", "user_id": self.agent_b["user_id"]}
        return str(self.api.created("/v1/api-keys", body)["key_id"])


def whatsapp_channel_body(name: str) -> dict[str, Any]:
    # disabled: a channel of this test must never become the one other tests' messages go out through
    credentials = {
        "access_token": f"EAAG{uuid.uuid4().hex}",
        "phone_number_id": str(uuid.uuid4().int)[:15],
        "app_secret": uuid.uuid4().hex,
        "verify_token": uuid.uuid4().hex,
    }
    return {"platform": "WHATSAPP", "name": name, "credentials": credentials, "enabled": False}


@pytest.fixture(scope="module")
def world(api: Api, issuer: LocalIssuer, whatsapp_channel: Any) -> Iterator[World]:
    tag = uuid.uuid4().hex[:8]
    agent_a = api.created("/v1/users", {"display_name": "Alice Agent", "user_type": "AGENT"})
    agent_b = api.created(
        "/v1/users", {"display_name": f"Bruno {tag}", "user_type": "AGENT", "email": f"bruno.{tag}@example.com"}
    )
    phone = "+4930" + str(uuid.uuid4().int)[:8]
    customer_c = api.created("/v1/users", {"display_name": f"Clara {tag}", "user_type": "CUSTOMER", "phone": phone})
    conversation_channel_id = whatsapp_channel[0]["channel_id"]
    conversation = api.created(
        "/v1/conversations",
        {
            "conversation_type": "ONE_TO_ONE",
            "participants": [agent_b["user_id"], customer_c["user_id"]],
            "primary_channel": "WHATSAPP",
            "channel_id": conversation_channel_id,
        },
    )
    content = f"private words {tag}"
    sent = api.call(
        "POST",
        "/v1/messages",
        json={"conversation_id": conversation["conversation_id"], "sender_id": agent_b["user_id"], "content": content},
    )
    assert sent.status_code == 202, sent.text
    channel = api.created("/v1/channels", whatsapp_channel_body(f"matrix {tag}"))

    def agent_key(user_id: str) -> str:
        return str(api.created("/v1/api-keys", {"name": "k", "role": "agent", "user_id": user_id})["api_key"])

    key_a = agent_key(agent_a["user_id"])
    revoked_user = api.created("/v1/users", {"display_name": "Rita Revoked", "user_type": "AGENT"})
    revoked = api.created("/v1/api-keys", {"name": "gone", "role": "agent", "user_id": revoked_user["user_id"]})
    assert api.call("DELETE", f"/v1/api-keys/{revoked['key_id']}").status_code == 204
    deactivated_user = api.created("/v1/users", {"display_name": "Dora Deactivated", "user_type": "AGENT"})
    deactivated_key = agent_key(deactivated_user["user_id"])
    patched = api.call("PATCH", f"/v1/users/{deactivated_user['user_id']}", json={"active": False})
    assert patched.status_code == 200, patched.text
    elsewhere = LocalIssuer(new_key("RS256"))
    try:
        credentials: dict[str, str | None] = {
            "no token": None,
            "bad token": "Bearer c4a_this-key-was-never-issued",
            "revoked key": f"Bearer {revoked['api_key']}",
            "expired JWT": f"Bearer {issuer.token(agent_a['user_id'], role='admin', expires_in=-3600)}",
            "JWT of another issuer": f"Bearer {elsewhere.token(agent_a['user_id'], role='admin')}",
            "deactivated user's key": f"Bearer {deactivated_key}",
            "agent key of another user": f"Bearer {key_a}",
            "admin key": f"Bearer {api.admin_key}",
        }
        secrets = [
            agent_b["user_id"],
            customer_c["user_id"],
            agent_b["email"],
            phone,
            f"Bruno {tag}",
            f"Clara {tag}",
            content,
            f"matrix {tag}",
        ]
        yield World(
            api,
            agent_b,
            customer_c,
            conversation["conversation_id"],
            sent.json()["message_id"],
            channel["channel_id"],
            conversation_channel_id,
            credentials,
            secrets,
        )
    finally:
        elsewhere.close()


@dataclass(frozen=True)
class Operation:
    method: str
    route: str  # as template.yaml names it
    admin_status: int
    target: Callable[[World], tuple[str, dict[str, Any] | None]]  # the concrete path and JSON body


OPERATIONS = [
    Operation("POST", "/v1/users", 201, lambda w: ("/v1/users", {"display_name": "New", "user_type": "CUSTOMER"})),
    Operation("GET", "/v1/users/{user_id}", 200, lambda w: (f"/v1/users/{w.agent_b['user_id']}", None)),
    Operation(
        "PATCH",
        "/v1/users/{user_id}",
        200,
        lambda w: (f"/v1/users/{w.customer_c['user_id']}", {"display_name": w.customer_c["display_name"]}),
    ),
    Operation(
        "POST",
        "/v1/users/{user_id}/identities",
        201,
        lambda w: (
            f"/v1/users/{w.customer_c['user_id']}/identities",
            {"platform": "INSTAGRAM", "platform_user_id": str(uuid.uuid4().int)[:16]},
        ),
    ),
    Operation(
        "DELETE",
        "/v1/users/{user_id}/identities/{identity_id}",
        204,
        lambda w: (f"/v1/users/{w.customer_c['user_id']}/identities/{w.fresh_identity()}", None),
    ),
    Operation(
        "GET",
        "/v1/users/{user_id}/link-suggestions",
        200,
        lambda w: (f"/v1/users/{w.customer_c['user_id']}/link-suggestions", None),
    ),
    Operation("POST", "/v1/channels", 201, lambda w: ("/v1/channels", whatsapp_channel_body("another"))),
    Operation("GET", "/v1/channels", 200, lambda w: ("/v1/channels", None)),
    Operation("GET", "/v1/channels/{channel_id}", 200, lambda w: (f"/v1/channels/{w.channel_id}", None)),
    Operation(
        "PATCH", "/v1/channels/{channel_id}", 200, lambda w: (f"/v1/channels/{w.channel_id}", {"enabled": False})
    ),
    Operation("DELETE", "/v1/channels/{channel_id}", 204, lambda w: (f"/v1/channels/{w.fresh_channel()}", None)),
    Operation(
        "POST",
        "/v1/api-keys",
        201,
        lambda w: ("/v1/api-keys", {"name": "new", "role": "agent", "user_id": w.agent_b["user_id"]}),
    ),
    Operation("DELETE", "/v1/api-keys/{key_id}", 204, lambda w: (f"/v1/api-keys/{w.fresh_key()}", None)),
    Operation("GET", "/v1/audit-log", 200, lambda w: ("/v1/audit-log?limit=5", None)),
    Operation(
        "POST",
        "/v1/conversations",
        201,
        lambda w: (
            "/v1/conversations",
            {
                "conversation_type": "ONE_TO_ONE",
                "participants": [w.agent_b["user_id"], w.customer_c["user_id"]],
                "primary_channel": "WHATSAPP",
                "channel_id": w.conversation_channel_id,
            },
        ),
    ),
    Operation(
        "GET", "/v1/conversations", 200, lambda w: (f"/v1/conversations?participant={w.agent_b['user_id']}", None)
    ),
    Operation(
        "POST",
        "/v1/conversations/{conversation_id}/participants",
        201,
        lambda w: (f"/v1/conversations/{w.fresh_group()[0]}/participants", {"user_id": w.fresh_user()}),
    ),
    Operation(
        "DELETE",
        "/v1/conversations/{conversation_id}/participants/{user_id}",
        204,
        lambda w: ("/v1/conversations/{}/participants/{}".format(*w.fresh_group()), None),
    ),
    Operation(
        "GET", "/v1/conversations/{conversation_id}", 200, lambda w: (f"/v1/conversations/{w.conversation_id}", None)
    ),
    Operation(
        "GET",
        "/v1/conversations/{conversation_id}/messages",
        200,
        lambda w: (f"/v1/conversations/{w.conversation_id}/messages", None),
    ),
    Operation(
        "POST",
        "/v1/messages",
        202,
        lambda w: (
            "/v1/messages",
            {"conversation_id": w.conversation_id, "sender_id": w.agent_b["user_id"], "content": "as someone else"},
        ),
    ),
    Operation("GET", "/v1/messages/{message_id}", 200, lambda w: (f"/v1/messages/{w.message_id}", None)),
    Operation("GET", "/v1/messages/{message_id}/status", 200, lambda w: (f"/v1/messages/{w.message_id}/status", None)),
    Operation(
        "POST",
        "/v1/files",
        201,
        lambda w: (
            "/v1/files",
            {"filename": "a.png", "mime_type": "image/png", "size": 1000, "conversation_id": w.conversation_id},
        ),
    ),
    Operation("GET", "/v1/files/{file_id}", 200, lambda w: (f"/v1/files/{w.fresh_file()}", None)),
    Operation("GET", "/v1/files/{file_id}/parts", 200, lambda w: (f"/v1/files/{w.fresh_file()}/parts", None)),
    # nothing was uploaded to it: an admin is told so (409); anyone else is refused before that
    Operation("POST", "/v1/files/{file_id}/complete", 409, lambda w: (f"/v1/files/{w.fresh_file()}/complete", None)),
    Operation("DELETE", "/v1/files/{file_id}", 204, lambda w: (f"/v1/files/{w.fresh_file()}", None)),
]

CALLERS = {
    "no token": 401,
    "bad token": 401,
    "revoked key": 401,
    "expired JWT": 401,
    "JWT of another issuer": 401,
    "deactivated user's key": 401,
    "agent key of another user": 403,
    "admin key": None,  # the operation's own success status
}


def test_the_table_covers_every_v1_operation_of_the_template() -> None:
    served = {
        (r.method, r.path) for r in http_routes(load_template(ROOT / "template.yaml")) if r.path.startswith("/v1")
    }
    assert {(op.method, op.route) for op in OPERATIONS} == served


def send_as(world: World, caller: str, method: str, path: str, body: dict[str, Any] | None) -> httpx.Response:
    authorization = world.credentials[caller]
    headers = {"Authorization": authorization} if authorization is not None else {}
    return world.api.client.request(method, path, json=body, headers=headers)


@pytest.mark.parametrize("caller", list(CALLERS))
@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda op: f"{op.method} {op.route}")
def test_each_caller_gets_exactly_the_contracts_status(world: World, operation: Operation, caller: str) -> None:
    path, body = operation.target(world)
    response = send_as(world, caller, operation.method, path, body)
    expected = CALLERS[caller] or operation.admin_status
    assert response.status_code == expected, f"{caller}: {operation.method} {path} -> {response.text}"
    if expected >= 400:
        assert response.headers["content-type"] == "application/problem+json"
        problem = response.json()
        assert problem["status"] == expected and {"type", "title", "detail"} <= set(problem)
        if expected == 401:
            assert response.headers["www-authenticate"] == "Bearer"
        # nobody else's data, not even an id, in a refusal
        leaked = [secret for secret in world.secrets if secret in response.text]
        assert leaked == [], f"{caller} saw {leaked}"


def test_an_agent_reads_only_itself_and_the_people_it_talks_to(api: Api, world: World) -> None:
    agent = api.created("/v1/users", {"display_name": "Gil Agent", "user_type": "AGENT"})
    stranger = api.created("/v1/users", {"display_name": "Stan Stranger", "user_type": "CUSTOMER"})
    key = api.created("/v1/api-keys", {"name": "gil", "role": "agent", "user_id": agent["user_id"]})["api_key"]
    assert api.call("GET", f"/v1/users/{agent['user_id']}", key=key).status_code == 200
    assert api.call("GET", f"/v1/users/{stranger['user_id']}", key=key).status_code == 403
    # an unknown id answers like a stranger: an agent cannot probe which users exist
    assert api.call("GET", f"/v1/users/{uuid.uuid4()}", key=key).status_code == 403
    conversation = {
        "conversation_type": "ONE_TO_ONE",
        "participants": [agent["user_id"], stranger["user_id"]],
        "primary_channel": "WHATSAPP",
        "channel_id": world.conversation_channel_id,
    }
    assert api.call("POST", "/v1/conversations", json=conversation, key=key).status_code == 201
    seen = api.call("GET", f"/v1/users/{stranger['user_id']}", key=key)
    assert seen.status_code == 200
    assert seen.json()["display_name"] == "Stan Stranger"


def test_deactivation_stops_keys_at_once_and_reactivation_restores_them(api: Api) -> None:
    user = api.created("/v1/users", {"display_name": "Paula Paused", "user_type": "AGENT"})
    key = api.created("/v1/api-keys", {"name": "p", "role": "agent", "user_id": user["user_id"]})["api_key"]
    own = f"/v1/users/{user['user_id']}"
    assert api.call("GET", own, key=key).status_code == 200
    assert api.call("PATCH", own, json={"active": False}).json()["active"] is False
    assert api.call("GET", own, key=key).status_code == 401
    assert api.call("PATCH", own, json={"active": True}).status_code == 200
    assert api.call("GET", own, key=key).status_code == 200
