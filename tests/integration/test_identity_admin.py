"""Identity administration over HTTP: users, identities, link suggestions, channels and the audit log."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import pytest

from tests.support.fake_telegram import bot_token

if TYPE_CHECKING:
    from tests.integration.conftest import Api
    from tests.support.fake_instagram import FakeInstagram
    from tests.support.fake_telegram import FakeTelegram
    from tests.support.fake_whatsapp import FakeWhatsApp


def audit_of(api: Api, entity_id: str) -> list[dict[str, Any]]:
    response = api.call("GET", "/v1/audit-log", params={"entity_id": entity_id, "limit": 200})
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


def unique_phone() -> str:
    return "+5521" + str(uuid.uuid4().int)[:9]


def whatsapp_credentials(**override: str) -> dict[str, str]:
    return {
        "access_token": f"EAAG{uuid.uuid4().hex}",
        "phone_number_id": str(uuid.uuid4().int)[:15],
        "app_secret": uuid.uuid4().hex,
        "verify_token": uuid.uuid4().hex,
        **override,
    }


# ------------------------------------------------------------------ users


def test_patch_user_changes_named_fields_and_audits_before_and_after(api: Api) -> None:
    user = api.created("/v1/users", {"display_name": "Old Name", "user_type": "CUSTOMER", "email": "old@example.com"})
    path = f"/v1/users/{user['user_id']}"
    response = api.call(
        "PATCH",
        path,
        json={"display_name": "New Name", "phone": "+55 (21) 98765-4321"},
        headers={"X-Forwarded-For": "203.0.113.9"},
    )
    assert response.status_code == 200, response.text
    patched = response.json()
    assert (patched["display_name"], patched["phone"], patched["email"]) == (
        "New Name",
        "+5521987654321",
        "old@example.com",
    )
    assert patched["updated_at"] > user["updated_at"]
    assert api.call("GET", path).json()["display_name"] == "New Name"
    cleared = api.call("PATCH", path, json={"email": None})
    assert cleared.status_code == 200 and cleared.json()["email"] is None
    entries = audit_of(api, user["user_id"])
    assert [e["action"] for e in entries] == ["user.updated", "user.updated", "user.created"]  # newest first
    newest, change = entries[0], entries[1]
    assert (newest["before"]["email"], newest["after"]["email"]) == ("old@example.com", None)
    assert (change["before"]["display_name"], change["after"]["display_name"]) == ("Old Name", "New Name")
    assert change["actor_role"] == "admin" and change["actor"]
    assert change["request_id"] and change["source_ip"] == "127.0.0.1"
    assert entries[2]["before"] is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"display_name": None}, "body"),
        ({"active": None}, "body"),
        ({"user_type": "AGENT"}, "user_type"),
        ({"email": "not-an-email"}, "email"),
        ({"phone": "+0 123"}, "phone"),
        ({"phone": "5511999990000"}, "phone"),
    ],
)
def test_patch_user_refuses_what_cannot_change(api: Api, body: dict[str, Any], field: str) -> None:
    user = api.created("/v1/users", {"display_name": "Fixed", "user_type": "CUSTOMER"})
    response = api.call("PATCH", f"/v1/users/{user['user_id']}", json=body)
    assert response.status_code == 422, response.text
    assert any(e["field"].startswith(field) for e in response.json()["errors"]), response.text
    assert api.call("GET", f"/v1/users/{user['user_id']}").json()["display_name"] == "Fixed"
    assert [e["action"] for e in audit_of(api, user["user_id"])] == ["user.created"]


def test_patch_unknown_user_is_404(api: Api) -> None:
    assert api.call("PATCH", f"/v1/users/{uuid.uuid4()}", json={"display_name": "x"}).status_code == 404


def test_unlink_identity(api: Api) -> None:
    user = api.created("/v1/users", {"display_name": "Ivo", "user_type": "CUSTOMER"})
    other = api.created("/v1/users", {"display_name": "Olga", "user_type": "CUSTOMER"})
    account = str(uuid.uuid4().int)[:12]
    identity = api.created(
        f"/v1/users/{user['user_id']}/identities", {"platform": "TELEGRAM", "platform_user_id": account}
    )
    # an identity is unlinked through its own user only
    assert api.call("DELETE", f"/v1/users/{other['user_id']}/identities/{identity['identity_id']}").status_code == 404
    assert api.call("DELETE", f"/v1/users/{user['user_id']}/identities/{identity['identity_id']}").status_code == 204
    assert api.call("GET", f"/v1/users/{user['user_id']}").json()["external_identities"] == []
    assert api.call("DELETE", f"/v1/users/{user['user_id']}/identities/{identity['identity_id']}").status_code == 404
    # the account is free again
    api.created(f"/v1/users/{other['user_id']}/identities", {"platform": "TELEGRAM", "platform_user_id": account})
    entries = audit_of(api, user["user_id"])
    assert [e["action"] for e in entries] == ["identity.unlinked", "identity.linked", "user.created"]
    assert entries[0]["before"]["platform_user_id"] == account and entries[0]["after"] is None


def test_link_suggestions_match_e164_phones_and_case_folded_emails(api: Api) -> None:
    tag = uuid.uuid4().hex[:8]
    phone = unique_phone()
    spaced = f"{phone[:3]} {phone[3:5]} {phone[5:9]}-{phone[9:]}"
    user = api.created(
        "/v1/users",
        {"display_name": "Ana", "user_type": "CUSTOMER", "email": f"Strasse.{tag}@Example.COM", "phone": phone},
    )
    same_phone = api.created("/v1/users", {"display_name": "Ana 2", "user_type": "CUSTOMER", "phone": spaced})
    same_email = api.created(
        "/v1/users", {"display_name": "Ana 3", "user_type": "CUSTOMER", "email": f"STRASSE.{tag}@example.com"}
    )
    on_whatsapp = api.created("/v1/users", {"display_name": "Ana 4", "user_type": "CUSTOMER"})
    api.created(
        f"/v1/users/{on_whatsapp['user_id']}/identities", {"platform": "WHATSAPP", "platform_user_id": phone[1:]}
    )
    api.created("/v1/users", {"display_name": "Unrelated", "user_type": "CUSTOMER", "phone": unique_phone()})
    response = api.call("GET", f"/v1/users/{user['user_id']}/link-suggestions")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["user_id"] == user["user_id"]
    found = {s["user"]["user_id"]: s["matched_on"] for s in body["items"]}
    assert found == {
        same_phone["user_id"]: ["phone"],
        same_email["user_id"]: ["email"],
        on_whatsapp["user_id"]: ["phone"],
    }
    assert same_phone["phone"] == phone  # stored in E.164 whatever the spacing
    nobody = api.created("/v1/users", {"display_name": "Solo", "user_type": "CUSTOMER"})
    assert api.call("GET", f"/v1/users/{nobody['user_id']}/link-suggestions").json()["items"] == []
    assert api.call("GET", f"/v1/users/{uuid.uuid4()}/link-suggestions").status_code == 404


# ------------------------------------------------------------------ channels


def test_channel_lifecycle_with_rotation_checked_by_whatsapp(api: Api, fake_whatsapp: FakeWhatsApp) -> None:
    agent = api.created("/v1/users", {"display_name": "Default Agent", "user_type": "AGENT"})
    first = whatsapp_credentials()
    created = api.created(
        "/v1/channels",
        {"platform": "WHATSAPP", "name": "Sales", "credentials": first, "enabled": False},
    )
    channel_id = created["channel_id"]
    assert (created["enabled"], created["default_agent_id"]) == (False, None)
    lookup = f"/v21.0/{first['phone_number_id']}"
    assert (lookup, f"Bearer {first['access_token']}") in [(p, h["authorization"]) for p, h in fake_whatsapp.lookups]
    assert api.call("GET", f"/v1/channels/{channel_id}").json() == created
    assert channel_id in [c["channel_id"] for c in api.call("GET", "/v1/channels").json()["items"]]

    # a default agent must be an active AGENT user
    customer = api.created("/v1/users", {"display_name": "Not An Agent", "user_type": "CUSTOMER"})
    for wrong in (customer["user_id"], str(uuid.uuid4())):
        refused = api.call("PATCH", f"/v1/channels/{channel_id}", json={"default_agent_id": wrong})
        assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == "default_agent_id"
    changed = api.call(
        "PATCH", f"/v1/channels/{channel_id}", json={"name": "Sales BR", "default_agent_id": agent["user_id"]}
    )
    assert changed.status_code == 200, changed.text
    assert (changed.json()["name"], changed.json()["default_agent_id"]) == ("Sales BR", agent["user_id"])

    # rotation: refused by WhatsApp -> 422 and nothing changes; accepted -> new credentials in use
    refused_token = f"EAAG{uuid.uuid4().hex}"
    fake_whatsapp.refused_tokens.add(refused_token)
    bad = api.call(
        "PATCH", f"/v1/channels/{channel_id}", json={"credentials": whatsapp_credentials(access_token=refused_token)}
    )
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "credentials.access_token"
    second = whatsapp_credentials()
    rotated = api.call("PATCH", f"/v1/channels/{channel_id}", json={"credentials": second})
    assert rotated.status_code == 200, rotated.text
    from chat4all import bootstrap

    stored = bootstrap.channels().get_channel(channel_id)
    assert stored is not None and stored.credentials == second
    shape = api.call("PATCH", f"/v1/channels/{channel_id}", json={"credentials": {"bot_token": "1:x"}})
    assert shape.status_code == 422
    assert {e["field"] for e in shape.json()["errors"]} >= {"credentials.access_token", "credentials.bot_token"}
    assert api.call("PATCH", f"/v1/channels/{channel_id}", json={"name": None}).status_code == 422

    assert api.call("DELETE", f"/v1/channels/{channel_id}").status_code == 204
    assert api.call("GET", f"/v1/channels/{channel_id}").status_code == 404
    assert api.call("DELETE", f"/v1/channels/{channel_id}").status_code == 404
    assert api.call("PATCH", f"/v1/channels/{channel_id}", json={"enabled": True}).status_code == 404

    entries = audit_of(api, channel_id)
    assert [e["action"] for e in entries] == [
        "channel.deleted",
        "channel.credentials_rotated",
        "channel.updated",
        "channel.created",
    ]
    assert entries[1]["after"]["credentials"] == "rotated"
    everything = str(entries)
    for secret in (*first.values(), *second.values()):
        if len(secret) > 15:  # the phone number id is not a secret
            assert secret not in everything


def test_telegram_credentials_are_checked_with_get_me(api: Api, fake_telegram: FakeTelegram) -> None:
    token = bot_token(7000000000 + uuid.uuid4().int % 10**9, uuid.uuid4().hex + "AAbb")
    body = {"platform": "TELEGRAM", "name": "Bot", "credentials": {"bot_token": token, "secret_token": "s3cr3t_T"}}
    created = api.call("POST", "/v1/channels", json={**body, "enabled": False})
    assert created.status_code == 201, created.text
    assert token not in created.text
    assert any(t == token for t, _ in fake_telegram.called("getMe"))
    fake_telegram.refused_tokens.add(token)
    refused = api.call("POST", "/v1/channels", json={**body, "enabled": False})
    assert refused.status_code == 422
    assert refused.json()["errors"] == [{"field": "credentials.bot_token", "message": "TELEGRAM refused it (HTTP 401)"}]
    assert token not in refused.text
    malformed = api.call(
        "POST", "/v1/channels", json={**body, "credentials": {"bot_token": "nope", "secret_token": "a b"}}
    )
    assert malformed.status_code == 422
    assert {e["field"] for e in malformed.json()["errors"]} == {"credentials.bot_token", "credentials.secret_token"}


def test_instagram_credentials_are_checked_with_me(api: Api, fake_instagram: FakeInstagram) -> None:
    token, account = f"IGQV{uuid.uuid4().hex}", str(uuid.uuid4().int)[:17]
    fake_instagram.add_account(token, account)
    credentials = {"access_token": token, "ig_user_id": account, "app_secret": "a" * 32, "verify_token": "vt"}
    body = {"platform": "INSTAGRAM", "name": "Insta", "credentials": credentials, "enabled": False}
    created = api.call("POST", "/v1/channels", json=body)
    assert created.status_code == 201, created.text
    assert created.json()["platform"] == "INSTAGRAM" and token not in created.text
    someone_else = api.call("POST", "/v1/channels", json={**body, "credentials": {**credentials, "ig_user_id": "1234"}})
    assert someone_else.status_code == 422
    assert someone_else.json()["errors"][0]["field"] == "credentials.ig_user_id"
    unknown = api.call(
        "POST", "/v1/channels", json={**body, "credentials": {**credentials, "access_token": "IGQVnope"}}
    )
    assert unknown.status_code == 422
    assert unknown.json()["errors"][0]["field"] == "credentials.access_token"


def test_credentials_never_reach_a_response_or_a_log_line(
    api: Api, fake_whatsapp: FakeWhatsApp, capfd: pytest.CaptureFixture[str]
) -> None:
    credentials = whatsapp_credentials()
    refused = whatsapp_credentials()
    fake_whatsapp.refused_tokens.add(refused["access_token"])
    responses = [
        api.call("POST", "/v1/channels", json={"platform": "WHATSAPP", "name": "L", "credentials": c, "enabled": False})
        for c in (credentials, refused)
    ]
    assert [r.status_code for r in responses] == [201, 422]
    channel_id = responses[0].json()["channel_id"]
    responses.append(api.call("GET", f"/v1/channels/{channel_id}"))
    responses.append(api.call("GET", "/v1/channels"))
    responses.append(api.call("GET", "/v1/audit-log", params={"entity_id": channel_id}))
    out, err = capfd.readouterr()
    secrets = [
        credentials["access_token"],
        credentials["app_secret"],
        credentials["verify_token"],
        refused["app_secret"],
    ]
    for secret in secrets:
        assert secret not in out and secret not in err
        assert all(secret not in r.text for r in responses)
