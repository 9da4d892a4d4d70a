"""PostgreSQL adapters: one connection per container, explicit transactions, audit in the same transaction."""

from __future__ import annotations

import contextlib
import threading
from importlib import resources
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from chat4all.domain.errors import ConflictError, DependencyUnavailableError
from chat4all.domain.models import (
    ApiKey,
    ChannelConfig,
    ChannelRef,
    ExternalIdentity,
    Platform,
    Role,
    User,
    UserType,
)
from chat4all.ports import ApiKeyRepository, ChannelRepository, DependencyCheck, UserRepository

if TYPE_CHECKING:
    from collections.abc import Iterator

    from chat4all.ports import AuditEntry, CredentialCipher

MIGRATIONS_PACKAGE = "chat4all.migrations.postgres"
MIGRATION_LOCK_ID = 0x43_34_41  # "C4A": serialises concurrent migrators


class PostgresDatabase:
    """Holds the container's one connection and opens a new one when it breaks.

    `prepare_threshold=None` keeps the connection free of server-side prepared statements, so RDS Proxy
    can multiplex it without pinning.
    """

    def __init__(self, url: str, *, connect_timeout: int = 5) -> None:
        self.url = url
        self.connect_timeout = connect_timeout
        self._conn: psycopg.Connection[dict[str, Any]] | None = None
        self._lock = threading.RLock()

    def _connection(self) -> psycopg.Connection[dict[str, Any]]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = psycopg.connect(
                self.url,
                autocommit=True,
                prepare_threshold=None,
                row_factory=dict_row,
                connect_timeout=self.connect_timeout,
            )
        return self._conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[psycopg.Cursor[dict[str, Any]]]:
        """A cursor inside one transaction; driver failures surface as DependencyUnavailableError."""
        with self._lock:
            try:
                conn = self._connection()
                with conn.transaction(), conn.cursor() as cursor:
                    yield cursor
            except psycopg.OperationalError as exc:
                if self._conn is not None and self._conn.broken:
                    self._conn = None
                raise DependencyUnavailableError(f"PostgreSQL unavailable: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def migrate(database: PostgresDatabase) -> list[str]:
    """Apply the versioned SQL migrations not applied yet, each in its own transaction. Returns what ran."""
    files = sorted(
        (f for f in resources.files(MIGRATIONS_PACKAGE).iterdir() if f.name.endswith(".sql")), key=lambda f: f.name
    )
    applied: list[str] = []
    with database.transaction() as cur:
        cur.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations"
            " (version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
    for file in files:
        version = file.name.removesuffix(".sql")
        with database.transaction() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_ID,))
            cur.execute("SELECT 1 FROM schema_migrations WHERE version = %s", (version,))
            if cur.fetchone():
                continue
            cur.execute(file.read_text())
            cur.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
            applied.append(version)
    return applied


def _write_audit(cur: psycopg.Cursor[dict[str, Any]], audit: AuditEntry) -> None:
    cur.execute(
        "INSERT INTO audit_log (actor, action, entity_type, entity_id, data) VALUES (%s, %s, %s, %s, %s)",
        (audit.actor, audit.action, audit.entity_type, audit.entity_id, Jsonb(audit.data)),
    )


def _insert_user(cur: psycopg.Cursor[dict[str, Any]], user: User) -> None:
    cur.execute(
        "INSERT INTO users"
        " (user_id, display_name, user_type, email, phone, metadata, active, created_at, updated_at)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (
            user.user_id,
            user.display_name,
            user.user_type.value,
            user.email,
            user.phone,
            Jsonb(user.metadata),
            user.active,
            user.created_at,
            user.updated_at,
        ),
    )


def _insert_identity(cur: psycopg.Cursor[dict[str, Any]], identity: ExternalIdentity) -> None:
    cur.execute(
        "INSERT INTO external_identities (identity_id, user_id, platform, platform_user_id, verified, created_at)"
        " VALUES (%s, %s, %s, %s, %s, %s)",
        (
            identity.identity_id,
            identity.user_id,
            identity.platform.value,
            identity.platform_user_id,
            identity.verified,
            identity.created_at,
        ),
    )


def _already_linked(identity: ExternalIdentity) -> ConflictError:
    return ConflictError(f"{identity.platform} account {identity.platform_user_id} is already linked to a user")


def _identity(row: dict[str, Any]) -> ExternalIdentity:
    return ExternalIdentity(
        identity_id=str(row["identity_id"]),
        user_id=str(row["user_id"]),
        platform=Platform(row["platform"]),
        platform_user_id=row["platform_user_id"],
        verified=row["verified"],
        created_at=row["created_at"],
    )


