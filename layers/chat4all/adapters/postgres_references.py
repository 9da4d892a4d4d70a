"""Which ids exist in PostgreSQL, asked in batches for the consistency check (chat4all.services.consistency)."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from chat4all.ports import ReferenceTarget

if TYPE_CHECKING:
    from collections.abc import Sequence

    from chat4all.adapters.postgres import PostgresDatabase


def _uuids(ids: Sequence[str]) -> list[str]:
    """The ids that are UUIDs at all (anything else cannot exist in a uuid column)."""
    valid = []
    for value in ids:
        try:
            uuid.UUID(value)
        except (ValueError, TypeError, AttributeError):
            continue
        valid.append(value)
    return valid


class PostgresReferenceTarget(ReferenceTarget):
    def __init__(self, database: PostgresDatabase) -> None:
        self.db = database

    def existing_users(self, user_ids: Sequence[str]) -> set[str]:
        with self.db.statement() as cur:
            cur.execute("SELECT user_id::text AS id FROM users WHERE user_id = ANY(%s::uuid[])", (_uuids(user_ids),))
            return {str(row["id"]) for row in cur.fetchall()}

    def existing_channels(self, channel_ids: Sequence[str]) -> set[str]:
        with self.db.statement() as cur:
            cur.execute(
                "SELECT channel_id::text AS id FROM channels WHERE channel_id = ANY(%s::uuid[])",
                (_uuids(channel_ids),),
            )
            return {str(row["id"]) for row in cur.fetchall()}

    def identities(self, limit: int) -> tuple[int, int, list[str]]:
        with self.db.transaction() as cur:
            cur.execute("SELECT count(*) AS n FROM external_identities")
            total = cur.fetchone()
            # the foreign key forbids it; checked anyway (a restore of a dump made without it, a dropped constraint)
            cur.execute(
                "SELECT count(*) AS n FROM external_identities i"
                " WHERE NOT EXISTS (SELECT FROM users u WHERE u.user_id = i.user_id)"
            )
            orphans = cur.fetchone()
            cur.execute(
                "SELECT i.identity_id::text AS id FROM external_identities i"
                " WHERE NOT EXISTS (SELECT FROM users u WHERE u.user_id = i.user_id) ORDER BY 1 LIMIT %s",
                (limit,),
            )
            sample = [str(row["id"]) for row in cur.fetchall()]
        return int(total["n"]) if total else 0, int(orphans["n"]) if orphans else 0, sample
