"""Restores a backup of `chat4all.ops.backup`: `python -m chat4all.ops.restore <dir> [--force]`.

DATABASE_URL names PostgreSQL's owner role and MONGODB_URI the MongoDB database to restore into; the target is
a prepared deployment (`prepare_databases` ran: the role `chat4all_app` the dump grants to exists). Stop the
traffic first (locally: nothing is sending; in AWS: the API's stage throttled to 0, the event source mappings
disabled); the restore does not lock anyone out.

Before anything is touched: the manifest must be there and every file match its size and SHA-256 (a backup
cut short is refused), and the target databases must be empty (no user, channel or identity in PostgreSQL, no
conversation, message, delivery or file in MongoDB: what a fresh stack's prepare_databases writes does not
count) unless `--force`. Then PostgreSQL (`pg_restore --clean
--if-exists --single-transaction`: all or nothing), then MongoDB, collection by collection (created with the
backed-up options, documents streamed in batches as their original bytes, then the indexes), and at the end
every table's and collection's count is compared with the manifest.

Locally the backup carries the LocalStack KMS keys (`kms-keys.json`). With `--aws-endpoint-url` (LocalStack)
and `--key-alias` (the running stack's credentials key, `alias/<stack>-credentials`), keys missing from
LocalStack are created again with their id and material, and each channel's credentials are re-encrypted under
the running stack's own key (same encryption context), so they decrypt in this stack and after its restarts.
In AWS the key persists (and is never in a backup): nothing of this is needed.
"""

from __future__ import annotations

import argparse
import base64
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from botocore.credentials import Credentials
from psycopg import sql
from pymongo import WriteConcern

from chat4all.adapters.aws import PERMANENT_KMS_ERRORS
from chat4all.adapters.aws_api import AwsApiError, AwsJsonApi
from chat4all.adapters.postgres import encryption_context
from chat4all.domain.models import Platform
from chat4all.ops import database_env
from chat4all.ops.backup import (
    KMS_KEYS,
    MONGO_DIR,
    POSTGRES_DUMP,
    BackupError,
    _table_counts,
    libpq_target,
    mongo_database,
    postgres_tool,
    raw_documents,
    read_manifest,
    server_major,
)

if TYPE_CHECKING:
    from bson.raw_bson import RawBSONDocument
    from pymongo.database import Database

INSERT_BATCH = 1000
# what makes a target "not empty": the records use creates, never what prepare_databases writes into a fresh
# one (PostgreSQL: its seeded admin key and that key's audit entry; MongoDB: `layout`'s markers). The other
# collections (lanes, outbox, participations, status_history) only hold what is derived from these.
PEOPLE_TABLES = ("users", "channels", "external_identities")
MONGO_RECORDS = ("conversations", "messages", "deliveries", "files")
LOCALSTACK_KEY_TAGS = ("_custom_id_", "_custom_key_material_")


@dataclass(frozen=True)
class RestoreReport:
    documents: dict[str, int]
    rows: dict[str, int]
    keys_created: int
    channels_reencrypted: int
    # channels whose credentials did not decrypt: left as they were (they did not decrypt before the backup
    # either, or their key is gone); their deliveries fail on credentials until they are rotated
    channels_undecryptable: tuple[str, ...] = ()


def not_empty(database_url: str, db: Database[RawBSONDocument]) -> list[str]:
    """What the target already holds, by name; empty when it may be restored into without --force."""
    found = []
    with psycopg.connect(database_url, connect_timeout=5) as conn:
        present = {str(r[0]) for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        for table in PEOPLE_TABLES:
            if table in present:
                query = sql.SQL("SELECT EXISTS (SELECT FROM {})").format(sql.Identifier(table))
                row = conn.execute(query).fetchone()
                if row and row[0]:
                    found.append(f"PostgreSQL {table}")
    existing = set(db.list_collection_names())
    for name in MONGO_RECORDS:
        if name in existing and db[name].find_one({}, projection={"_id": 1}) is not None:
            found.append(f"MongoDB {name}")
    return found


def restore_postgres(database_url: str, dump: Path, backed_up_major: int) -> dict[str, int]:
    major = server_major(database_url)
    if major < backed_up_major:
        raise BackupError(f"the backup is of PostgreSQL {backed_up_major}; this server is {major}")
    pg_restore = postgres_tool("pg_restore", major)
    conninfo, env = libpq_target(database_url)
    argv = [
        str(pg_restore), "--clean", "--if-exists", "--no-owner", "--single-transaction", "--exit-on-error",
        "--dbname", conninfo, str(dump),
    ]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)  # noqa: S603
    if result.returncode != 0:
        raise BackupError(f"pg_restore failed ({result.returncode}): {result.stderr.strip()[:2000]}")
    with psycopg.connect(database_url, connect_timeout=5) as conn:
        return _table_counts(conn)


