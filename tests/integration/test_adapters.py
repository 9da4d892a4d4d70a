"""Adapter guarantees checked directly against the real servers."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import psycopg
import pytest
import redis
from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig, idempotent_function
from aws_lambda_powertools.utilities.idempotency.exceptions import IdempotencyValidationError

from chat4all.adapters.idempotency import RedisIdempotencyStore

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
        audited = {row[0] for row in conn.execute("SELECT entity_id FROM audit_log WHERE action = 'user.created'")}
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
