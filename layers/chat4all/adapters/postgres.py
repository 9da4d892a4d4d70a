"""PostgreSQL adapters: one connection per container, explicit transactions, audit in the same transaction."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import uuid
from importlib import resources
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import errors as pg_errors
from psycopg import pq, sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from chat4all.channels.registry import definition
from chat4all.config import APP_ROLE
from chat4all.domain.contact import email_key
from chat4all.domain.credentials import channel_keys
from chat4all.domain.errors import (
    ConflictError,
    CredentialsUnreadableError,
    DependencyUnavailableError,
    FieldError,
    NotFoundError,
    ValidationFailedError,
)
from chat4all.domain.models import (
    ApiKey,
    AuditRecord,
    ChannelConfig,
    ChannelInfo,
    ChannelRef,
    ExternalIdentity,
    Platform,
    Role,
    User,
    UserType,
)
from chat4all.observability import logger
from chat4all.ports import ApiKeyRepository, AuditLog, ChannelRepository, DependencyCheck, UserRepository

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from _typeshed import DataclassInstance

    from chat4all.domain.credentials import Credentials
    from chat4all.ports import Audited, AuditEntry, Change, CredentialCipher

Cursor = psycopg.Cursor[dict[str, Any]]

MIGRATIONS_PACKAGE = "chat4all.migrations.postgres"
MIGRATION_LOCK_ID = 0x43_34_41  # "C4A": serialises concurrent migrators


def set_app_role_password(database: PostgresDatabase, password: str) -> None:
    with database.transaction() as cur:
        cur.execute(
            sql.SQL("ALTER ROLE {} WITH LOGIN PASSWORD {}").format(sql.Identifier(APP_ROLE), sql.Literal(password))
        )


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

    def transaction(self) -> contextlib.AbstractContextManager[psycopg.Cursor[dict[str, Any]]]:
        """A cursor inside one transaction (BEGIN and COMMIT: a round trip each); driver failures surface as
        DependencyUnavailableError."""
        return self._cursor(transactional=True)

    def statement(self) -> contextlib.AbstractContextManager[psycopg.Cursor[dict[str, Any]]]:
        """A cursor whose statements the autocommit connection runs each as a transaction of its own: one round
        trip for a read where transaction() takes three. For reads (under READ COMMITTED each statement has its
        own snapshot in a transaction too) and a lone write; writes that must commit together take transaction()."""
        return self._cursor(transactional=False)

    @contextlib.contextmanager
    def _cursor(self, *, transactional: bool) -> Iterator[psycopg.Cursor[dict[str, Any]]]:
        with self._lock:
            try:
                conn = self._connection()
                with conn.transaction() if transactional else contextlib.nullcontext(), conn.cursor() as cursor:
                    yield cursor
            except psycopg.OperationalError as exc:
                if self._conn is not None and self._conn.broken:
                    self._conn = None
                logger.warning("PostgreSQL unavailable", extra={"error": type(exc).__name__})
                raise DependencyUnavailableError("the database is unavailable") from exc
            except pg_errors.ForeignKeyViolation as exc:
                # the services check references first; this is the race where the target vanished meanwhile
                raise ValidationFailedError(
                    "the request refers to something that does not exist",
                    errors=[FieldError(_constraint_field(exc), "refers to nothing that exists")],
                ) from exc
            except psycopg.DataError as exc:
                # input validation refuses what PostgreSQL cannot store; this keeps a missed case a 4xx
                raise ValidationFailedError(
                    "a value cannot be stored", errors=[FieldError("body", "not storable")]
                ) from exc
            except BaseException:
                # interrupted mid-command (the request's deadline): the connection still waits for that
                # command's answer and would refuse every later one, so it is dropped
                if self._conn is not None and self._conn.pgconn.transaction_status == pq.TransactionStatus.ACTIVE:
                    self._conn.close()
                    self._conn = None
                raise

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


def _constraint_field(exc: pg_errors.ForeignKeyViolation) -> str:
    column = {"api_keys_user_id_fkey": "user_id", "channels_default_agent_id_fkey": "default_agent_id"}
    return column.get(exc.diag.constraint_name or "", "body")


def _jsonb(value: dict[str, Any] | None) -> Jsonb | None:
    return None if value is None else Jsonb(value)


def _write_audit(cur: Cursor, audit: AuditEntry) -> None:
    cur.execute(
        "INSERT INTO audit_log"
        " (actor, actor_role, action, entity_type, entity_id, before, after, request_id, source_ip)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (
            audit.actor,
            audit.actor_role,
            audit.action,
            audit.entity_type,
            audit.entity_id,
            _jsonb(audit.before),
            _jsonb(audit.after),
            audit.request_id,
            audit.source_ip,
        ),
    )


def _insert_user(cur: Cursor, user: User) -> None:
    cur.execute(
        "INSERT INTO users"
        " (user_id, display_name, user_type, email, email_key, phone, metadata, active, created_at, updated_at)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (
            user.user_id,
            user.display_name,
            user.user_type.value,
            user.email,
            email_key(user.email) if user.email else None,
            user.phone,
            Jsonb(user.metadata),
            user.active,
            user.created_at,
            user.updated_at,
        ),
    )


def _record[T: DataclassInstance](cls: type[T], row: dict[str, Any], **given: Any) -> T:
    """`cls` from a row whose columns are named as its fields; `given` names the fields read otherwise."""
    names = [field.name for field in dataclasses.fields(cls)]
    return cls(**{name: given[name] if name in given else row[name] for name in names if name in given or name in row})


def _user(row: dict[str, Any], identities: list[ExternalIdentity]) -> User:
    return _record(
        User, row, user_id=str(row["user_id"]), user_type=UserType(row["user_type"]), external_identities=identities
    )


def _identities(cur: Cursor, user_id: str) -> list[ExternalIdentity]:
    cur.execute("SELECT * FROM external_identities WHERE user_id = %s ORDER BY created_at", (user_id,))
    return [_identity(r) for r in cur.fetchall()]


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
    return _record(
        ExternalIdentity,
        row,
        identity_id=str(row["identity_id"]),
        user_id=str(row["user_id"]),
        platform=Platform(row["platform"]),
    )


class PostgresUserRepository(UserRepository):
    def __init__(self, database: PostgresDatabase) -> None:
        self.db = database

    def add_user(self, user: User, audit: AuditEntry) -> None:
        with self.db.transaction() as cur:
            _insert_user(cur, user)
            _write_audit(cur, audit)

    def get_user(self, user_id: str) -> User | None:
        # the user and its identities in one round trip: a row per identity (one with NULLs when it has none)
        with self.db.statement() as cur:
            cur.execute(
                "SELECT u.*, i.identity_id, i.platform, i.platform_user_id, i.verified,"
                " i.created_at AS identity_created_at"
                " FROM users u LEFT JOIN external_identities i ON i.user_id = u.user_id"
                " WHERE u.user_id = %s ORDER BY i.created_at",
                (user_id,),
            )
            rows = cur.fetchall()
        if not rows:
            return None
        identities = [_identity(row | {"created_at": row["identity_created_at"]}) for row in rows if row["identity_id"]]
        return _user(rows[0], identities)

    def update_user(self, user_id: str, change: Change[User], audit: Audited[User]) -> User:
        with self.db.transaction() as cur:
            cur.execute("SELECT * FROM users WHERE user_id = %s FOR UPDATE", (user_id,))
            row = cur.fetchone()
            if row is None:
                raise NotFoundError(f"user {user_id} not found")
            before = _user(row, _identities(cur, user_id))
            after = change(before)
            if after == before:
                return before
            cur.execute(
                "UPDATE users SET display_name = %s, email = %s, email_key = %s, phone = %s, active = %s,"
                " metadata = %s, updated_at = %s WHERE user_id = %s",
                (
                    after.display_name,
                    after.email,
                    email_key(after.email) if after.email else None,
                    after.phone,
                    after.active,
                    Jsonb(after.metadata),
                    after.updated_at,
                    user_id,
                ),
            )
            _write_audit(cur, audit(before, after))
            return after

    def remove_identity(self, user_id: str, identity_id: str, audit: Callable[[ExternalIdentity], AuditEntry]) -> None:
        with self.db.transaction() as cur:
            cur.execute(
                "DELETE FROM external_identities WHERE identity_id = %s AND user_id = %s RETURNING *",
                (identity_id, user_id),
            )
            row = cur.fetchone()
            if row is None:
                raise NotFoundError(f"user {user_id} has no identity {identity_id}")
            _write_audit(cur, audit(_identity(row)))

    def users_sharing(self, user_id: str, phones: set[str], email_keys: set[str]) -> list[tuple[User, set[str]]]:
        if not phones and not email_keys:
            return []
        # WhatsApp identities are known by the number without its "+"
        whatsapp_ids = sorted(phone.lstrip("+") for phone in phones)
        with self.db.statement() as cur:
            cur.execute(
                "SELECT u.*,"
                "  (u.phone = ANY(%(phones)s) OR EXISTS (SELECT 1 FROM external_identities i"
                "     WHERE i.user_id = u.user_id AND i.platform = 'WHATSAPP'"
                "       AND ltrim(i.platform_user_id, '+') = ANY(%(wa)s))) AS phone_match,"
                "  (u.email_key = ANY(%(emails)s)) AS email_match"
                " FROM users u"
                " WHERE u.user_id <> %(user_id)s AND ("
                "   u.phone = ANY(%(phones)s) OR u.email_key = ANY(%(emails)s)"
                "   OR u.user_id IN (SELECT i.user_id FROM external_identities i"
                "     WHERE i.platform = 'WHATSAPP' AND ltrim(i.platform_user_id, '+') = ANY(%(wa)s)))"
                " ORDER BY u.created_at, u.user_id LIMIT 100",
                {"phones": sorted(phones), "wa": whatsapp_ids, "emails": sorted(email_keys), "user_id": user_id},
            )
            rows = cur.fetchall()
            found = []
            for row in rows:
                matched = {name for name, hit in (("phone", row["phone_match"]), ("email", row["email_match"])) if hit}
                found.append((_user(row, _identities(cur, str(row["user_id"]))), matched))
        return found

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
        with self.db.statement() as cur:
            cur.execute(
                "SELECT * FROM external_identities WHERE user_id = %s AND platform = %s"
                " ORDER BY verified DESC, created_at"
                " LIMIT 1",
                (user_id, platform.value),
            )
            row = cur.fetchone()
        return _identity(row) if row else None

    def identities_of(self, user_ids: Sequence[str]) -> dict[str, list[ExternalIdentity]]:
        valid = [u for u in user_ids if _is_uuid(u)]  # a user id that is no UUID has no identities
        if not valid:
            return {}
        with self.db.statement() as cur:
            cur.execute(
                "SELECT * FROM external_identities WHERE user_id = ANY(%s::uuid[]) ORDER BY verified DESC, created_at",
                (valid,),
            )
            rows = cur.fetchall()
        found: dict[str, list[ExternalIdentity]] = {}
        for row in rows:
            identity = _identity(row)
            found.setdefault(identity.user_id, []).append(identity)
        return found

    def user_id_for(self, platform: Platform, platform_user_id: str) -> str | None:
        with self.db.statement() as cur:
            cur.execute(
                "SELECT user_id FROM external_identities WHERE platform = %s AND platform_user_id = %s",
                (platform.value, platform_user_id),
            )
            row = cur.fetchone()
        return str(row["user_id"]) if row else None


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def encryption_context(channel_id: str, platform: Platform) -> dict[str, str]:
    """What a channel's credentials are bound to: KMS decrypts them only with the same context."""
    return {"chat4all:channel_id": channel_id, "chat4all:platform": platform.value}


