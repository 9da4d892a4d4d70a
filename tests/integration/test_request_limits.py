"""Each API key and JWT subject is held to its request rate (429 with Retry-After past it); others are not."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import pytest
import redis

from chat4all.adapters.limits import RedisRequestLimiter
from devstack.processes import free_port

if TYPE_CHECKING:
    import httpx

    from devstack.stack import LocalPlatform
    from tests.integration.conftest import Api


def test_the_bucket_holds_a_seconds_worth_and_refills_at_the_rate_on_redis_clock(platform: LocalPlatform) -> None:
    limiter = RedisRequestLimiter(redis.Redis.from_url(platform.urls["redis"]))
    key = f"test:{uuid.uuid4()}"
    assert [limiter.wait_seconds(key, 5) for _ in range(5)] == [0.0] * 5
    wait = limiter.wait_seconds(key, 5)
    assert 0 < wait <= 0.2 + 0.05  # a token every 0.2 s
    time.sleep(wait + 0.05)
    assert limiter.wait_seconds(key, 5) == 0.0
    # a bucket of its own for every key
    assert limiter.wait_seconds(f"test:{uuid.uuid4()}", 5) == 0.0


def test_without_redis_every_request_is_let_through_and_redis_is_not_asked_again_at_once() -> None:
    limiter = RedisRequestLimiter(
        redis.Redis(host="127.0.0.1", port=free_port(), socket_timeout=0.5, socket_connect_timeout=0.5)
    )
    assert limiter.wait_seconds("test:down", 1) == 0.0
    started = time.monotonic()
    assert [limiter.wait_seconds("test:down", 1) for _ in range(50)] == [0.0] * 50
    assert time.monotonic() - started < 0.05  # not one connection attempt more


def agent_key(api: Api, rate_limit: int | None) -> tuple[str, str]:
    user = api.created("/v1/users", {"display_name": "Rita Rate", "user_type": "AGENT"})
    body = {"name": "rate test", "role": "agent", "user_id": user["user_id"]}
    if rate_limit is not None:
        body["rate_limit"] = rate_limit
    key = api.created("/v1/api-keys", body)
    assert key["rate_limit"] == rate_limit
    return user["user_id"], key["api_key"]


def test_a_key_limited_to_50_per_second_gets_429s_past_it_and_other_keys_do_not(api: Api) -> None:
    limited_user, limited = agent_key(api, 50)
    other_user, other = agent_key(api, None)

    def read(user_id: str, key: str) -> httpx.Response:
        return api.call("GET", f"/v1/users/{user_id}", key=key)

    # WHEN 300 requests of the limited key (and 60 of another key among them) come as fast as the stack takes them
    started = time.monotonic()
    with ThreadPoolExecutor(32) as pool:
        limited_answers = [pool.submit(read, limited_user, limited) for _ in range(300)]
        other_answers = [pool.submit(read, other_user, other) for _ in range(60)]
        answers = [f.result() for f in limited_answers]
        others = [f.result() for f in other_answers]
    elapsed = time.monotonic() - started
    # THEN the limited key got at most its bucket (50) and 50 a second more, and 429 problems for the rest
    statuses = [a.status_code for a in answers]
    assert set(statuses) <= {200, 429}, statuses
    allowed = statuses.count(200)
    assert 50 <= allowed <= 50 + 50 * elapsed + 5, (allowed, elapsed)
    refused = [a for a in answers if a.status_code == 429]
    assert refused, elapsed
    for answer in refused:
        assert answer.headers["content-type"] == "application/problem+json"
        assert int(answer.headers["Retry-After"]) >= 1
        assert answer.json()["status"] == 429
    # and the other key (the platform's default rate) was not held back by it
    assert [a.status_code for a in others] == [200] * 60


def test_with_redis_down_requests_are_still_served(api: Api, platform: LocalPlatform) -> None:
    user_id, key = agent_key(api, 5)
    try:
        server = platform.server_process("redis")
    except LookupError:
        pytest.skip("Redis was given by REDIS_URL: this test stops only a server the stack started")
    server.stop()
    try:
        # more requests than the key's rate, all served: the limit fails open
        answers = [api.call("GET", f"/v1/users/{user_id}", key=key).status_code for _ in range(12)]
        assert answers == [200] * 12
    finally:
        platform.restart_server("redis")
    # and with Redis back (once the containers ask it again) the key is limited again
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if any(api.call("GET", f"/v1/users/{user_id}", key=key).status_code == 429 for _ in range(10)):
            break
        time.sleep(1)
    else:
        pytest.fail("the key was not limited again within 30 s of Redis coming back")
