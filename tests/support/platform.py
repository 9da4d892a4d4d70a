"""The platform under test as pytest fixtures: real PostgreSQL, Redis, MongoDB-wire server and LocalStack,
started once per session, with local servers in the channels' own formats and a JWT issuer.

Registered for the whole suite by tests/conftest.py, so that every test directory (the integration suite,
the port contract suite) shares one stack. Servers given by URL (DATABASE_URL, MONGODB_URI, REDIS_URL,
AWS_ENDPOINT_URL) are used as they are; the tests still create a database of their own in them and drop it
afterwards.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.support.fake_instagram import FakeInstagram
from tests.support.fake_telegram import FakeTelegram
from tests.support.fake_whatsapp import FakeWhatsApp
from tests.support.jwks import LocalIssuer, new_key
from tests.support.waiting import alive

if TYPE_CHECKING:
    from collections.abc import Iterator

    from devstack.stack import LocalPlatform


@pytest.fixture(scope="session")
def fake_whatsapp() -> Iterator[FakeWhatsApp]:
    server = FakeWhatsApp()
    yield server
    server.close()


@pytest.fixture(scope="session")
def fake_telegram() -> Iterator[FakeTelegram]:
    server = FakeTelegram()
    yield server
    server.close()


@pytest.fixture(scope="session")
def fake_instagram() -> Iterator[FakeInstagram]:
    server = FakeInstagram()
    yield server
    server.close()


@pytest.fixture(scope="session")
def issuer() -> Iterator[LocalIssuer]:
    """The OAuth2 issuer whose JWTs the platform accepts (CHAT4ALL_JWT_ISSUER), with keys of its own."""
    server = LocalIssuer(new_key("RS256"), new_key("ES256"))
    yield server
    server.close()


@pytest.fixture(scope="session")
def platform(
    fake_whatsapp: FakeWhatsApp, fake_telegram: FakeTelegram, fake_instagram: FakeInstagram, issuer: LocalIssuer
) -> Iterator[LocalPlatform]:
    # imported here: a run of the unit tests, which registers these fixtures too, never loads the local stack
    from devstack.stack import throwaway_platform

    settings = {
        "WHATSAPP_API_BASE": fake_whatsapp.url,
        "TELEGRAM_API_BASE": fake_telegram.url,
        "INSTAGRAM_API_BASE": fake_instagram.url,
        "CHAT4ALL_JWT_ISSUER": issuer.issuer,
    }
    with throwaway_platform("test", settings) as stack:
        yield stack
        assert stack.runtime is not None
        containers = [pid for pids in stack.runtime.container_pids().values() for pid in pids]
    # stopping the platform leaves no function container behind
    assert [pid for pid in containers if alive(pid)] == []
