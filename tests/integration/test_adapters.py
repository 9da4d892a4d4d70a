"""Adapter guarantees checked directly against the real servers."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
import redis
from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig, idempotent_function
from aws_lambda_powertools.utilities.idempotency.exceptions import IdempotencyValidationError
from pymongo import MongoClient, monitoring
from pymongo.errors import DuplicateKeyError

from chat4all.adapters import mongo
from chat4all.adapters.idempotency import RedisIdempotencyStore
from chat4all.adapters.mongo.documents import event_docs, message_doc
from chat4all.domain.models import (
    Conversation,
    ConversationType,
    Direction,
    DomainEvent,
    Message,
    MessageStatus,
    Participant,
    Platform,
)

# a sender id of the same form as a real user's: the API's schema says a sender_id is a UUID
SOMEONE = str(uuid.uuid4())

if TYPE_CHECKING:
    from devstack.stack import LocalPlatform
    from tests.integration.conftest import WhatsAppSetup


def test_idempotency_store_replays_completed_results_and_refuses_changed_payloads(platform: LocalPlatform) -> None:
    calls: list[str] = []
    store = RedisIdempotencyStore(client=redis.Redis.from_url(platform.urls["redis"]))
    config = IdempotencyConfig(event_key_jmespath="id", payload_validation_jmespath="body")

    @idempotent_function(data_keyword_argument="request", persistence_store=store, config=config)
    def handle(request: dict[str, str]) -> dict[str, str]:
        calls.append(request["body"])
        return {"answer": request["body"].upper()}

    key = str(uuid.uuid4())
    assert handle(request={"id": key, "body": "hello"}) == {"answer": "HELLO"}
    assert handle(request={"id": key, "body": "hello"}) == {"answer": "HELLO"}
    assert calls == ["hello"]
    with pytest.raises(IdempotencyValidationError):
        handle(request={"id": key, "body": "changed"})
    assert calls == ["hello"]


def test_audit_log_is_append_only(platform: LocalPlatform) -> None:
    with psycopg.connect(platform.urls["postgres"], autocommit=True) as conn:
        count = conn.execute("SELECT count(*) FROM audit_log").fetchone()
        assert count is not None and count[0] > 0  # the seeded admin key, at least
        for statement in ("UPDATE audit_log SET actor = 'someone else'", "DELETE FROM audit_log", "TRUNCATE audit_log"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
        after = conn.execute("SELECT count(*) FROM audit_log").fetchone()
        assert after == count


def test_every_change_is_audited_in_its_transaction(
    platform: LocalPlatform, whatsapp_conversation: WhatsAppSetup
) -> None:
    with psycopg.connect(platform.urls["postgres"], autocommit=True) as conn:
        users = conn.execute("SELECT user_id::text FROM users").fetchall()
        # a user is made by an admin or by the first message from an unknown sender
        created = ("user.created", "user.created_from_inbound")
        audited = {
            row[0] for row in conn.execute("SELECT entity_id FROM audit_log WHERE action = ANY(%s)", (list(created),))
        }
        assert {whatsapp_conversation.agent_id, whatsapp_conversation.customer_id} <= {u[0] for u in users}
        assert {u[0] for u in users} <= audited
        linked = conn.execute(
            "SELECT count(*) FROM audit_log WHERE action = 'identity.linked' AND entity_id = %s",
            (whatsapp_conversation.customer_id,),
        ).fetchone()
        assert linked == (1,)
        channel_audit = conn.execute("SELECT after::text FROM audit_log WHERE action = 'channel.created'").fetchall()
        stored = conn.execute("SELECT credentials_ciphertext FROM channels").fetchall()
    assert stored and channel_audit
    # credentials are encrypted at rest and never copied into the audit trail
    for (ciphertext,) in stored:
        assert b"access_token" not in bytes(ciphertext)
    for (data,) in channel_audit:
        assert "access_token" not in data and "app_secret" not in data


def test_history_pages_are_right_across_sequence_gaps_and_join_points(platform: LocalPlatform) -> None:
    # GIVEN a conversation whose messages skip every third sequence (as a store written before sequences
    # were gap-free might), its newest sequence recorded on the conversation
    db = mongo.connect(platform.urls["mongo"])
    conversations, messages = mongo.MongoConversationStore(db), mongo.MongoMessageStore(db)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    conversation = Conversation(
        str(uuid.uuid4()), ConversationType.ONE_TO_ONE, [], Platform.WHATSAPP, 0, start, start, None
    )
    conversations.add_conversation(conversation)
    present = [n for n in range(1, 91) if n % 3]
    for n in present:
        # written as such a store did, with its own sequences (the adapter now takes the next one itself)
        db.messages.insert_one(message_doc(
            Message(
                str(uuid.uuid4()), conversation.conversation_id, SOMEONE, f"m{n}", None, Platform.WHATSAPP,
                Direction.OUTBOUND, n, MessageStatus.PENDING, [], start + timedelta(seconds=n), "",
            )
        ))  # fmt: skip
    db.conversations.update_one({"_id": conversation.conversation_id}, {"$set": {"last_sequence": 90}})

    def page(limit: int, before: int | None = None, since: datetime | None = None) -> list[int]:
        found = messages.conversation_page(
            conversation.conversation_id, limit=limit, before_sequence=before, since=since
        )
        return [m.sequence for m in found]

    # THEN each page holds exactly the newest `limit` messages below its cursor, wherever the gaps fall
    assert page(5) == [89, 88, 86, 85, 83]
    assert page(5, before=83) == [82, 80, 79, 77, 76]
    assert page(200) == sorted(present, reverse=True)
    assert page(5, before=3) == [2, 1]
    # AND a participant who joined late sees only what came after, however far back the page reaches
    assert page(50, since=start + timedelta(seconds=80)) == [89, 88, 86, 85, 83, 82, 80]
    assert page(5, before=10, since=start + timedelta(seconds=80)) == []


def test_finding_a_message_by_its_platform_id_reads_an_index_not_the_collection(platform: LocalPlatform) -> None:
    # a status webhook looks its message up by platform id: a collection scan would cost every webhook the
    # whole history of the platform
    recorder = _MessagesCommands("find")
    client: MongoClient[dict[str, Any]] = MongoClient(platform.urls["mongo"], event_listeners=[recorder])
    db = client.get_default_database(mongo.DEFAULT_DATABASE)
    store = mongo.MongoMessageStore(db)
    wamid = f"wamid.{uuid.uuid4().hex}"
    start = datetime.now(UTC)
    message = Message(
        str(uuid.uuid4()), str(uuid.uuid4()), SOMEONE, "hi", None, Platform.WHATSAPP, Direction.OUTBOUND, 1,
        MessageStatus.SENT, [], start, "", platform_message_id=wamid,
    )  # fmt: skip
    db.messages.insert_one(message_doc(message))
    found = store.find_by_platform_id(Platform.WHATSAPP, wamid)
    assert found is not None and found.message_id == message.message_id
    assert store.find_by_platform_id(Platform.INSTAGRAM, wamid) is None
    # the query the adapter sent is planned on the index
    finds = [command["filter"] for command in recorder.commands]
    assert finds, "the adapter sent no find"
    plan = db.messages.find(finds[0]).explain()["queryPlanner"]["winningPlan"]
    assert plan["stage"] == "FETCH", plan
    assert plan["inputStage"]["stage"] == "IXSCAN" and plan["inputStage"]["indexName"] == "platform_message_id_sparse"
    # AND the index still refuses a second message with the same platform id
    with pytest.raises(DuplicateKeyError):
        db.messages.insert_one({"_id": str(uuid.uuid4()), "platform_message_id": wamid})
    client.close()


def test_published_events_are_forgotten_a_few_messages_per_update(platform: LocalPlatform) -> None:
    # SecantusDB matches each message's events against the update's whole `$in` list while it holds the
    # collection's write lock: one update for hundreds of messages stalled every send's insert for seconds
    recorder = _MessagesCommands("update")
    client: MongoClient[dict[str, Any]] = MongoClient(platform.urls["mongo"], event_listeners=[recorder])
    db = client.get_default_database(mongo.DEFAULT_DATABASE)
    outbox = mongo.MongoEventOutbox(db)
    conversation_id = str(uuid.uuid4())
    # GIVEN 25 messages, each with two events kept, and a third event on each that the bus has not taken yet
    message_ids = [str(uuid.uuid4()) for _ in range(25)]
    published: list[DomainEvent] = []
    for sequence, message_id in enumerate(message_ids, start=1):
        events = [
            DomainEvent("MessageSent", {"n": n}, event_id=str(uuid.uuid4()), message_id=message_id) for n in range(3)
        ]
        doc = {"_id": message_id, "conversation_id": conversation_id, "sequence": sequence}
        db.messages.insert_one({**doc, "pending_events": event_docs(events)})
        published += events[:2]
    # WHEN the two published ones of every message are forgotten
    outbox.published(published)
    # THEN only each message's unpublished event is left
    for message_id in message_ids:
        doc = db.messages.find_one({"_id": message_id})
        assert doc is not None
        assert [e["detail"]["n"] for e in doc["pending_events"]] == [2]
    # AND it took three updates of at most 10 messages, each naming only its own messages' events
    updates = [statement for command in recorder.commands for statement in command["updates"]]
    assert [len(u["q"]["_id"]["$in"]) for u in updates] == [10, 10, 5]
    for update in updates:
        ids = set(update["q"]["_id"]["$in"])
        pulled = set(update["u"]["$pull"]["pending_events"]["id"]["$in"])
        assert pulled == {e.event_id for e in published if e.message_id in ids}
    db.messages.delete_many({"_id": {"$in": message_ids}})
    client.close()


class _MessagesCommands(monitoring.CommandListener):
    """The commands of one kind (find, update) a client sends to the messages collection, as sent."""

    def __init__(self, command_name: str) -> None:
        self.command_name = command_name
        self.commands: list[dict[str, Any]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == self.command_name and event.command.get(self.command_name) == "messages":
            self.commands.append(dict(event.command))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def test_the_open_conversation_on_a_channel_is_found_without_the_index_earlier_versions_made(
    platform: LocalPlatform,
) -> None:
    # GIVEN a database from an earlier version, with its (participant, channel, activity) index
    db = mongo.connect(platform.urls["mongo"])
    db.conversations.create_index(
        [("participants.user_id", 1), ("channel_id", 1), ("last_activity_at", -1)], name=mongo.OLD_CHANNEL_INDEX
    )
    # WHEN the indexes are ensured at start
    mongo.ensure_indexes(db)
    # THEN that index is gone (a send's write to the conversation no longer maintains it)
    assert mongo.OLD_CHANNEL_INDEX not in db.conversations.index_information()
    # AND a customer's open one-to-one conversation on a channel is the newest of those on that channel
    store = mongo.MongoConversationStore(db)
    customer, channel = str(uuid.uuid4()), str(uuid.uuid4())
    start = datetime(2026, 1, 1, tzinfo=UTC)

    def conversation(kind: ConversationType, channel_id: str, minutes: int) -> str:
        stored = Conversation(
            str(uuid.uuid4()), kind, [Participant(customer, start)], Platform.WHATSAPP, 0,
            start + timedelta(minutes=minutes), start, channel_id,
        )  # fmt: skip
        store.add_conversation(stored)
        return stored.conversation_id

    conversation(ConversationType.ONE_TO_ONE, channel, 1)
    newest = conversation(ConversationType.ONE_TO_ONE, channel, 2)
    conversation(ConversationType.ONE_TO_ONE, str(uuid.uuid4()), 3)  # another channel
    conversation(ConversationType.GROUP, channel, 4)  # not one-to-one
    found = store.open_on_channel(customer, channel)
    assert found is not None and found.conversation_id == newest
    assert store.open_on_channel(customer, str(uuid.uuid4())) is None
