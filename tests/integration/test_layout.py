"""The MongoDB layout prepare_databases lays out (chat4all.adapters.mongo.layout), on the real local server
(SecantusDB) in a database of each test's own.

No sharded cluster can be had on these machines (no mongod/mongos package reaches them: docs/MONGODB.md), so the
sharded path runs against the real server with its `hello` reply wrapped: `ClusterAdmin` answers `msg:
"isdbgrid"` as mongos would, records every admin command, and lists what `shardCollection` sharded in the real
server's `config.collections`, as mongos does; indexes, drops and the reads of `config.collections` go to the
real server.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pymongo
import pytest
from pymongo.errors import OperationFailure

from chat4all.adapters.mongo import MongoConversationStore, MongoMessageStore
from chat4all.adapters.mongo.connection import INDEXES
from chat4all.adapters.mongo.layout import SHARD_KEYS, STATUS_HISTORY, ensure_layout
from chat4all.adapters.mongo.participations import backfill_participations
from chat4all.domain.models import (
    Conversation,
    ConversationType,
    Direction,
    Message,
    MessageStatus,
    Participant,
    Platform,
    StatusEntry,
)
from devstack.stack import with_database

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    from pymongo.database import Database

    from devstack.stack import LocalPlatform

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def db(platform: LocalPlatform) -> Iterator[Database[dict[str, Any]]]:
    name = f"chat4all_layout_{uuid.uuid4().hex[:8]}"
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        with_database(platform.urls["mongo_server"], name), tz_aware=True
    )
    try:
        yield client[name]
    finally:
        client.config.collections.delete_many({"_id": {"$regex": f"^{name}\\."}})
        client.drop_database(name)
        client.close()


class ClusterAdmin:
    """The real server's admin commands, with `hello` answered as mongos answers it; sharding commands recorded."""

    def __init__(self, db: Database[dict[str, Any]], *, sharded: bool) -> None:
        self.db = db
        self.sharded = sharded
        self.commands: list[dict[str, Any]] = []

    def __call__(self, command: dict[str, Any]) -> Mapping[str, Any]:
        self.commands.append(dict(command))
        name = next(iter(command))
        if name == "hello":
            reply = dict(self.db.client.admin.command("hello"))
            return {**reply, "msg": "isdbgrid"} if self.sharded else reply
        if name == "shardCollection":
            self.db.client.config.collections.insert_one({"_id": command["shardCollection"], "key": command["key"]})
            return {"ok": 1, "collectionsharded": command["shardCollection"]}
        if name == "enableSharding":
            return {"ok": 1}
        return self.db.client.admin.command(command)


def conversation(*users: str, at: datetime = T0, channel_id: str = "channel") -> Conversation:
    kind = ConversationType.ONE_TO_ONE if len(users) == 2 else ConversationType.GROUP
    return Conversation(
        str(uuid.uuid4()), kind, [Participant(u, at) for u in users], Platform("WHATSAPP"), 0, at, at, channel_id
    )


def message(conversation_id: str, sender: str, at: datetime) -> Message:
    return Message(
        message_id=str(uuid.uuid4()),
        conversation_id=conversation_id,
        sender_id=sender,
        content="hi",
        file_id=None,
        channel=Platform("WHATSAPP"),
        direction=Direction.OUTBOUND,
        sequence=0,
        status=MessageStatus.PENDING,
        history=[StatusEntry(MessageStatus.PENDING, at)],
        created_at=at,
        request_fingerprint="layout",
    )