def _channel_info(row: dict[str, Any]) -> ChannelInfo:
    return _record(
        ChannelInfo,
        row,
        channel_id=str(row["channel_id"]),
        platform=Platform(row["platform"]),
        default_agent_id=str(row["default_agent_id"]) if row["default_agent_id"] else None,
        credentials_rejected=row["credentials_rejection"],
    )


def _account_taken(platform: Platform, exc: pg_errors.UniqueViolation) -> ConflictError:
    if exc.diag.constraint_name == "channels_webhook_secret_digest_key":
        field, what = "credentials.secret_token", "this secret_token"
    else:
        # the credential a second channel with the same account would repeat
        field, what = f"credentials.{definition(platform).account_field}", "this account"
    return ConflictError(
        f"another {platform} channel has {what}: webhooks must name exactly one channel",
        errors=[FieldError(field, "is another channel's already")],
    )


def _channel_ref(row: dict[str, Any]) -> ChannelRef:
    return ChannelRef(str(row["channel_id"]), Platform(row["platform"]), row["enabled"])


class PostgresChannelRepository(ChannelRepository):
    def __init__(self, database: PostgresDatabase, cipher: CredentialCipher) -> None:
        self.db = database
        self.cipher = cipher

    def _channel(self, row: dict[str, Any]) -> ChannelConfig:
        info = _channel_info(row)
        # rows written before credentials were bound to their channel decrypt without a context
        context = encryption_context(info.channel_id, info.platform) if row["credentials_bound"] else None
        return ChannelConfig(
            channel_id=info.channel_id,
            platform=info.platform,
            name=info.name,
            credentials=self.cipher.decrypt(bytes(row["credentials_ciphertext"]), context),
            enabled=info.enabled,
            created_at=info.created_at,
            updated_at=info.updated_at,
            default_agent_id=info.default_agent_id,
            rate_limit=info.rate_limit,
            credentials_rejected=info.credentials_rejected,
        )

    def add_channel(self, channel: ChannelConfig, audit: AuditEntry) -> None:
        ciphertext = self.cipher.encrypt(channel.credentials, encryption_context(channel.channel_id, channel.platform))
        account_id, secret_digest = channel_keys(channel.platform, channel.credentials)
        try:
            with self.db.transaction() as cur:
                cur.execute(
                    "INSERT INTO channels (channel_id, platform, name, credentials_ciphertext, credentials_bound,"
                    " enabled, default_agent_id, created_at, updated_at, account_id, webhook_secret_digest, rate_limit)"
                    " VALUES (%s, %s, %s, %s, true, %s, %s, %s, %s, %s, %s, %s)",
                    (
                        channel.channel_id,
                        channel.platform.value,
                        channel.name,
                        ciphertext,
                        channel.enabled,
                        channel.default_agent_id,
                        channel.created_at,
                        channel.updated_at,
                        account_id,
                        secret_digest,
                        channel.rate_limit,
                    ),
                )
                _write_audit(cur, audit)
        except pg_errors.UniqueViolation as exc:
            raise _account_taken(channel.platform, exc) from exc

    def get_channel(self, channel_id: str) -> ChannelConfig | None:
        with self.db.statement() as cur:
            cur.execute("SELECT * FROM channels WHERE channel_id = %s", (channel_id,))
            row = cur.fetchone()
        return self._channel(row) if row else None

    def channel_ref(self, channel_id: str) -> ChannelRef | None:
        with self.db.statement() as cur:
            cur.execute("SELECT channel_id, platform, enabled FROM channels WHERE channel_id = %s", (channel_id,))
            row = cur.fetchone()
        return _channel_ref(row) if row else None

    def enabled_channel_refs(self, platform: Platform) -> list[ChannelRef]:
        with self.db.statement() as cur:
            cur.execute(
                "SELECT channel_id, platform, enabled FROM channels WHERE platform = %s AND enabled"
                " ORDER BY created_at, channel_id",
                (platform.value,),
            )
            rows = cur.fetchall()
        return [_channel_ref(row) for row in rows]

    def enabled_channels(self, platform: Platform) -> list[ChannelConfig]:
        with self.db.statement() as cur:
            cur.execute(
                "SELECT * FROM channels WHERE platform = %s AND enabled ORDER BY created_at, channel_id",
                (platform.value,),
            )
            rows = cur.fetchall()
        return [self._channel(row) for row in rows]

    def list_channels(self) -> list[ChannelInfo]:
        with self.db.statement() as cur:
            cur.execute("SELECT * FROM channels ORDER BY created_at, channel_id")
            return [_channel_info(row) for row in cur.fetchall()]

    def channel_info(self, channel_id: str) -> ChannelInfo | None:
        with self.db.statement() as cur:
            cur.execute("SELECT * FROM channels WHERE channel_id = %s", (channel_id,))
            row = cur.fetchone()
        return _channel_info(row) if row else None

    def update_channel(
        self, channel_id: str, change: Change[ChannelInfo], credentials: Credentials | None, audit: Audited[ChannelInfo]
    ) -> ChannelInfo:
        platform = Platform.WHATSAPP
        try:
            with self.db.transaction() as cur:
                cur.execute("SELECT * FROM channels WHERE channel_id = %s FOR UPDATE", (channel_id,))
                row = cur.fetchone()
                if row is None:
                    raise NotFoundError(f"channel {channel_id} not found")
                before = _channel_info(row)
                platform = before.platform
                after = change(before)
                if after == before and credentials is None:
                    return before
                ciphertext, bound = bytes(row["credentials_ciphertext"]), row["credentials_bound"]
                account_id, secret_digest = row["account_id"], row["webhook_secret_digest"]
                if credentials is not None:
                    ciphertext = self.cipher.encrypt(credentials, encryption_context(channel_id, before.platform))
                    bound = True
                    account_id, secret_digest = channel_keys(before.platform, credentials)
                if credentials is not None:  # new credentials: whatever the platform refused before is gone
                    after = dataclasses.replace(after, credentials_rejected=None)
                cur.execute(
                    "UPDATE channels SET name = %s, enabled = %s, default_agent_id = %s, credentials_ciphertext = %s,"
                    " credentials_bound = %s, updated_at = %s, account_id = %s, webhook_secret_digest = %s,"
                    " rate_limit = %s, credentials_rejection = %s WHERE channel_id = %s",
                    (
                        after.name,
                        after.enabled,
                        after.default_agent_id,
                        ciphertext,
                        bound,
                        after.updated_at,
                        account_id,
                        secret_digest,
                        after.rate_limit,
                        after.credentials_rejected,
                        channel_id,
                    ),
                )
                _write_audit(cur, audit(before, after))
                return after
        except pg_errors.UniqueViolation as exc:
            raise _account_taken(platform, exc) from exc

    def reject_credentials(self, channel_id: str, reason: str) -> bool:
        with self.db.transaction() as cur:
            cur.execute(
                "UPDATE channels SET credentials_rejection = %s"
                " WHERE channel_id = %s AND credentials_rejection IS NULL",
                (reason[:500], channel_id),
            )
            return bool(cur.rowcount)

    def delete_channel(self, channel_id: str, audit: Callable[[ChannelInfo], AuditEntry]) -> None:
        with self.db.transaction() as cur:
            cur.execute("DELETE FROM channels WHERE channel_id = %s RETURNING *", (channel_id,))
            row = cur.fetchone()
            if row is None:
                raise NotFoundError(f"channel {channel_id} not found")
            _write_audit(cur, audit(_channel_info(row)))

    def channel_for_account(self, platform: Platform, account_id: str) -> ChannelConfig | None:
        return self._enabled_channel(platform, "account_id", account_id)

    def channel_for_webhook_secret(self, platform: Platform, secret_digest: str) -> ChannelConfig | None:
        return self._enabled_channel(platform, "webhook_secret_digest", secret_digest)

    def _enabled_channel(self, platform: Platform, column: str, value: str) -> ChannelConfig | None:
        query = sql.SQL("SELECT * FROM channels WHERE platform = %s AND {} = %s AND enabled").format(
            sql.Identifier(column)
        )
        with self.db.statement() as cur:
            cur.execute(query, (platform.value, value))
            row = cur.fetchone()
        return self._channel(row) if row else None

    def backfill_webhook_keys(self, platform: Platform | None = None) -> int:
        """Fill account_id and webhook_secret_digest of rows stored before migration 0003, decrypting only those.

        Returns how many rows were filled. A row that does not decrypt, or whose account another channel has,
        stays as it is (logged). Only rows of `platform` when it is given.
        """
        with self.db.transaction() as cur:
            cur.execute(
                "SELECT * FROM channels WHERE account_id IS NULL AND (%s::text IS NULL OR platform = %s)"
                " ORDER BY created_at, channel_id",
                (platform.value if platform else None, platform.value if platform else None),
            )
            rows = cur.fetchall()
        filled = 0
        for row in rows:
            try:
                channel = self._channel(row)
            except CredentialsUnreadableError:
                logger.warning(
                    "channel not backfilled: its credentials cannot be decrypted",
                    extra={"channel_id": str(row["channel_id"])},
                )
                continue
            account_id, secret_digest = channel_keys(channel.platform, channel.credentials)
            try:
                with self.db.transaction() as cur:
                    cur.execute(
                        "UPDATE channels SET account_id = %s, webhook_secret_digest = %s"
                        " WHERE channel_id = %s AND account_id IS NULL",
                        (account_id, secret_digest, channel.channel_id),
                    )
                    filled += cur.rowcount
            except pg_errors.UniqueViolation:
                logger.warning(
                    "channel not backfilled: another channel has its account or secret",
                    extra={"channel_id": channel.channel_id},
                )
        return filled