class PostgresUserRepository(UserRepository):
    def __init__(self, database: PostgresDatabase) -> None:
        self.db = database

    def add_user(self, user: User, audit: AuditEntry) -> None:
        with self.db.transaction() as cur:
            _insert_user(cur, user)
            _write_audit(cur, audit)

    def get_user(self, user_id: str) -> User | None:
        with self.db.transaction() as cur:
            cur.execute("SELECT * FROM users WHERE user_id = %s", (user_id,))
            row = cur.fetchone()
            if row is None:
                return None
            cur.execute("SELECT * FROM external_identities WHERE user_id = %s ORDER BY created_at", (user_id,))
            identities = [_identity(r) for r in cur.fetchall()]
        return User(
            user_id=str(row["user_id"]),
            display_name=row["display_name"],
            user_type=UserType(row["user_type"]),
            email=row["email"],
            phone=row["phone"],
            metadata=row["metadata"],
            active=row["active"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            external_identities=identities,
        )

    def add_identity(self, identity: ExternalIdentity, audit: AuditEntry) -> None:
        try:
            with self.db.transaction() as cur:
                _insert_identity(cur, identity)
                _write_audit(cur, audit)
        except pg_errors.UniqueViolation as exc:
            raise _already_linked(identity) from exc

    def add_user_with_identity(self, user: User, identity: ExternalIdentity, audit: AuditEntry) -> None:
        try:
            with self.db.transaction() as cur:
                _insert_user(cur, user)
                _insert_identity(cur, identity)
                _write_audit(cur, audit)
        except pg_errors.UniqueViolation as exc:
            raise _already_linked(identity) from exc

    def identity_of(self, user_id: str, platform: Platform) -> ExternalIdentity | None:
        with self.db.transaction() as cur:
            cur.execute(
                "SELECT * FROM external_identities WHERE user_id = %s AND platform = %s"
                " ORDER BY verified DESC, created_at"
                " LIMIT 1",
                (user_id, platform.value),
            )
            row = cur.fetchone()
        return _identity(row) if row else None

    def user_id_for(self, platform: Platform, platform_user_id: str) -> str | None:
        with self.db.transaction() as cur:
            cur.execute(
                "SELECT user_id FROM external_identities WHERE platform = %s AND platform_user_id = %s",
                (platform.value, platform_user_id),
            )
            row = cur.fetchone()
        return str(row["user_id"]) if row else None


def _channel_ref(row: dict[str, Any]) -> ChannelRef:
    return ChannelRef(str(row["channel_id"]), Platform(row["platform"]), row["enabled"])


class PostgresChannelRepository(ChannelRepository):
    def __init__(self, database: PostgresDatabase, cipher: CredentialCipher) -> None:
        self.db = database
        self.cipher = cipher

    def _channel(self, row: dict[str, Any]) -> ChannelConfig:
        return ChannelConfig(
            channel_id=str(row["channel_id"]),
            platform=Platform(row["platform"]),
            name=row["name"],
            credentials=self.cipher.decrypt(bytes(row["credentials_ciphertext"])),
            enabled=row["enabled"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )

    def add_channel(self, channel: ChannelConfig, audit: AuditEntry) -> None:
        ciphertext = self.cipher.encrypt(channel.credentials)
        with self.db.transaction() as cur:
            cur.execute(
                "INSERT INTO channels"
                " (channel_id, platform, name, credentials_ciphertext, enabled, created_at, updated_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (
                    channel.channel_id,
                    channel.platform.value,
                    channel.name,
                    ciphertext,
                    channel.enabled,
                    channel.created_at,
                    channel.updated_at,
                ),
            )
            _write_audit(cur, audit)

    def get_channel(self, channel_id: str) -> ChannelConfig | None:
        with self.db.transaction() as cur:
            cur.execute("SELECT * FROM channels WHERE channel_id = %s", (channel_id,))
            row = cur.fetchone()
        return self._channel(row) if row else None

    def channel_ref(self, channel_id: str) -> ChannelRef | None:
        with self.db.transaction() as cur:
            cur.execute("SELECT channel_id, platform, enabled FROM channels WHERE channel_id = %s", (channel_id,))
            row = cur.fetchone()
        return _channel_ref(row) if row else None

    def enabled_channel_refs(self, platform: Platform) -> list[ChannelRef]:
        with self.db.transaction() as cur:
            cur.execute(
                "SELECT channel_id, platform, enabled FROM channels WHERE platform = %s AND enabled"
                " ORDER BY created_at, channel_id",
                (platform.value,),
            )
            rows = cur.fetchall()
        return [_channel_ref(row) for row in rows]

    def enabled_channels(self, platform: Platform) -> list[ChannelConfig]:
        with self.db.transaction() as cur:
            cur.execute(
                "SELECT * FROM channels WHERE platform = %s AND enabled ORDER BY created_at, channel_id",
                (platform.value,),
            )
            rows = cur.fetchall()
        return [self._channel(row) for row in rows]


class PostgresApiKeyRepository(ApiKeyRepository):
    def __init__(self, database: PostgresDatabase) -> None:
        self.db = database

    def add_key(self, key: ApiKey, key_hash: str, audit: AuditEntry) -> None:
        with self.db.transaction() as cur:
            cur.execute(
                "INSERT INTO api_keys (key_id, name, role, user_id, key_hash, created_at)"
                " VALUES (%s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (key_hash) DO NOTHING",
                (key.key_id, key.name, key.role.value, key.user_id, key_hash, key.created_at),
            )
            if cur.rowcount:
                _write_audit(cur, audit)

    def find_active(self, key_hash: str) -> ApiKey | None:
        with self.db.transaction() as cur:
            cur.execute(
                "SELECT key_id, name, role, user_id, created_at FROM api_keys"
                " WHERE key_hash = %s AND revoked_at IS NULL",
                (key_hash,),
            )
            row = cur.fetchone()
        if row is None:
            return None
        return ApiKey(
            key_id=str(row["key_id"]),
            name=row["name"],
            role=Role(row["role"]),
            user_id=str(row["user_id"]) if row["user_id"] else None,
            created_at=row["created_at"],
        )

    def revoke(self, key_id: str, audit: AuditEntry) -> bool:
        with self.db.transaction() as cur:
            cur.execute("UPDATE api_keys SET revoked_at = now() WHERE key_id = %s AND revoked_at IS NULL", (key_id,))
            if not cur.rowcount:
                return False
            _write_audit(cur, audit)
            return True


class PostgresCheck(DependencyCheck):
    name = "postgresql"

    def __init__(self, database: PostgresDatabase) -> None:
        self.db = database

    def check(self) -> None:
        with self.db.transaction() as cur:
            cur.execute("SELECT 1")