def test_a_sharded_cluster_gets_each_shard_key_once_and_only_legal_unique_indexes(db: Database[dict[str, Any]]) -> None:
    # GIVEN a database laid out for a single server, holding a conversation, a message and its platform id
    ensure_layout(db)
    store = MongoConversationStore(db)
    chat = conversation("agent", "customer")
    store.add_conversation(chat)
    sent = MongoMessageStore(db).add_message(message(chat.conversation_id, "agent", T0))
    assert sent is not None
    # WHEN prepare_databases runs against a server that answers as mongos
    admin = ClusterAdmin(db, sharded=True)
    report = ensure_layout(db, admin)
    # THEN the database is enabled and each large collection sharded on its key, in that order
    assert report.sharded
    assert admin.commands == [
        {"hello": 1},
        {"enableSharding": db.name},
        {"shardCollection": f"{db.name}.messages", "key": {"conversation_id": 1, "sequence": 1}},
        {"shardCollection": f"{db.name}.conversations", "key": {"_id": 1}},
        {"shardCollection": f"{db.name}.participations", "key": {"user_id": 1, "conversation_id": 1}},
        {"shardCollection": f"{db.name}.deliveries", "key": {"conversation_id": 1, "user_id": 1}},
    ]
    assert report.newly_sharded == ["messages", "conversations", "participations", "deliveries"]
    # AND every unique index of a sharded collection starts with its shard key, and an index starts with the key
    for name, key in SHARD_KEYS.items():
        fields = list(key.items())
        indexes = db[name].index_information()
        assert any(info["key"][: len(fields)] == fields for info in indexes.values()), name
        for index, info in indexes.items():
            if info.get("unique") and index != "_id_":
                assert info["key"][: len(fields)] == fields, (name, index)
    # AND the uniqueness given up is kept where it matters: a delivery per (conversation, user, message)
    assert db.deliveries.index_information()["conversation_user_message_unique"]["unique"]
    assert not db.messages.index_information()["platform_message_id_sparse"].get("unique")
    # AND the data is all there and the store still reads it
    assert [c.conversation_id for c in store.conversations_page("agent", limit=5, before=None)] == [
        chat.conversation_id
    ]
    # WHEN it runs again (every release does)
    again = ClusterAdmin(db, sharded=True)
    report = ensure_layout(db, again)
    # THEN it asks the server what it is and shards nothing twice
    assert again.commands == [{"hello": 1}]
    assert report.newly_sharded == []


def test_a_single_server_is_sent_no_sharding_command(db: Database[dict[str, Any]]) -> None:
    admin = ClusterAdmin(db, sharded=False)
    report = ensure_layout(db, admin)
    assert not report.sharded
    assert admin.commands == [{"hello": 1}]
    # the single server's unique index on the platform id stays unique
    assert db.messages.index_information()["platform_message_id_sparse"]["unique"]
    assert set(INDEXES) <= set(db.list_collection_names())


def test_status_moves_go_to_a_time_series_collection_read_through_an_index(db: Database[dict[str, Any]]) -> None:
    # GIVEN the local server, which takes `create` with a timeseries option
    report = ensure_layout(db)
    assert report.timeseries
    [info] = db.list_collections(filter={"name": STATUS_HISTORY})
    assert info["options"]["timeseries"]["timeField"] == "at"
    assert info["options"]["timeseries"]["metaField"] == "meta"
    # WHEN a message is stored and moves through SENT, DELIVERED, and a late SENT report comes
    MongoConversationStore(db).add_conversation(chat := conversation("agent", "customer"))
    stored = MongoMessageStore(db).add_message(message(chat.conversation_id, "agent", T0))
    assert stored is not None
    messages = MongoMessageStore(db)  # another process: it knows nothing of the message
    sent = StatusEntry(MessageStatus.SENT, T0 + timedelta(seconds=1))
    assert messages.append_status(stored.message_id, sent)
    assert messages.append_status(stored.message_id, StatusEntry(MessageStatus.DELIVERED, T0 + timedelta(seconds=2)))
    assert not messages.append_status(stored.message_id, StatusEntry(MessageStatus.SENT, T0 + timedelta(seconds=3)))
    # THEN each move is in status_history under the message and its conversation, as in the message's history
    query = {"meta.message_id": stored.message_id}
    kept = [(d["status"], d["at"], d["meta"]["conversation_id"]) for d in db[STATUS_HISTORY].find(query).sort("at", 1)]
    reread = messages.get_message(stored.message_id)
    assert reread is not None
    assert kept == [(e.status.value, e.at, chat.conversation_id) for e in reread.history]
    assert [s for s, _, _ in kept] == ["PENDING", "SENT", "DELIVERED", "SENT"]
    # AND a message's moves are read through an index, not by reading the collection
    plan = db[STATUS_HISTORY].find(query).explain()["queryPlanner"]["winningPlan"]
    assert "IXSCAN" in str(plan), plan


def test_a_status_history_that_is_not_time_series_is_left_alone(db: Database[dict[str, Any]]) -> None:
    # GIVEN a plain collection of that name (made by hand, or by a server that ignores the option)
    db.create_collection(STATUS_HISTORY)
    # THEN the layout detects it, does not write to it, and the message path runs as before
    assert not ensure_layout(db).timeseries
    MongoConversationStore(db).add_conversation(chat := conversation("agent", "customer"))
    stored = MongoMessageStore(db).add_message(message(chat.conversation_id, "agent", T0))
    assert stored is not None
    assert MongoMessageStore(db).append_status(stored.message_id, StatusEntry(MessageStatus.SENT, T0))
    assert db[STATUS_HISTORY].count_documents({}) == 0


