"""Prepares the databases of a deployment: `python -m chat4all.prepare_databases`.

DATABASE_URL names the database's owner (migrations need it), MONGODB_URI the MongoDB database. Applies the
PostgreSQL migrations not applied yet (they create the functions' least-privilege role `chat4all_app`),
sets that role's password from CHAT4ALL_APP_DB_PASSWORD when given, creates the MongoDB indexes, and seeds
the admin API key from CHAT4ALL_ADMIN_API_KEY (stored hashed) when it is set. Every step is idempotent; the
local stack runs the same function at start, and a deployment runs it once per release. The functions then
connect as `chat4all_app` (template parameter DatabaseUrl), never as the owner.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from chat4all import bootstrap
from chat4all.adapters.mongo import ensure_indexes
from chat4all.adapters.postgres import PostgresApiKeyRepository, PostgresDatabase, migrate, set_app_role_password
from chat4all.adapters.recovery import ensure_recovery_indexes
from chat4all.config import APP_ROLE
from chat4all.services.identity import ensure_admin_key


@dataclass(frozen=True)
class SetupReport:
    migrations_applied: list[str]
    admin_key_seeded: bool


def prepare_databases(
    admin_api_key: str | None, *, owner_database_url: str | None = None, app_password: str | None = None
) -> SetupReport:
    owner = PostgresDatabase(owner_database_url or bootstrap.settings().database_url)
    try:
        applied = migrate(owner)
        if app_password:
            set_app_role_password(owner, app_password)
        ensure_indexes(bootstrap.mongo())
        ensure_recovery_indexes(bootstrap.mongo())
        if admin_api_key:
            ensure_admin_key(PostgresApiKeyRepository(owner), admin_api_key)
    finally:
        owner.close()
    return SetupReport(applied, bool(admin_api_key))


def main() -> int:
    report = prepare_databases(
        os.environ.get("CHAT4ALL_ADMIN_API_KEY"), app_password=os.environ.get("CHAT4ALL_APP_DB_PASSWORD")
    )
    applied = ", ".join(report.migrations_applied) or "none (up to date)"
    print(f"PostgreSQL migrations applied: {applied}; MongoDB indexes ensured", file=sys.stderr)
    print(f"the functions connect as the role {APP_ROLE}", file=sys.stderr)
    if report.admin_key_seeded:
        print("admin API key from CHAT4ALL_ADMIN_API_KEY is in place", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
