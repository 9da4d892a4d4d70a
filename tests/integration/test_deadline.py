"""A request interrupted at its deadline leaves the container's connections usable for the next one."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import psycopg
import pytest
import redis

from chat4all.adapters.postgres import PostgresDatabase
from chat4all.api.app import RequestDeadlineError, deadline
from chat4all.domain.errors import DependencyUnavailableError

if TYPE_CHECKING:
    from devstack.stack import LocalPlatform


@pytest.mark.parametrize("mode", ["transaction", "statement"])
def test_postgres_interrupted_mid_query_answers_the_next_query(platform: LocalPlatform, mode: str) -> None:
    database = PostgresDatabase(platform.urls["postgres"])
    cursor_of = database.transaction if mode == "transaction" else database.statement
    try:
        started = time.monotonic()
        with pytest.raises(RequestDeadlineError), deadline(0.3), cursor_of() as cursor:
            cursor.execute("SELECT pg_sleep(5)")
        assert time.monotonic() - started < 2
        with cursor_of() as cursor:
            cursor.execute("SELECT 41 + 1 AS answer")
            assert cursor.fetchone() == {"answer": 42}
    finally:
        database.close()


@pytest.mark.parametrize("mode", ["transaction", "statement"])
def test_postgres_connection_killed_by_the_server_is_unavailable_once_then_replaced(
    platform: LocalPlatform, mode: str
) -> None:
    database = PostgresDatabase(platform.urls["postgres"])
    cursor_of = database.transaction if mode == "transaction" else database.statement
    try:
        with cursor_of() as cursor:
            cursor.execute("SELECT pg_backend_pid() AS pid")
            row = cursor.fetchone()
        assert row is not None
        with psycopg.connect(platform.urls["postgres"], autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (row["pid"],))
        with pytest.raises(DependencyUnavailableError), cursor_of() as cursor:
            cursor.execute("SELECT 1")
        with cursor_of() as cursor:
            cursor.execute("SELECT pg_backend_pid() AS pid")
            again = cursor.fetchone()
        assert again is not None and again["pid"] != row["pid"]
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
