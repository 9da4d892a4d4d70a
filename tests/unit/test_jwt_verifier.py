"""The JWT verifier against a local issuer: claims, caching of what cannot change, an issuer that is down."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import pytest

from chat4all.adapters.jwt import JwksTokenVerifier
from chat4all.domain.errors import DependencyUnavailableError, UnauthorizedError
from tests.support.jwks import LocalIssuer, new_key

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture(scope="module")
def issuer() -> Iterator[LocalIssuer]:
    server = LocalIssuer(new_key("RS256"), new_key("ES256"))
    yield server
    server.close()


def verifier_for(issuer: LocalIssuer) -> JwksTokenVerifier:
    return JwksTokenVerifier(issuer.issuer, "chat4all", issuer.issuer + "/.well-known/jwks.json")


def test_claims_and_one_jwks_fetch_for_many_tokens(issuer: LocalIssuer) -> None:
    verifier = verifier_for(issuer)
    before = issuer.fetches
    subject = str(uuid.uuid4())
    for key in issuer.published:
        claims = verifier.verify(issuer.token(subject, role="admin", key=key))
        assert (claims.subject, claims.role) == (subject, "admin")
    assert verifier.verify(issuer.token(subject)).role is None
    assert issuer.fetches == before + 1


@pytest.mark.parametrize(
    "change",
    [{"audience": "other"}, {"issuer": "https://elsewhere.example"}, {"expires_in": -300}],
)
def test_wrong_claims_are_unauthorized(issuer: LocalIssuer, change: dict[str, object]) -> None:
    with pytest.raises(UnauthorizedError):
        verifier_for(issuer).verify(issuer.token(str(uuid.uuid4()), **change))  # type: ignore[arg-type]


def test_an_issuer_that_cannot_be_reached_is_a_dependency_down() -> None:
    gone = LocalIssuer(new_key("RS256"))
    token = gone.token(str(uuid.uuid4()))
    verifier = verifier_for(gone)
    gone.close()
    with pytest.raises(DependencyUnavailableError):
        verifier.verify(token)
