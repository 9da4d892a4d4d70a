"""Storage guarantees of the identity side, checked directly against PostgreSQL and KMS (LocalStack)."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

from chat4all import bootstrap
from chat4all.adapters.postgres import PostgresDatabase, PostgresUserRepository
from chat4all.domain.errors import CredentialsUnreadableError, ValidationFailedError
from chat4all.domain.models import User, UserType, utcnow
from chat4all.ports import AuditEntry

if TYPE_CHECKING:
    from devstack.stack import LocalPlatform
    from tests.integration.conftest import Api


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_log SET actor = 'someone else'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
        "ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_update_delete",
        "DROP TRIGGER audit_log_no_update_delete ON audit_log",
        "DROP TABLE audit_log",
    ],
)
def test_the_functions_role_cannot_change_or_erase_the_audit_log(platform: LocalPlatform, statement: str) -> None:
    with psycopg.connect(platform.urls["postgres_app"], autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("chat4all_app",)
        before = conn.execute("SELECT count(*), max(entry_id) FROM audit_log").fetchone()
        assert before is not None and before[0] > 0
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(statement)
        assert conn.execute("SELECT count(*), max(entry_id) FROM audit_log").fetchone() == before


def test_the_functions_connect_as_that_role(platform: LocalPlatform) -> None:
    assert bootstrap.settings().database_url == platform.urls["postgres_app"]
    with bootstrap.postgres().transaction() as cur:
        cur.execute("SELECT current_user")
        assert cur.fetchone() == {"current_user": "chat4all_app"}


def _user(name: str) -> User:
    now = utcnow()
    return User(str(uuid.uuid4()), name, UserType.CUSTOMER, None, None, {}, True, now, now)


def test_a_change_whose_audit_entry_fails_is_not_made(platform: LocalPlatform) -> None:
    database = PostgresDatabase(platform.urls["postgres_app"])
    users = PostgresUserRepository(database)
    try:
        # GIVEN an audit entry PostgreSQL refuses (NUL in text), written after the user row in one transaction
        user = _user("Atomic Ann")
        broken = AuditEntry("actor\x00", "user.created", "user", user.user_id, {})
        with pytest.raises(ValidationFailedError):
            users.add_user(user, broken)
        # THEN the user row went with it
        assert users.get_user(user.user_id) is None
        # AND the same for an update
        users.add_user(user, AuditEntry("test", "user.created", "user", user.user_id, {}))

        def rename(current: User) -> User:
            return User(**{**current.__dict__, "display_name": "Renamed"})

        def broken_entry(before: User, after: User) -> AuditEntry:
            return AuditEntry("actor\x00", "user.updated", "user", user.user_id)

        with pytest.raises(ValidationFailedError):
            users.update_user(user.user_id, rename, broken_entry)
        stored = users.get_user(user.user_id)
        assert stored is not None and stored.display_name == "Atomic Ann"
    finally:
        database.close()


def _whatsapp_channel(api: Api) -> dict[str, Any]:
    credentials = {
        "access_token": f"EAAG{uuid.uuid4().hex}",
        "phone_number_id": str(uuid.uuid4().int)[:15],
        "app_secret": uuid.uuid4().hex,
        "verify_token": uuid.uuid4().hex,
    }
    channel = api.created(
        "/v1/channels", {"platform": "WHATSAPP", "name": "bound", "credentials": credentials, "enabled": False}
    )
    return {**channel, "credentials": credentials}


def test_credentials_are_ciphertext_bound_to_their_channel(platform: LocalPlatform, api: Api) -> None:
    first, second = _whatsapp_channel(api), _whatsapp_channel(api)
    with psycopg.connect(platform.urls["postgres"], autocommit=True) as conn:
        rows = dict(
            conn.execute(
                "SELECT channel_id::text, credentials_ciphertext FROM channels WHERE channel_id = ANY(%s::uuid[])",
                ([first["channel_id"], second["channel_id"]],),
            ).fetchall()
        )
        for channel in (first, second):
            ciphertext = bytes(rows[channel["channel_id"]])
            assert all(value.encode() not in ciphertext for value in channel["credentials"].values())
        readable = bootstrap.channels().get_channel(second["channel_id"])
        assert readable is not None and readable.credentials == second["credentials"]
        # WHEN the first channel's ciphertext is copied into the second channel's row
        conn.execute(
            "UPDATE channels SET credentials_ciphertext = %s WHERE channel_id = %s",
            (rows[first["channel_id"]], second["channel_id"]),
        )
    # THEN KMS refuses it there: the encryption context names the channel it belongs to
    with pytest.raises(CredentialsUnreadableError):
        bootstrap.channels().get_channel(second["channel_id"])
    still = bootstrap.channels().get_channel(first["channel_id"])
    assert still is not None and still.credentials == first["credentials"]
    assert api.call("DELETE", f"/v1/channels/{second['channel_id']}").status_code == 204


def test_every_identity_channel_and_key_row_has_its_audit_entry(platform: LocalPlatform, api: Api) -> None:
    _whatsapp_channel(api)
    with psycopg.connect(platform.urls["postgres"], autocommit=True) as conn:
        missing = conn.execute(
            "SELECT 'user', user_id::text FROM users u WHERE NOT EXISTS"
            "  (SELECT 1 FROM audit_log a WHERE a.entity_id = u.user_id::text AND a.action LIKE 'user.created%%')"
            " UNION ALL SELECT 'identity', identity_id::text FROM external_identities i WHERE NOT EXISTS"
            "  (SELECT 1 FROM audit_log a WHERE a.after->>'identity_id' = i.identity_id::text"
            "     OR (a.action = 'user.created_from_inbound' AND a.entity_id = i.user_id::text))"
            " UNION ALL SELECT 'channel', channel_id::text FROM channels c WHERE NOT EXISTS"
            "  (SELECT 1 FROM audit_log a WHERE a.entity_id = c.channel_id::text AND a.action = 'channel.created')"
            " UNION ALL SELECT 'key', key_id::text FROM api_keys k WHERE NOT EXISTS"
            "  (SELECT 1 FROM audit_log a WHERE a.entity_id = k.key_id::text AND a.action LIKE 'api_key.%%')"
            " UNION ALL SELECT 'revocation', key_id::text FROM api_keys k WHERE revoked_at IS NOT NULL AND NOT EXISTS"
            "  (SELECT 1 FROM audit_log a WHERE a.entity_id = k.key_id::text AND a.action = 'api_key.revoked')"
        ).fetchall()
    assert missing == []
