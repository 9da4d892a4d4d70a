"""Prepares the databases of a deployment: `python -m chat4all.prepare_databases` (with DATABASE_URL, MONGODB_URI set).

Applies the PostgreSQL migrations not applied yet, creates the MongoDB indexes, and seeds the admin API key
from CHAT4ALL_ADMIN_API_KEY (stored hashed) when it is set. Every step is idempotent; the local stack runs
the same function at start, and a deployment runs it once per release.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from chat4all import bootstrap
from chat4all.adapters.mongo import ensure_indexes
from chat4all.adapters.postgres import migrate


@dataclass(frozen=True)
class SetupReport:
    migrations_applied: list[str]
    admin_key_seeded: bool


def prepare_databases(admin_api_key: str | None) -> SetupReport:
    applied = migrate(bootstrap.postgres())
    ensure_indexes(bootstrap.mongo())
    if admin_api_key:
        bootstrap.identity_service().ensure_admin_key(admin_api_key)
    return SetupReport(applied, bool(admin_api_key))


def main() -> int:
    report = prepare_databases(os.environ.get("CHAT4ALL_ADMIN_API_KEY"))
    applied = ", ".join(report.migrations_applied) or "none (up to date)"
    print(f"PostgreSQL migrations applied: {applied}; MongoDB indexes ensured", file=sys.stderr)
    if report.admin_key_seeded:
        print("admin API key from CHAT4ALL_ADMIN_API_KEY is in place", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
