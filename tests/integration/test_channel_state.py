"""A channel shows its send rate and its state: the shared circuit breaker and whether its token works."""

from __future__ import annotations

import random
import uuid
from typing import TYPE_CHECKING, Any

import redis

from chat4all.adapters.breakers import BreakerSettings, RedisChannelBreaker
from chat4all.domain.models import Platform
from chat4all.domain.platforms import definition

if TYPE_CHECKING:
    from devstack.stack import LocalPlatform
    from tests.integration.conftest import Api


def telegram_credentials() -> dict[str, str]:
    bot_id = str(random.randrange(10**9, 10**10))
    return {"bot_token": f"{bot_id}:AAH{uuid.uuid4().hex}", "secret_token": f"tg_{uuid.uuid4().hex}"}


def new_channel(api: Api, **extra: Any) -> dict[str, Any]:
    body = {"platform": "TELEGRAM", "name": "state bot", "credentials": telegram_credentials(), **extra}
    return api.created("/v1/channels", body)


def test_a_channel_takes_its_platforms_rate_unless_it_has_its_own(api: Api) -> None:
    default = new_channel(api)
    assert default["rate_limit"] == definition(Platform.TELEGRAM).rate_limit
    assert default["state"] == {"breaker": "CLOSED", "credentials": "VALID"}
    own = new_channel(api, rate_limit=5)
    assert own["rate_limit"] == 5
    path = f"/v1/channels/{own['channel_id']}"
    assert api.call("PATCH", path, json={"rate_limit": 12}).json()["rate_limit"] == 12
    assert api.call("GET", path).json()["rate_limit"] == 12
    assert api.call("PATCH", path, json={"rate_limit": None}).json()["rate_limit"] == 30
    for bad in (0, -1, 100_001, "5", 2.5, True):
        body = {"platform": "TELEGRAM", "name": "x", "credentials": telegram_credentials(), "rate_limit": bad}
        answer = api.call("POST", "/v1/channels", json=body)
        assert answer.status_code == 422, (bad, answer.text)
        assert [e["field"] for e in answer.json()["errors"]] == ["rate_limit"], answer.text
        assert api.call("PATCH", path, json={"rate_limit": bad}).status_code == 422, bad


def test_the_breaker_every_instance_shares_shows_on_the_channel(api: Api, platform: LocalPlatform) -> None:
    channel = new_channel(api)
    path = f"/v1/channels/{channel['channel_id']}"
    settings = BreakerSettings(failure_threshold=2, failure_window_seconds=30, open_seconds=60, probe_lease_seconds=60)
    breaker = RedisChannelBreaker(redis.Redis.from_url(platform.urls["redis"]), settings)
    breaker.record(channel["channel_id"], success=False)
    breaker.record(channel["channel_id"], success=False)
    assert api.call("GET", path).json()["state"]["breaker"] == "OPEN"
    listed = {c["channel_id"]: c for c in api.call("GET", "/v1/channels").json()["items"]}
    assert listed[channel["channel_id"]]["state"]["breaker"] == "OPEN"
    breaker.record(channel["channel_id"], success=True)
    assert api.call("GET", path).json()["state"]["breaker"] == "CLOSED"


def test_a_rejected_token_shows_until_new_credentials_are_set(api: Api) -> None:
    from chat4all import bootstrap

    channel = new_channel(api)
    path = f"/v1/channels/{channel['channel_id']}"
    assert bootstrap.channels().reject_credentials(channel["channel_id"], "Telegram answered 401: Unauthorized")
    assert not bootstrap.channels().reject_credentials(channel["channel_id"], "again")  # kept once
    assert api.call("GET", path).json()["state"]["credentials"] == "REJECTED"
    # a rename does not clear it; new credentials do
    assert api.call("PATCH", path, json={"name": "renamed"}).json()["state"]["credentials"] == "REJECTED"
    rotated = api.call("PATCH", path, json={"credentials": telegram_credentials()})
    assert rotated.status_code == 200, rotated.text
    assert rotated.json()["state"]["credentials"] == "VALID"
    assert api.call("GET", path).json()["state"]["credentials"] == "VALID"