def restore_collection(db: Database[RawBSONDocument], name: str, directory: Path) -> int:
    meta = json.loads((directory / f"{name}.json").read_text())
    db.drop_collection(name)
    options = {k: v for k, v in meta["options"].items() if k not in {"uuid"}}
    db.create_collection(name, **options)
    collection = db.get_collection(name, write_concern=WriteConcern(w="majority", j=True))
    count = 0
    batch: list[RawBSONDocument] = []
    for document in raw_documents(directory / f"{name}.bson"):
        batch.append(document)
        if len(batch) == INSERT_BATCH:
            collection.insert_many(batch, ordered=False)
            count += len(batch)
            batch = []
    if batch:
        collection.insert_many(batch, ordered=False)
        count += len(batch)
    existing = set(collection.index_information())
    for index_name, spec in meta["indexes"].items():
        if index_name == "_id_" or index_name in existing:
            continue
        keys = [(field, direction) for field, direction in spec["key"]]
        extra = {k: v for k, v in spec.items() if k not in {"key", "v", "ns"}}
        collection.create_index(keys, name=index_name, **extra)
    return count


def restore_local_keys(
    kms: AwsJsonApi, backup_dir: Path, database_url: str, key_alias: str
) -> tuple[int, int, tuple[str, ...]]:
    """Create the backup's LocalStack keys that are missing, then re-encrypt every channel's credentials under
    the key `key_alias` names (the running stack's); (keys created, channels re-encrypted, the channels whose
    credentials did not decrypt)."""
    keys: dict[str, dict[str, str]] = json.loads((backup_dir / KMS_KEYS).read_text())
    created = 0
    for entry in keys.values():
        try:
            kms.call("DescribeKey", {"KeyId": entry["key_id"]})
        except AwsApiError as exc:
            if exc.code != "NotFoundException":
                raise
            tags = [
                {"TagKey": LOCALSTACK_KEY_TAGS[0], "TagValue": entry["key_id"]},
                {"TagKey": LOCALSTACK_KEY_TAGS[1], "TagValue": entry["key_material"]},
            ]
            kms.call("CreateKey", {"Description": "restored from a Chat4All backup", "Tags": tags})
            created += 1
    current = kms.call("DescribeKey", {"KeyId": key_alias})["KeyMetadata"]
    reencrypted = 0
    undecryptable: list[str] = []
    with psycopg.connect(database_url, connect_timeout=5, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT channel_id, platform, credentials_ciphertext, credentials_bound FROM channels"
        ).fetchall()
        for channel_id, platform, ciphertext, bound in rows:
            context = encryption_context(str(channel_id), Platform(platform)) if bound else None
            params: dict[str, Any] = {"CiphertextBlob": _b64(bytes(ciphertext))}
            if context:
                params["EncryptionContext"] = context
            try:
                plain = kms.call("Decrypt", params)
            except AwsApiError as exc:
                # no key opens it (corrupt, or its key gone): the channel is left as it is, and named; anything
                # else (KMS unreachable, throttled) stops the restore
                if exc.code not in PERMANENT_KMS_ERRORS:
                    raise
                undecryptable.append(str(channel_id))
                continue
            if plain.get("KeyId") in (current["Arn"], current["KeyId"]):
                continue
            params = {"KeyId": current["KeyId"], "Plaintext": plain["Plaintext"]}
            if context:
                params["EncryptionContext"] = context
            sealed = kms.call("Encrypt", params)
            conn.execute(
                "UPDATE channels SET credentials_ciphertext = %s WHERE channel_id = %s",
                (base64.b64decode(sealed["CiphertextBlob"]), channel_id),
            )
            reencrypted += 1
    return created, reencrypted, tuple(undecryptable)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def restore(
    backup_dir: Path,
    database_url: str,
    mongodb_uri: str,
    *,
    force: bool = False,
    kms: AwsJsonApi | None = None,
    key_alias: str | None = None,
    log: Any = None,
) -> RestoreReport:
    say = log or (lambda line: print(line, file=sys.stderr, flush=True))
    manifest = read_manifest(backup_dir)
    collections = list(manifest["mongo"]["collections"])
    db = mongo_database(mongodb_uri)
    try:
        if not force and (held := not_empty(database_url, db)):
            raise BackupError(f"the target is not empty ({', '.join(held)}); pass --force (FORCE=1) to replace it")
        say("PostgreSQL ...")
        rows = restore_postgres(database_url, backup_dir / POSTGRES_DUMP, int(manifest["postgres"]["server_major"]))
        documents = {}
        for name in collections:
            say(f"MongoDB {name} ...")
            documents[name] = restore_collection(db, name, backup_dir / MONGO_DIR)
    finally:
        db.client.close()
    expected_rows = manifest["postgres"]["tables"]
    if rows != expected_rows:
        raise BackupError(f"PostgreSQL counts after the restore {rows} differ from the backup's {expected_rows}")
    expected_docs = {n: c["count"] for n, c in manifest["mongo"]["collections"].items()}
    if documents != expected_docs:
        raise BackupError(f"MongoDB counts after the restore {documents} differ from the backup's {expected_docs}")
    created = reencrypted = 0
    undecryptable: tuple[str, ...] = ()
    if manifest.get("kms_keys") and kms is not None and key_alias:
        created, reencrypted, undecryptable = restore_local_keys(kms, backup_dir, database_url, key_alias)
    return RestoreReport(documents, rows, created, reencrypted, undecryptable)


