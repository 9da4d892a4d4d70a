"""Bad input gets the right 4xx as problem JSON, and nothing is stored or sent."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import httpx

    from tests.integration.conftest import Api, WhatsAppSetup
    from tests.support.fake_whatsapp import FakeWhatsApp


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = dict(response.json())
    assert body["status"] == status
    assert {"type", "title", "detail"} <= set(body)
    return body


def history_size(api: Api, conversation_id: str) -> int:
    return len(api.call("GET", f"/v1/conversations/{conversation_id}/messages").json()["items"])


@pytest.mark.parametrize(
    ("change", "status", "field"),
    [
        ({"content": "x" * 10_001}, 422, "content"),
        ({"content": ""}, 422, "content"),
        ({"content": None}, 422, "body"),
        ({"conversation_id": "not-a-uuid"}, 422, "conversation_id"),
        ({"channel_type": "SMS"}, 422, "channel_type"),
        ({"unexpected": 1}, 422, "unexpected"),
    ],
)
def test_invalid_bodies_are_422_with_field_errors(
    api: Api, whatsapp_conversation: WhatsAppSetup, change: dict[str, Any], status: int, field: str
) -> None:
    setup = whatsapp_conversation
    body = {"conversation_id": setup.conversation_id, "sender_id": setup.agent_id, "content": "hi", **change}
    body = {k: v for k, v in body.items() if v is not None}
    problem = assert_problem(api.call("POST", "/v1/messages", json=body), status)
    assert any(e["field"] == field or e["field"].startswith(field) for e in problem["errors"]), problem
    assert history_size(api, setup.conversation_id) == 0


def test_missing_field_is_422(api: Api, whatsapp_conversation: WhatsAppSetup) -> None:
    setup = whatsapp_conversation
    problem = assert_problem(api.call("POST", "/v1/messages", json={"sender_id": setup.agent_id, "content": "hi"}), 422)
    assert [e["field"] for e in problem["errors"]] == ["conversation_id"]
    assert history_size(api, setup.conversation_id) == 0


def test_ten_thousand_characters_is_accepted(api: Api, whatsapp_conversation: WhatsAppSetup) -> None:
    setup = whatsapp_conversation
    body = {"conversation_id": setup.conversation_id, "sender_id": setup.agent_id, "content": "y" * 10_000}
    assert api.call("POST", "/v1/messages", json=body).status_code == 202


@pytest.mark.parametrize("raw", [b"{not json", b"", b"[1, 2]", b'"text"', b"\xff\xfe"])
def test_malformed_json_is_400(api: Api, whatsapp_conversation: WhatsAppSetup, raw: bytes) -> None:
    response = api.call("POST", "/v1/messages", content=raw, headers={"Content-Type": "application/json"})
    assert_problem(response, 400)
    assert history_size(api, whatsapp_conversation.conversation_id) == 0


def test_oversized_body_is_413(api: Api, whatsapp_conversation: WhatsAppSetup) -> None:
    setup = whatsapp_conversation
    body = {"conversation_id": setup.conversation_id, "sender_id": setup.agent_id, "content": "z" * 400_000}
    assert_problem(api.call("POST", "/v1/messages", json=body), 413)
    assert history_size(api, setup.conversation_id) == 0


def test_unknown_conversation_is_422(api: Api, whatsapp_conversation: WhatsAppSetup) -> None:
    unknown = str(uuid.uuid4())
    body = {"conversation_id": unknown, "sender_id": whatsapp_conversation.agent_id, "content": "hi"}
    problem = assert_problem(api.call("POST", "/v1/messages", json=body), 422)
    assert problem["errors"][0]["field"] == "conversation_id"
    assert api.call("GET", f"/v1/conversations/{unknown}").status_code == 404


def test_sender_not_a_participant_is_403(
    api: Api, whatsapp_conversation: WhatsAppSetup, fake_whatsapp: FakeWhatsApp
) -> None:
    setup = whatsapp_conversation
    outsider = api.created("/v1/users", {"display_name": "Olga Outsider", "user_type": "AGENT"})
    body = {"conversation_id": setup.conversation_id, "sender_id": outsider["user_id"], "content": "let me in"}
    assert_problem(api.call("POST", "/v1/messages", json=body), 403)
    assert history_size(api, setup.conversation_id) == 0
    assert fake_whatsapp.sent_to(setup.customer_phone) == []


@pytest.mark.parametrize(
    "authorization", [None, "Bearer c4a_not-a-real-key", "Basic YWRtaW46YWRtaW4=", "Bearer", "c4a_no_scheme"]
)
def test_bad_key_is_401(api: Api, whatsapp_conversation: WhatsAppSetup, authorization: str | None) -> None:
    setup = whatsapp_conversation
    headers = {"Authorization": authorization} if authorization is not None else {}
    body = {"conversation_id": setup.conversation_id, "sender_id": setup.agent_id, "content": "hi"}
    response = api.client.post("/v1/messages", json=body, headers=headers)
    assert_problem(response, 401)
    assert history_size(api, setup.conversation_id) == 0


def test_agent_key_acts_only_as_its_user(api: Api, whatsapp_conversation: WhatsAppSetup) -> None:
    setup = whatsapp_conversation
    key = api.created("/v1/api-keys", {"name": "ana", "role": "agent", "user_id": setup.agent_id})
    assert key["api_key"].startswith("c4a_")
    as_customer = {"conversation_id": setup.conversation_id, "sender_id": setup.customer_id, "content": "spoof"}
    assert_problem(api.call("POST", "/v1/messages", json=as_customer, key=key["api_key"]), 403)
    as_self = {"conversation_id": setup.conversation_id, "sender_id": setup.agent_id, "content": "mine"}
    assert api.call("POST", "/v1/messages", json=as_self, key=key["api_key"]).status_code == 202
    # agents cannot create channels or keys
    assert_problem(api.call("POST", "/v1/api-keys", json={"name": "x", "role": "admin"}, key=key["api_key"]), 403)
    # a revoked key stops working at once
    assert api.call("DELETE", f"/v1/api-keys/{key['key_id']}").status_code == 204
    assert_problem(api.call("POST", "/v1/messages", json=as_self, key=key["api_key"]), 401)
    assert_problem(api.call("DELETE", f"/v1/api-keys/{key['key_id']}"), 404)


def test_identity_linked_to_another_user_is_409(api: Api, whatsapp_conversation: WhatsAppSetup) -> None:
    other = api.created("/v1/users", {"display_name": "Someone Else", "user_type": "CUSTOMER"})
    response = api.call(
        "POST",
        f"/v1/users/{other['user_id']}/identities",
        json={"platform": "WHATSAPP", "platform_user_id": whatsapp_conversation.customer_phone},
    )
    assert_problem(response, 409)
    assert api.call("GET", f"/v1/users/{other['user_id']}").json()["external_identities"] == []


def test_user_lookups(api: Api, whatsapp_conversation: WhatsAppSetup) -> None:
    user = api.call("GET", f"/v1/users/{whatsapp_conversation.customer_id}").json()
    assert [(i["platform"], i["platform_user_id"]) for i in user["external_identities"]] == [
        ("WHATSAPP", whatsapp_conversation.customer_phone)
    ]
    assert_problem(api.call("GET", f"/v1/users/{uuid.uuid4()}"), 404)
    assert_problem(api.call("GET", "/v1/users/not-a-uuid"), 404)
    assert_problem(api.call("POST", "/v1/users", json={"display_name": "x", "user_type": "ROBOT"}), 422)
    assert_problem(
        api.call("POST", "/v1/users", json={"display_name": "x", "user_type": "CUSTOMER", "phone": "12"}), 422
    )


def test_channel_credentials_are_validated_and_never_returned(api: Api) -> None:
    missing = {"platform": "WHATSAPP", "name": "broken", "credentials": {"access_token": "t"}}
    assert_problem(api.call("POST", "/v1/channels", json=missing), 422)
    secret = uuid.uuid4().hex
    credentials = {"access_token": secret, "phone_number_id": "1", "app_secret": secret, "verify_token": secret}
    response = api.call("POST", "/v1/channels", json={"platform": "WHATSAPP", "name": "ok", "credentials": credentials})
    assert response.status_code == 201
    assert secret not in response.text


def test_unknown_route_is_problem_404(api: Api) -> None:
    assert_problem(api.call("GET", "/v1/nothing-here"), 404)
