"""A request interrupted at its deadline leaves the container's connections usable for the next one."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pytest
import redis

from chat4all.adapters.postgres import PostgresDatabase
from chat4all.api.app import RequestDeadlineError, deadline

if TYPE_CHECKING:
    from devstack.stack import LocalPlatform


def test_postgres_interrupted_mid_query_answers_the_next_transaction(platform: LocalPlatform) -> None:
    database = PostgresDatabase(platform.urls["postgres"])
    try:
        started = time.monotonic()
        with pytest.raises(RequestDeadlineError), deadline(0.3), database.transaction() as cursor:
            cursor.execute("SELECT pg_sleep(5)")
        assert time.monotonic() - started < 2
        with database.transaction() as cursor:
            cursor.execute("SELECT 41 + 1 AS answer")
            assert cursor.fetchone() == {"answer": 42}
    finally:
        database.close()


def test_redis_interrupted_mid_command_answers_the_next_one(platform: LocalPlatform) -> None:
    client = redis.Redis.from_url(platform.urls["redis"])
    started = time.monotonic()
    with pytest.raises(RequestDeadlineError), deadline(0.3):
        client.blpop(["chat4all-test-nothing-ever-comes"], timeout=5)
    assert time.monotonic() - started < 2
    assert client.ping() is True
    client.set("chat4all-test-deadline", "after")
    assert client.get("chat4all-test-deadline") == b"after"
    client.close()