def main(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Restore a Chat4All backup into PostgreSQL and MongoDB.")
    parser.add_argument("backup", type=Path, help="the backup directory (what `backup` printed)")
    parser.add_argument("--force", action="store_true", help="replace databases that are not empty")
    parser.add_argument("--aws-endpoint-url", help="LocalStack: restore the backup's local KMS keys there")
    parser.add_argument("--key-alias", help="the running stack's credentials key (alias/<stack>-credentials)")
    arguments = parser.parse_args(argv)
    env = database_env("restore", environ, note=" (DATABASE_URL as the owner role)")
    if env is None:
        return 2
    kms = None
    if arguments.aws_endpoint_url:
        region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
        # the credentials of the environment given (botocore would read this process's, which `make restore`'s
        # shell may not have); LocalStack takes any, so without them its usual test ones
        local = Credentials(
            env.get("AWS_ACCESS_KEY_ID") or "test",
            env.get("AWS_SECRET_ACCESS_KEY") or "test",
            env.get("AWS_SESSION_TOKEN") or None,
        )
        kms = AwsJsonApi("kms", region=region, endpoint_url=arguments.aws_endpoint_url, credentials=local)
    try:
        report = restore(
            arguments.backup, env["DATABASE_URL"], env["MONGODB_URI"], force=arguments.force, kms=kms,
            key_alias=arguments.key_alias,
        )  # fmt: skip
    except BackupError as exc:
        print(f"restore: {exc}", file=sys.stderr)
        return 1
    print(
        f"restored {sum(report.documents.values())} MongoDB documents and {sum(report.rows.values())} PostgreSQL "
        f"rows; {report.keys_created} KMS keys created, {report.channels_reencrypted} channels re-encrypted"
    )
    if report.channels_undecryptable:
        print(
            f"restore: {len(report.channels_undecryptable)} channels' credentials did not decrypt and were left as "
            f"they were (rotate them: PATCH /v1/channels/{{id}}): {', '.join(report.channels_undecryptable)}",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