class PostgresApiKeyRepository(ApiKeyRepository):
    def __init__(self, database: PostgresDatabase) -> None:
        self.db = database

    def add_key(self, key: ApiKey, key_hash: str, audit: AuditEntry) -> None:
        with self.db.transaction() as cur:
            cur.execute(
                "INSERT INTO api_keys (key_id, name, role, user_id, key_hash, created_at, rate_limit)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (key_hash) DO NOTHING",
                (key.key_id, key.name, key.role.value, key.user_id, key_hash, key.created_at, key.rate_limit),
            )
            if cur.rowcount:
                _write_audit(cur, audit)

    def find_active(self, key_hash: str) -> ApiKey | None:
        # one indexed lookup per request: a revoked key or a deactivated user stops at once
        with self.db.statement() as cur:
            cur.execute(
                "SELECT k.key_id, k.name, k.role, k.user_id, k.created_at, k.rate_limit FROM api_keys k"
                " LEFT JOIN users u ON u.user_id = k.user_id"
                " WHERE k.key_hash = %s AND k.revoked_at IS NULL AND (k.user_id IS NULL OR u.active)",
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
            rate_limit=row["rate_limit"],
        )

    def revoke(self, key_id: str, audit: AuditEntry) -> bool:
        with self.db.transaction() as cur:
            cur.execute("UPDATE api_keys SET revoked_at = now() WHERE key_id = %s AND revoked_at IS NULL", (key_id,))
            if not cur.rowcount:
                return False
            _write_audit(cur, audit)
            return True


class PostgresAuditLog(AuditLog):
    def __init__(self, database: PostgresDatabase) -> None:
        self.db = database

    def entries(self, *, entity_id: str | None, limit: int, before_entry_id: int | None) -> list[AuditRecord]:
        with self.db.statement() as cur:
            cur.execute(
                "SELECT * FROM audit_log"
                " WHERE (%(entity)s::text IS NULL OR entity_id = %(entity)s)"
                "   AND (%(before)s::bigint IS NULL OR entry_id < %(before)s)"
                " ORDER BY entry_id DESC LIMIT %(limit)s",
                {"entity": entity_id, "before": before_entry_id, "limit": limit},
            )
            rows = cur.fetchall()
        return [_record(AuditRecord, row) for row in rows]


class PostgresCheck(DependencyCheck):
    name = "postgresql"

    def __init__(self, database: PostgresDatabase) -> None:
        self.db = database

    def check(self) -> None:
        with self.db.statement() as cur:
            cur.execute("SELECT 1")
