"""The consistency check against real servers: a PostgreSQL database and a MongoDB database of its own
(migrated and filled here), so that "0 on a clean run" does not depend on what other tests left behind; and
the scheduled ConsistencyFunction through the local runtime, on the platform's databases."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import psycopg
import pymongo
import pytest

from chat4all.adapters.mongo import ensure_indexes
from chat4all.adapters.postgres import PostgresDatabase, migrate
from chat4all.ops.consistency import main as consistency_cli
from chat4all.ops.consistency import run
from devstack.stack import postgres_database, with_database

if TYPE_CHECKING:
    from collections.abc import Iterator

    from devstack.stack import LocalPlatform

NOW = datetime.now(UTC)


def new_id() -> str:
    return str(uuid.uuid4())


@pytest.fixture
def databases(platform: LocalPlatform) -> Iterator[tuple[str, str]]:
    name = f"chat4all_consistency_{uuid.uuid4().hex[:8]}"
    postgres_database(platform.urls["postgres_server"], name, drop=True, create=True)
    database_url = with_database(platform.urls["postgres_server"], name)
    database = PostgresDatabase(database_url)
    migrate(database)
    database.close()
    mongodb_uri = with_database(platform.urls["mongo_server"], name)
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongodb_uri, tz_aware=True)
    ensure_indexes(client.get_default_database())
    try:
        yield database_url, mongodb_uri
    finally:
        client.drop_database(name)
        client.close()
        postgres_database(platform.urls["postgres_server"], name, drop=True, create=False)


def add_user(conn: psycopg.Connection[Any]) -> str:
    user_id = new_id()
    conn.execute(
        "INSERT INTO users (user_id, display_name, user_type, created_at, updated_at)"
        " VALUES (%s, 'U', 'AGENT', %s, %s)",
        (user_id, NOW, NOW),
    )
    return user_id


def add_channel(conn: psycopg.Connection[Any]) -> str:
    channel_id = new_id()
    conn.execute(
        "INSERT INTO channels (channel_id, platform, name, credentials_ciphertext, created_at, updated_at)"
        " VALUES (%s, 'WHATSAPP', 'C', 'x', %s, %s)",
        (channel_id, NOW, NOW),
    )
    return channel_id


def conversation_doc(participants: list[str], channel_id: str) -> dict[str, Any]:
    return {
        "_id": new_id(),
        "conversation_type": "ONE_TO_ONE",
        "participants": [{"user_id": p, "joined_at": NOW} for p in participants],
        "primary_channel": "WHATSAPP",
        "channel_id": channel_id,
        "message_count": 0,
        "last_sequence": 0,
        "last_activity_at": NOW,
        "created_at": NOW,
    }


def message_doc(conversation_id: str, sender_id: str, sequence: int, status: str = "SENT") -> dict[str, Any]:
    return {
        "_id": new_id(),
        "conversation_id": conversation_id,
        "sender_id": sender_id,
        "sequence": sequence,
        "status": status,
        "channel": "WHATSAPP",
        "direction": "OUTBOUND",
        "history": [{"status": status, "at": NOW}],
        "created_at": NOW,
    }


def test_a_clean_run_reports_zero_and_planted_orphans_are_found(databases: tuple[str, str]) -> None:
    database_url, mongodb_uri = databases
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongodb_uri, tz_aware=True)
    db = client.get_default_database()
    with psycopg.connect(database_url, autocommit=True) as conn:
        users = [add_user(conn) for _ in range(6)]
        channel = add_channel(conn)
        doomed = add_channel(conn)
        conn.execute(
            "INSERT INTO external_identities (identity_id, user_id, platform, platform_user_id, created_at)"
            " VALUES (%s, %s, 'WHATSAPP', '5511999990000', %s)",
            (new_id(), users[1], NOW),
        )
        conversations = [conversation_doc([users[i], users[i + 1]], channel) for i in range(0, 6, 2)]
        db.conversations.insert_many(conversations)
        # 2,500 messages: more than two pages of the check's 1,000
        db.messages.insert_many(
            [message_doc(conversations[n % 3]["_id"], users[(n % 3) * 2], n + 1) for n in range(2500)]
        )

        report = run(database_url, mongodb_uri)
        assert report.errors == 0, report.findings
        assert report.notes == 0
        assert report.checked == {"message": 2500, "conversation": 3, "delivery": 0, "identity": 1}
        assert consistency_cli([], {"DATABASE_URL": database_url, "MONGODB_URI": mongodb_uri}) == 0

        # planted: a message whose sender is nobody, a participant who is nobody, and a conversation whose
        # channel is deleted while one of its messages is still PENDING
        ghost, nobody = new_id(), new_id()
        orphan = message_doc(conversations[0]["_id"], ghost, 9999)
        db.messages.insert_one(orphan)
        stranger = conversation_doc([users[0], nobody], channel)
        on_doomed = conversation_doc([users[2], users[3]], doomed)
        db.conversations.insert_many([stranger, on_doomed])
        db.messages.insert_one(message_doc(on_doomed["_id"], users[2], 1, status="PENDING"))
        conn.execute("DELETE FROM channels WHERE channel_id = %s", (doomed,))

    report = run(database_url, mongodb_uri)
    found = {(f.kind, f.document_id, f.problem, f.missing_id) for f in report.findings}
    assert found == {
        ("message", orphan["_id"], "sender missing", ghost),
        ("conversation", stranger["_id"], "participant missing", nobody),
        ("conversation", on_doomed["_id"], "channel missing (unsettled)", doomed),
    }
    assert report.errors == 3
    assert report.error_rate == 3 / (2502 + 5 + 1)
    assert consistency_cli([], {"DATABASE_URL": database_url, "MONGODB_URI": mongodb_uri}) == 1
    client.close()


def test_the_scheduled_function_runs_through_the_local_runtime(platform: LocalPlatform) -> None:
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(platform.urls["mongo"], tz_aware=True)
    db = client.get_default_database()
    ghost = new_id()
    planted = message_doc(new_id(), ghost, 1)
    db.messages.insert_one(planted)
    try:
        event = {"source": "aws.events", "detail-type": "Scheduled Event", "detail": {}}
        result = platform.invoke("ConsistencyFunction", event)
        assert result.ok, result.payload
        report = result.json()
        assert report["checked"]["message"] >= 1
        assert report["errors"] >= 1
        assert report["error_rate"] == report["errors"] / report["total_checked"]
        if not report["findings_truncated"]:
            assert {"kind": "message", "document_id": planted["_id"], "problem": "sender missing",
                    "missing_id": ghost, "error": True} in report["findings"]  # fmt: skip
    finally:
        db.messages.delete_one({"_id": planted["_id"]})
        client.close()
    # the metric: Powertools' EMF line in the function's log
    log = platform.options.state_dir / "logs" / "functions" / "ConsistencyFunction.log"
    assert "ConsistencyErrorRate" in log.read_text()
