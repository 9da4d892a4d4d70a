"""Hostile input is a 4xx problem everywhere, stores nothing, and no answer names an internal."""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any

import pytest

from tests.support.fake_whatsapp import sign

if TYPE_CHECKING:
    import httpx

    from devstack.stack import LocalPlatform
    from tests.integration.conftest import Api, WhatsAppSetup

INTERNALS = ("127.0.0.1", "localhost", "psycopg", "pymongo", "botocore", "Traceback", "postgres", "redis://", ":55")


def assert_4xx_problem(response: httpx.Response, status: int | None = None) -> dict[str, Any]:
    assert 400 <= response.status_code < 500, response.text
    if status is not None:
        assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = dict(response.json())
    assert body["status"] == response.status_code
    for internal in INTERNALS:
        assert internal not in response.text, response.text
    return body


def raw_post(api: Api, path: str, raw: bytes) -> httpx.Response:
    headers = {"Authorization": f"Bearer {api.admin_key}", "Content-Type": "application/json"}
    return api.client.post(path, content=raw, headers=headers)


def nested(depth: int) -> bytes:
    return (
        b'{"display_name": "x", "user_type": "CUSTOMER", "metadata": ' + b'{"a": ' * depth + b"1" + b"}" * depth + b"}"
    )


USER = b'{"display_name": "x", "user_type": "CUSTOMER", "metadata": {"n": %s}}'


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (USER % b"NaN", 400),
        (USER % b"Infinity", 400),
        (USER % b"-Infinity", 400),
        (USER % b"1e400", 400),
        (USER % (b"9" * 5000), 400),
        (nested(33), 400),
        (nested(5000), 400),
        (b'{"display_name": "nul\\u0000byte", "user_type": "CUSTOMER"}', 422),
        (b'{"display_name": "x", "user_type": "CUSTOMER", "metadata": {"k\\u0000": 1}}', 422),
        (b'{"display_name": "x", "user_type": "CUSTOMER", "metadata": {"deep": ["\\u0000"]}}', 422),
        (b'{"display_name": "x", "user_type": "CUSTOMER", "email": "a\\u0000@b.co"}', 422),
        (b'{"display_name": "x", "user_type": "CUSTOMER", "admin": true}', 422),
        (b'{"display_name": "' + b"x" * 201 + b'", "user_type": "CUSTOMER"}', 422),
        (
            b'{"display_name": "x", "user_type": "CUSTOMER", "metadata": {'
            + b",".join(b'"k%d": 1' % i for i in range(101))
            + b"}}",
            422,
        ),
        (b"\xff\xfe{}", 400),
    ],
)
def test_hostile_user_bodies(api: Api, raw: bytes, status: int) -> None:
    before = len(api.call("GET", "/v1/audit-log", params={"limit": 200}).json()["items"])
    assert_4xx_problem(raw_post(api, "/v1/users", raw), status)
    assert len(api.call("GET", "/v1/audit-log", params={"limit": 200}).json()["items"]) == before


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/channels", {"platform": "WHATSAPP", "name": "n\x00", "credentials": {}}),
        ("/v1/channels", {"platform": "TELEGRAM", "name": "n", "credentials": {"bot_token": "1:\x00"}}),
        ("/v1/api-keys", {"name": "k\x00", "role": "admin"}),
        ("/v1/conversations", {"conversation_type": "GROUP", "participants": ["\x00"], "primary_channel": "WHATSAPP"}),
    ],
)
def test_nul_anywhere_is_422(api: Api, path: str, body: dict[str, Any]) -> None:
    problem = assert_4xx_problem(api.call("POST", path, json=body), 422)
    assert any("NUL" in e["message"] for e in problem["errors"]), problem


