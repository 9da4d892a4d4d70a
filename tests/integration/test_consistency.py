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
from chat4all.adapters.mongo.participations import participation_doc, participation_id
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


def insert_conversations(db: Any, *conversations: dict[str, Any]) -> None:
    """The conversations with their participations, as MongoConversationStore writes them."""
    db.conversations.insert_many(list(conversations))
    db.participations.insert_many(
        [
            participation_doc(c["_id"], p["user_id"], p["joined_at"], c["last_activity_at"])
            for c in conversations
            for p in c["participants"]
        ]
    )


def checked(
    *, messages: int, conversations: int, deliveries: int, participants: int, identities: int
) -> dict[str, int]:
    """The report's counts by kind; each participant has its participation in these tests' counts."""
    return {
        "message": messages,
        "conversation": conversations,
        "delivery": deliveries,
        "participant": participants,
        "participation": participants,
        "identity": identities,
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
        insert_conversations(db, *conversations)
        # 2,500 messages: more than two pages of the check's 1,000
        db.messages.insert_many(
            [message_doc(conversations[n % 3]["_id"], users[(n % 3) * 2], n + 1) for n in range(2500)]
        )

        report = run(database_url, mongodb_uri)
        assert report.errors == 0, report.findings
        assert report.notes == 0
        assert report.checked == checked(messages=2500, conversations=3, deliveries=0, participants=6, identities=1)
        assert consistency_cli([], {"DATABASE_URL": database_url, "MONGODB_URI": mongodb_uri}) == 0

        # planted: a message whose sender is nobody, a participant who is nobody, a conversation whose
        # channel is deleted while one of its messages is still PENDING, a participant without the participation
        # its user's list reads, and a participation left behind by a participant who is not one
        ghost, nobody = new_id(), new_id()
        orphan = message_doc(conversations[0]["_id"], ghost, 9999)
        db.messages.insert_one(orphan)
        stranger = conversation_doc([users[0], nobody], channel)
        on_doomed = conversation_doc([users[2], users[3]], doomed)
        insert_conversations(db, stranger, on_doomed)
        unlisted = participation_id(conversations[1]["_id"], users[2])
        db.participations.delete_one({"_id": unlisted})
        left_over = participation_doc(conversations[2]["_id"], users[0], NOW, NOW)
        db.participations.insert_one(left_over)
        db.messages.insert_one(message_doc(on_doomed["_id"], users[2], 1, status="PENDING"))
        conn.execute("DELETE FROM channels WHERE channel_id = %s", (doomed,))

    report = run(database_url, mongodb_uri)
    found = {(f.kind, f.document_id, f.problem, f.missing_id) for f in report.findings}
    assert found == {
        ("message", orphan["_id"], "sender missing", ghost),
        ("conversation", stranger["_id"], "participant missing", nobody),
        ("conversation", on_doomed["_id"], "channel missing (unsettled)", doomed),
        ("participant", unlisted, "participation missing", unlisted),
        ("participation", left_over["_id"], "participant missing", left_over["_id"]),
    }
    assert report.errors == 5
    assert report.checked == checked(messages=2502, conversations=5, deliveries=0, participants=10, identities=1)
    assert report.error_rate == 5 / (2502 + 5 + 10 + 10 + 1)
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


def delivery_doc(message: dict[str, Any], user_id: str, channel_id: str, status: str = "SENT") -> dict[str, Any]:
    return {
        "_id": new_id(),
        "message_id": message["_id"],
        "conversation_id": message["conversation_id"],
        "user_id": user_id,
        "sequence": message["sequence"],
        "platform": "WHATSAPP",
        "channel_id": channel_id,
        "address": "5511999990000",
        "status": status,
        "history": [{"status": status, "at": NOW}],
        "created_at": NOW,
        "applied_reports": [],
    }


def test_every_reference_kind_has_its_planted_orphan(databases: tuple[str, str]) -> None:
    """Beyond the test above: GROUP recipients, deliveries (their message, recipient and channel, settled or
    not), a message whose conversation is gone, a settled conversation on a deleted channel, an identity whose
    user is gone. A clean GROUP conversation with more than a page of deliveries first reports 0."""
    database_url, mongodb_uri = databases
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongodb_uri, tz_aware=True)
    db = client.get_default_database()
    with psycopg.connect(database_url, autocommit=True) as conn:
        users = [add_user(conn) for _ in range(4)]
        channel, doomed, retired = add_channel(conn), add_channel(conn), add_channel(conn)
        group = conversation_doc(users, channel) | {"conversation_type": "GROUP"}
        insert_conversations(db, group)
        # 400 GROUP messages to 3 recipients: 1,200 deliveries, two pages, each page's messages asked at once
        messages = [message_doc(group["_id"], users[0], n + 1) | {"recipients": users[1:]} for n in range(400)]
        db.messages.insert_many(messages)
        db.deliveries.insert_many([delivery_doc(m, u, channel) for m in messages for u in users[1:]])
        clean = run(database_url, mongodb_uri)
        assert clean.errors == 0, clean.findings
        assert clean.notes == 0
        assert clean.checked == checked(messages=400, conversations=1, deliveries=1200, participants=4, identities=0)

        ghost, lost_conversation, lost_message = new_id(), new_id(), new_id()
        bad_recipient = message_doc(group["_id"], users[0], 401) | {"recipients": [users[1], ghost]}
        homeless = message_doc(lost_conversation, users[0], 1)
        late = message_doc(group["_id"], users[0], 402, status="PENDING") | {"recipients": users[1:3]}
        db.messages.insert_many([bad_recipient, homeless, late])
        vanished = {"_id": lost_message, "conversation_id": group["_id"], "sequence": 403}
        without_message = delivery_doc(vanished, users[1], channel)
        to_nobody = delivery_doc(bad_recipient, ghost, channel)
        pending_on_doomed = delivery_doc(late, users[1], doomed, status="PENDING")
        settled_on_doomed = delivery_doc(late, users[2], doomed, status="DELIVERED")
        db.deliveries.insert_many([without_message, to_nobody, pending_on_doomed, settled_on_doomed])
        # a conversation on a channel deleted after all its messages went out: settled, a note
        quiet = conversation_doc([users[0], users[1]], retired)
        insert_conversations(db, quiet)
        db.messages.insert_one(message_doc(quiet["_id"], users[0], 1, status="READ"))
        conn.execute("DELETE FROM channels WHERE channel_id = ANY(%s::uuid[])", ([doomed, retired],))
        # the foreign key forbids an identity without its user; a restore of a dump made without it would not
        orphan_identity, gone_user = new_id(), new_id()
        conn.execute("ALTER TABLE external_identities DROP CONSTRAINT external_identities_user_id_fkey")
        conn.execute(
            "INSERT INTO external_identities (identity_id, user_id, platform, platform_user_id, created_at)"
            " VALUES (%s, %s, 'TELEGRAM', '424242', %s)",
            (orphan_identity, gone_user, NOW),
        )

    report = run(database_url, mongodb_uri)
    found = {(f.kind, f.document_id, f.problem, f.missing_id, f.error) for f in report.findings}
    assert found == {
        ("message", bad_recipient["_id"], "recipient missing", ghost, True),
        ("message", homeless["_id"], "conversation missing", lost_conversation, True),
        ("delivery", without_message["_id"], "message missing", lost_message, True),
        ("delivery", to_nobody["_id"], "recipient missing", ghost, True),
        ("delivery", pending_on_doomed["_id"], "channel missing (unsettled)", doomed, True),
        ("delivery", settled_on_doomed["_id"], "channel missing (settled)", doomed, False),
        ("conversation", quiet["_id"], "channel missing (settled)", retired, False),
        ("identity", orphan_identity, "user missing", orphan_identity, True),
    }
    assert report.errors == 6
    assert report.notes == 2
    assert report.checked == checked(messages=404, conversations=2, deliveries=1204, participants=6, identities=1)
    assert report.error_rate == 6 / (404 + 2 + 1204 + 6 + 6 + 1)
    assert consistency_cli([], {"DATABASE_URL": database_url, "MONGODB_URI": mongodb_uri}) == 1
    client.close()