def test_a_server_that_refuses_time_series_is_skipped(
    db: Database[dict[str, Any]], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # SecantusDB takes the option, so the refusal (DocumentDB's, mongod before 5.0) is played by the driver call
    def refuse(*_args: object, **_kwargs: object) -> None:
        raise OperationFailure("unknown option to create collection: timeseries", code=72)

    monkeypatch.setattr(pymongo.database.Database, "create_collection", refuse)
    assert not ensure_layout(db).timeseries
    assert "no time-series collections on this server" in caplog.text
    assert STATUS_HISTORY not in db.list_collection_names()
    MongoConversationStore(db).add_conversation(chat := conversation("agent", "customer"))
    assert MongoMessageStore(db).add_message(message(chat.conversation_id, "agent", T0)) is not None


def test_conversations_stored_before_participations_are_backfilled_once(db: Database[dict[str, Any]]) -> None:
    # GIVEN conversations as earlier versions stored them: participants in the document only
    chats = [conversation("agent", f"customer-{i}", at=T0 + timedelta(minutes=i)) for i in range(5)]
    group = conversation("agent", "customer-0", "other", at=T0 + timedelta(minutes=10))
    db.conversations.insert_many(
        [
            {
                "_id": c.conversation_id,
                "conversation_type": c.conversation_type.value,
                "participants": [{"user_id": p.user_id, "joined_at": p.joined_at} for p in c.participants],
                "primary_channel": "WHATSAPP",
                "channel_id": c.channel_id,
                "message_count": 0,
                "last_sequence": 0,
                "last_activity_at": c.last_activity_at,
                "created_at": c.created_at,
            }
            for c in [*chats, group]
        ]
    )
    # WHEN the new version's prepare_databases runs
    report = ensure_layout(db)
    # THEN each participant has its participation, and the lists read them newest activity first
    assert report.participations_backfilled == 5 * 2 + 3
    store = MongoConversationStore(db)
    newest_first = [group, *reversed(chats)]
    assert [c.conversation_id for c in store.conversations_page("agent", limit=10, before=None)] == [
        c.conversation_id for c in newest_first
    ]
    first = store.conversations_page("agent", limit=2, before=None)
    cursor = (first[-1].last_activity_at, first[-1].conversation_id)
    assert [c.conversation_id for c in store.conversations_page("agent", limit=2, before=cursor)] == [
        c.conversation_id for c in newest_first[2:4]
    ]
    assert [c.conversation_id for c in store.conversations_page("customer-0", limit=10, before=None)] == [
        group.conversation_id,
        chats[0].conversation_id,
    ]
    assert store.share_conversation("other", "customer-0")
    assert not store.share_conversation("other", "customer-1")
    open_one = store.open_on_channel("customer-3", "channel")
    assert open_one is not None
    assert open_one.conversation_id == chats[3].conversation_id
    # AND a second run inserts nothing (done once), and a forced one finds them all there
    assert ensure_layout(db).participations_backfilled == 0
    assert backfill_participations(db, force=True) == 0
    assert db.participations.count_documents({}) == 13


def test_a_message_moves_its_conversation_up_each_participants_list(db: Database[dict[str, Any]]) -> None:
    ensure_layout(db)
    store = MongoConversationStore(db)
    older = conversation("agent", "a", at=T0)
    newer = conversation("agent", "b", at=T0 + timedelta(minutes=1))
    store.add_conversation(older)
    store.add_conversation(newer)
    assert [c.conversation_id for c in store.conversations_page("agent", limit=5, before=None)] == [
        newer.conversation_id,
        older.conversation_id,
    ]
    assert MongoMessageStore(db).add_message(message(older.conversation_id, "a", T0 + timedelta(minutes=2)))
    for user in ("agent", "a"):
        [first, *_] = store.conversations_page(user, limit=5, before=None)
        assert first.conversation_id == older.conversation_id
        assert first.last_activity_at == T0 + timedelta(minutes=2)
    # one who joins sees it in its list, one who leaves no longer
    assert store.add_participant(older.conversation_id, Participant("joiner", T0 + timedelta(minutes=3)), 2) is None
    assert store.remove_participant(older.conversation_id, "a") is not None
    assert store.add_participant(older.conversation_id, Participant("joiner", T0 + timedelta(minutes=3)), 2)
    assert [c.conversation_id for c in store.conversations_page("joiner", limit=5, before=None)] == [
        older.conversation_id
    ]
    assert store.conversations_page("a", limit=5, before=None) == []
    joined = db.participations.find_one({"user_id": "joiner"})
    assert joined is not None
    assert joined["joined_at"] == T0 + timedelta(minutes=3)
    assert joined["last_activity_at"] == T0 + timedelta(minutes=2)
