"""OAuth2 bearer JWTs of the configured issuer (CHAT4ALL_JWT_ISSUER), verified against its JWKS."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from typing import TYPE_CHECKING, Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from tests.support.jwks import LocalIssuer, SigningKey, new_key

if TYPE_CHECKING:
    import httpx

    from tests.integration.conftest import Api


def as_bearer(api: Api, token: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return api.client.request(method, path, headers={"Authorization": f"Bearer {token}"}, **kwargs)


@pytest.fixture
def person(api: Api) -> dict[str, Any]:
    return api.created("/v1/users", {"display_name": "Jo Token", "user_type": "AGENT"})


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
def test_an_admin_token_administers_and_is_audited_as_its_subject(
    api: Api, issuer: LocalIssuer, person: dict[str, Any], algorithm: str
) -> None:
    key = next(k for k in issuer.published if k.algorithm == algorithm)
    token = issuer.token(person["user_id"], role="admin", key=key)
    created = as_bearer(api, token, "POST", "/v1/users", json={"display_name": "Made by JWT", "user_type": "CUSTOMER"})
    assert created.status_code == 201, created.text
    entry = api.call("GET", "/v1/audit-log", params={"entity_id": created.json()["user_id"]}).json()["items"][0]
    assert (entry["actor"], entry["actor_role"]) == (f"jwt:{person['user_id']}", "admin")


def test_a_token_without_a_role_is_an_agent_acting_as_its_subject(
    api: Api, issuer: LocalIssuer, person: dict[str, Any]
) -> None:
    token = issuer.token(person["user_id"])
    assert as_bearer(api, token, "GET", f"/v1/users/{person['user_id']}").status_code == 200
    other = api.created("/v1/users", {"display_name": "Someone", "user_type": "CUSTOMER"})
    assert as_bearer(api, token, "GET", f"/v1/users/{other['user_id']}").status_code == 403
    refused = as_bearer(api, token, "POST", "/v1/users", json={"display_name": "x", "user_type": "CUSTOMER"})
    assert refused.status_code == 403
    assert refused.headers["content-type"] == "application/problem+json"


def test_a_deactivated_subject_is_refused_at_once(api: Api, issuer: LocalIssuer, person: dict[str, Any]) -> None:
    token = issuer.token(person["user_id"], role="admin")
    own = f"/v1/users/{person['user_id']}"
    assert as_bearer(api, token, "GET", own).status_code == 200
    assert api.call("PATCH", own, json={"active": False}).status_code == 200
    assert as_bearer(api, token, "GET", own).status_code == 401


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _hs256_with_public_key(issuer: LocalIssuer, subject: str) -> str:
    """The classic key-confusion forgery: HMAC keyed with the issuer's public key (PyJWT refuses to make one)."""
    rsa_key = next(k for k in issuer.published if k.algorithm == "RS256")
    pem = rsa_key.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    claims = {"iss": issuer.issuer, "aud": "chat4all", "sub": subject, "exp": int(time.time()) + 600}
    signing_input = (
        _b64(json.dumps({"alg": "HS256", "kid": rsa_key.kid}).encode())
        + "."
        + _b64(json.dumps({**claims, "chat4all_role": "admin"}).encode())
    )
    return signing_input + "." + _b64(hmac.new(pem, signing_input.encode(), hashlib.sha256).digest())


def _foreign_key_with_known_kid(issuer: LocalIssuer, subject: str) -> str:
    impostor = SigningKey(issuer.published[0].kid, "RS256", new_key("RS256").private_key)
    return issuer.token(subject, role="admin", key=impostor)


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param(lambda i, s: i.token(s, role="admin", audience="someone-else"), id="wrong audience"),
        pytest.param(lambda i, s: i.token(s, role="admin", issuer="https://evil.example"), id="wrong issuer claim"),
        pytest.param(lambda i, s: i.token(s, role="admin", expires_in=-120), id="expired"),
        pytest.param(lambda i, s: i.token("not-a-user-id", role="admin"), id="sub not a user id"),
        pytest.param(lambda i, s: i.token(str(uuid.uuid4()), role="admin"), id="sub no such user"),
        pytest.param(lambda i, s: i.token(s, role="root"), id="unknown role"),
        pytest.param(
            lambda i, s: jwt.encode(
                {"iss": i.issuer, "aud": "chat4all", "sub": s, "exp": time.time() + 600}, None, "none"
            ),
            id="alg none",
        ),
        pytest.param(_foreign_key_with_known_kid, id="known kid, foreign key"),
        pytest.param(_hs256_with_public_key, id="HS256 with the public key"),
        pytest.param(lambda i, s: "e30.e30.e30", id="garbage"),
    ],
)
def test_forged_and_foreign_tokens_are_401(api: Api, issuer: LocalIssuer, person: dict[str, Any], forge: Any) -> None:
    token = forge(issuer, person["user_id"])
    response = as_bearer(api, token, "GET", f"/v1/users/{person['user_id']}")
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == "application/problem+json"


def test_a_rotated_signing_key_is_picked_up_from_the_jwks(
    api: Api, issuer: LocalIssuer, person: dict[str, Any]
) -> None:
    own = f"/v1/users/{person['user_id']}"
    old_keys = list(issuer.published)
    assert as_bearer(api, issuer.token(person["user_id"]), "GET", own).status_code == 200
    rotated = new_key("ES256")
    # a key the issuer has not published yet is not trusted
    assert as_bearer(api, issuer.token(person["user_id"], key=rotated), "GET", own).status_code == 401
    try:
        issuer.publish(rotated, *old_keys)
        token = issuer.token(person["user_id"], key=rotated)
        # the verifier refetches the JWKS for an unknown key id, at most once per short cooldown
        deadline = time.monotonic() + 60
        while (status := as_bearer(api, token, "GET", own).status_code) != 200:
            assert status == 401
            assert time.monotonic() < deadline, "the rotated key was never fetched"
            time.sleep(0.5)
    finally:
        issuer.publish(*old_keys)