def test_nul_in_messages_and_identities(api: Api, whatsapp_conversation: WhatsAppSetup) -> None:
    setup = whatsapp_conversation
    message = {"conversation_id": setup.conversation_id, "sender_id": setup.agent_id, "content": "a\x00b"}
    assert_4xx_problem(api.call("POST", "/v1/messages", json=message), 422)
    identity = {"platform": "TELEGRAM", "platform_user_id": "12\x0034"}
    assert_4xx_problem(api.call("POST", f"/v1/users/{setup.customer_id}/identities", json=identity), 422)
    patch = {"display_name": "\x00"}
    assert_4xx_problem(api.call("PATCH", f"/v1/users/{setup.customer_id}", json=patch), 422)
    assert_4xx_problem(api.call("GET", "/v1/audit-log", params={"entity_id": "a\x00b"}), 422)
    assert_4xx_problem(api.call("GET", "/v1/audit-log", params={"unknown": "1"}), 422)
    assert_4xx_problem(api.call("GET", "/v1/audit-log", params={"before": "NaN"}), 422)
    assert_4xx_problem(api.call("GET", "/v1/audit-log", params={"limit": "1e400"}), 422)


@pytest.mark.parametrize("token", ["t\u00f6ken", "two words", "tab\there", ""])
def test_credentials_must_be_visible_ascii(api: Api, token: str) -> None:
    credentials = {"access_token": token, "phone_number_id": "1", "app_secret": "s", "verify_token": "v"}
    body = {"platform": "WHATSAPP", "name": "c", "credentials": credentials, "enabled": False}
    problem = assert_4xx_problem(api.call("POST", "/v1/channels", json=body), 422)
    assert [e["field"] for e in problem["errors"]] == ["credentials.access_token"]


def test_unknown_user_references_are_422(api: Api) -> None:
    for role in ("admin", "agent"):
        body = {"name": "k", "role": role, "user_id": str(uuid.uuid4())}
        problem = assert_4xx_problem(api.call("POST", "/v1/api-keys", json=body), 422)
        assert problem["errors"][0]["field"] == "user_id"
    channel = {
        "platform": "WHATSAPP",
        "name": "c",
        "credentials": {"access_token": "t", "phone_number_id": "1", "app_secret": "s", "verify_token": "v"},
        "default_agent_id": str(uuid.uuid4()),
    }
    problem = assert_4xx_problem(api.call("POST", "/v1/channels", json=channel), 422)
    assert problem["errors"][0]["field"] == "default_agent_id"


def test_deeply_nested_signed_webhook_is_400(api: Api, whatsapp_conversation: WhatsAppSetup) -> None:
    body = b'{"object": "whatsapp_business_account", "entry": ' + b"[" * 20000 + b"]" * 20000 + b"}"
    secret = whatsapp_conversation.credentials["app_secret"]
    response = api.client.post(
        "/webhooks/whatsapp",
        content=body,
        headers={"X-Hub-Signature-256": sign(secret, body), "Content-Type": "application/json"},
    )
    assert_4xx_problem(response, 400)


def test_a_dependency_that_is_down_is_503_naming_no_internal(platform: LocalPlatform, api: Api) -> None:
    # the identity function's PostgreSQL moves to a port where nothing listens (UpdateFunctionConfiguration)
    assert platform.runtime is not None
    # (the functions read their database URL from a secret; a DATABASE_URL in the environment wins over it)
    environment = platform.function_environment("IdentityFunction")
    real_url = platform.urls["postgres_app"]
    down = real_url.replace(real_url.rpartition("@")[2].split("/")[0], "127.0.0.1:9")
    platform.runtime.update_function_environment("IdentityFunction", {**environment, "DATABASE_URL": down})
    try:
        response = api.call("POST", "/v1/users", json={"display_name": "x", "user_type": "CUSTOMER"})
    finally:
        platform.runtime.update_function_environment("IdentityFunction", environment)
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    for internal in INTERNALS:
        assert internal not in response.text, response.text
    assert json.loads(response.text)["detail"] == "a service this request depends on is unavailable; retry shortly"
    assert api.call("POST", "/v1/users", json={"display_name": "x", "user_type": "CUSTOMER"}).status_code == 201
