"""Prepares the databases of a deployment: `python -m chat4all.prepare_databases`.

DATABASE_URL names the database's owner (migrations need it), MONGODB_URI the MongoDB database. Applies the
PostgreSQL migrations not applied yet (they create the functions' least-privilege role `chat4all_app`),
sets that role's password from CHAT4ALL_APP_DB_PASSWORD when given, lays out MongoDB as the server allows
(indexes; shard keys on a sharded cluster; the time-series `status_history` where the server has them; the
participations of conversations stored before them: chat4all.adapters.mongo.layout), and seeds
the admin API key from CHAT4ALL_ADMIN_API_KEY (stored hashed) when it is set. Every step is idempotent; the
local stack runs the same function at start, and a deployment runs it once per release. The functions then
connect as `chat4all_app` (template parameter DatabaseUrl), never as the owner.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from chat4all import bootstrap
from chat4all.adapters.aws import KmsCredentialCipher
from chat4all.adapters.mongo.layout import LayoutReport, ensure_layout
from chat4all.adapters.postgres import (
    PostgresApiKeyRepository,
    PostgresChannelRepository,
    PostgresDatabase,
    migrate,
    set_app_role_password,
)
from chat4all.config import APP_ROLE
from chat4all.domain.errors import DependencyUnavailableError
from chat4all.services.identity import ensure_admin_key


@dataclass(frozen=True)
class SetupReport:
    migrations_applied: list[str]
    admin_key_seeded: bool
    mongo_layout: LayoutReport


def prepare_databases(
    admin_api_key: str | None, *, owner_database_url: str | None = None, app_password: str | None = None
) -> SetupReport:
    owner = PostgresDatabase(owner_database_url or bootstrap.settings().database_url)
    try:
        applied = migrate(owner)
        if app_password:
            set_app_role_password(owner, app_password)
        layout = ensure_layout(bootstrap.mongo())
        backfill_channel_keys(owner)
        if admin_api_key:
            ensure_admin_key(PostgresApiKeyRepository(owner), admin_api_key)
    finally:
        owner.close()
    return SetupReport(applied, bool(admin_api_key), layout)


def backfill_channel_keys(owner: PostgresDatabase) -> int:
    """Give channels stored before migration 0003 their webhook lookup keys, decrypting them with KMS.

    Best effort: without a key configured or with KMS unreachable it does nothing, and the first webhook that
    misses backfills instead (WebhookService). Returns how many channels were filled.
    """
    key_id = bootstrap.settings().credentials_key_id
    if not key_id:
        return 0
    channels = PostgresChannelRepository(owner, KmsCredentialCipher(bootstrap.aws_client("kms"), key_id))
    try:
        return channels.backfill_webhook_keys()
    except DependencyUnavailableError as exc:
        print(f"channel webhook keys not backfilled now ({exc.detail}); the first webhook will", file=sys.stderr)
        return 0


def main() -> int:
    report = prepare_databases(
        os.environ.get("CHAT4ALL_ADMIN_API_KEY"), app_password=os.environ.get("CHAT4ALL_APP_DB_PASSWORD")
    )
    applied = ", ".join(report.migrations_applied) or "none (up to date)"
    print(f"PostgreSQL migrations applied: {applied}; MongoDB indexes ensured", file=sys.stderr)
    layout = report.mongo_layout
    if layout.sharded:
        sharded = ", ".join(layout.newly_sharded) or "none (all sharded already)"
        print(f"MongoDB is a sharded cluster: collections sharded now: {sharded}", file=sys.stderr)
    history = "time-series status_history" if layout.timeseries else "no time-series collections on this server"
    print(f"MongoDB status history: {history}", file=sys.stderr)
    if layout.participations_backfilled:
        print(f"participations backfilled: {layout.participations_backfilled}", file=sys.stderr)
    print(f"the functions connect as the role {APP_ROLE}", file=sys.stderr)
    if report.admin_key_seeded:
        print("admin API key from CHAT4ALL_ADMIN_API_KEY is in place", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
