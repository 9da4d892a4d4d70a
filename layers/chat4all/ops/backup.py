"""A backup of both databases into one directory: `python -m chat4all.ops.backup [--out DIR]`.

DATABASE_URL names PostgreSQL's owner role, MONGODB_URI the MongoDB database (locally `make backup` takes
both from the running `make dev` stack). What the directory holds:

- `mongo/<collection>.bson`: every document of the collection as its BSON bytes, one after the other (what
  `mongodump` writes; read back with `bson.decode_file_iter`), streamed from a cursor: no collection is ever
  held in memory; `mongo/<collection>.json`: its options (a time-series collection's among them) and indexes
  (`index_information`);
- `postgres.dump`: `pg_dump --format=custom` as the owner, by the client binaries of the server's major
  version (Debian's /usr/lib/postgresql/<major>/bin), inside a snapshot whose table counts are recorded;
- `kms-keys.json` (local stacks only): the LocalStack KMS keys' ids and material, without which the channels'
  credentials never decrypt again (in AWS the key persists and nothing is copied);
- `manifest.json`, written last (by rename): every file's size and SHA-256, every collection's and table's
  count. A directory without it, or whose files do not match it, is refused by restore.

Order, and what it means across the two databases (neither can join the other's snapshot): MongoDB first,
then PostgreSQL. Users are never deleted (they are deactivated), so every user a message or participant
names is in the later PostgreSQL dump. Within MongoDB, GROUP deliveries and lanes before messages, messages
before conversations: a conversation's counter (`last_sequence`) is read after its messages, so it is never
behind a restored message (the next message gets a new sequence); a message accepted between the messages'
and the conversations' dumps is not in the backup, and shows as a gap in the sequence and one more in
`message_count`. A message accepted after the MongoDB dump is not in the backup at all (its client had its
202: a retry with the same `message_id` after the restore stores it again). A channel or identity deleted
between the two dumps is missing from PostgreSQL while MongoDB still names it: the consistency check
(`chat4all.ops.consistency`) reports it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import psycopg
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pymongo import MongoClient

from chat4all.adapters.mongo import DEFAULT_DATABASE
from chat4all.ops import database_env

if TYPE_CHECKING:
    from collections.abc import Iterator

    from pymongo.database import Database

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
POSTGRES_DUMP = "postgres.dump"
KMS_KEYS = "kms-keys.json"
MONGO_DIR = "mongo"
# documents are copied as the server's own bytes: no decoding, nothing lost in a round trip
RAW = CodecOptions(document_class=RawBSONDocument, tz_aware=True)
CURSOR_BATCH = 1000
# the order the collections are dumped in (module docstring); the others between these and conversations
FIRST = ("deliveries", "lanes", "messages")
LAST = ("conversations",)


class BackupError(RuntimeError):
    """A backup or restore that cannot go on; its message says why."""


# ------------------------------------------------------------------------------------------- shared helpers
def mongo_database(uri: str) -> Database[RawBSONDocument]:
    client: MongoClient[RawBSONDocument] = MongoClient(
        uri, document_class=RawBSONDocument, tz_aware=True, serverSelectionTimeoutMS=5000
    )
    return client.get_default_database(default=DEFAULT_DATABASE)


def collection_order(names: list[str]) -> list[str]:
    present = [n for n in names if not n.startswith("system.")]
    middle = sorted(n for n in present if n not in FIRST and n not in LAST)
    return [n for n in FIRST if n in present] + middle + [n for n in LAST if n in present]


def server_major(database_url: str) -> int:
    with psycopg.connect(database_url, connect_timeout=5) as conn:
        row = conn.execute("SHOW server_version_num").fetchone()
    assert row is not None
    return int(row[0]) // 10000


def postgres_tool(name: str, major: int) -> Path:
    """`pg_dump`/`pg_restore` of the server's major version: Debian keeps each version's binaries in
    /usr/lib/postgresql/<major>/bin (devstack/postgres.py finds the server the same way); PG_BIN overrides."""
    candidates = [Path(os.environ["PG_BIN"])] if os.environ.get("PG_BIN") else []
    candidates.append(Path(f"/usr/lib/postgresql/{major}/bin"))
    for bindir in candidates:
        if (bindir / name).is_file():
            return bindir / name
    found = shutil.which(name)
    if found:
        result = subprocess.run([found, "--version"], capture_output=True, text=True, check=False)  # noqa: S603
        # "pg_dump (PostgreSQL) 16.4 (Debian ...)": a newer client reads an older server, never the reverse
        words = result.stdout.split()
        version = next((w for w in words if w[:1].isdigit()), "0")
        if int(version.split(".")[0]) >= major:
            return Path(found)
    raise BackupError(f"no {name} for PostgreSQL {major} (install postgresql-client-{major} or set PG_BIN)")


def libpq_target(database_url: str) -> tuple[str, dict[str, str]]:
    """The connection string without its password, and an environment carrying it (PGPASSWORD): a password
    on a command line is visible to every process of the machine."""
    params = conninfo_to_dict(database_url)
    password = params.pop("password", None)
    env = dict(os.environ)
    if password is not None:
        env["PGPASSWORD"] = str(password)
    return make_conninfo(**{k: str(v) for k, v in params.items()}), env


class _HashingWriter:
    """Writes a file while counting its bytes and hashing them."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle = handle
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | memoryview) -> None:
        self.handle.write(data)
        self.digest.update(data)
        self.size += len(data)


def file_digest(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _file_entry(path: Path, root: Path) -> dict[str, Any]:
    size, sha = file_digest(path)
    return {"path": str(path.relative_to(root)), "bytes": size, "sha256": sha}


# ------------------------------------------------------------------------------------------------ backup
@dataclass(frozen=True)
class BackupReport:
    path: Path
    documents: dict[str, int]
    rows: dict[str, int]


def dump_collection(db: Database[RawBSONDocument], name: str, directory: Path) -> dict[str, Any]:
    """Stream one collection to `<name>.bson` and its options and indexes to `<name>.json`."""
    collection = db.get_collection(name, codec_options=RAW)
    options = collection.options()
    indexes = collection.index_information()
    target = directory / f"{name}.bson"
    count = 0
    with target.open("wb") as handle:
        writer = _HashingWriter(handle)
        # natural order, no sort: the server streams the collection; a sort of 10^6 documents would be in memory
        for document in collection.find({}, batch_size=CURSOR_BATCH):
            writer.write(document.raw)
            count += 1
        handle.flush()
        os.fsync(handle.fileno())
    meta = {"name": name, "options": _jsonable(options), "indexes": _jsonable(indexes)}
    (directory / f"{name}.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return {"count": count, "bytes": writer.size, "sha256": writer.digest.hexdigest()}


def _jsonable(value: Any) -> Any:
    """Index specs and collection options as JSON: SON and tuples become objects and lists."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, RawBSONDocument):
        return _jsonable(dict(value.items()))
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def dump_postgres(database_url: str, target: Path) -> dict[str, int]:
    """pg_dump in a snapshot exported by a transaction that counts every table in the same snapshot."""
    major = server_major(database_url)
    pg_dump = postgres_tool("pg_dump", major)
    with psycopg.connect(database_url, connect_timeout=5) as conn:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        row = conn.execute("SELECT pg_export_snapshot()").fetchone()
        assert row is not None
        snapshot = str(row[0])
        rows = _table_counts(conn)
        conninfo, env = libpq_target(database_url)
        argv = [str(pg_dump), "--format=custom", f"--snapshot={snapshot}", f"--file={target}", "--dbname", conninfo]
        result = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)  # noqa: S603
        conn.execute("COMMIT")
    if result.returncode != 0:
        raise BackupError(f"pg_dump failed ({result.returncode}): {result.stderr.strip()[:2000]}")
    return rows


def _table_counts(conn: psycopg.Connection[Any]) -> dict[str, int]:
    tables = [
        str(r[0])
        for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"
        ).fetchall()
    ]
    counts: dict[str, int] = {}
    for table in tables:
        found = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()
        counts[table] = int(found[0]) if found else 0
    return counts


def backup(
    database_url: str,
    mongodb_uri: str,
    out_dir: Path,
    *,
    kms_keys_file: Path | None = None,
    log: Any = None,
) -> BackupReport:
    """Write a whole backup into a new directory under `out_dir`; its path is in the report."""
    say = log or (lambda line: print(line, file=sys.stderr, flush=True))
    started = datetime.now(UTC)
    path = out_dir / f"chat4all-{started.strftime('%Y%m%dT%H%M%S.%fZ')}"
    (path / MONGO_DIR).mkdir(parents=True)
    path.chmod(0o700)  # channel credentials (encrypted) and, locally, the key that decrypts them
    db = mongo_database(mongodb_uri)
    collections: dict[str, Any] = {}
    try:
        for name in collection_order(db.list_collection_names()):
            say(f"MongoDB {name} ...")
            collections[name] = dump_collection(db, name, path / MONGO_DIR)
    finally:
        db.client.close()
    mongo_done = datetime.now(UTC)
    say("PostgreSQL ...")
    rows = dump_postgres(database_url, path / POSTGRES_DUMP)
    files = [_file_entry(path / POSTGRES_DUMP, path)]
    for name in collections:
        files.append(_file_entry(path / MONGO_DIR / f"{name}.bson", path))
        files.append(_file_entry(path / MONGO_DIR / f"{name}.json", path))
        listed = files[-2]
        if listed["sha256"] != collections[name]["sha256"]:
            raise BackupError(f"{name}.bson changed while it was written")
    if kms_keys_file is not None and kms_keys_file.is_file():
        target = path / KMS_KEYS
        target.touch(mode=0o600)
        target.write_bytes(kms_keys_file.read_bytes())
        files.append(_file_entry(target, path))
    manifest = {
        "format": FORMAT_VERSION,
        "started_at": started.isoformat(),
        "mongo_dumped_at": mongo_done.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(),
        "order": ["mongo:" + n for n in collections] + ["postgres"],
        "mongo": {"database": db.name, "collections": {n: {"count": c["count"]} for n, c in collections.items()}},
        "postgres": {"server_major": server_major(database_url), "tables": rows},
        "kms_keys": (path / KMS_KEYS).is_file(),
        "files": files,
    }
    scratch = path / (MANIFEST + ".tmp")
    scratch.write_text(json.dumps(manifest, indent=2) + "\n")
    with scratch.open("rb") as handle:
        os.fsync(handle.fileno())
    scratch.rename(path / MANIFEST)
    return BackupReport(path, {n: c["count"] for n, c in collections.items()}, rows)


# ------------------------------------------------------------------------------------------------ checking
def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of a whole backup, every file checked against it; BackupError for anything else."""
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise BackupError(f"{path} has no {MANIFEST}: the backup did not finish, it cannot be restored")
    try:
        manifest: dict[str, Any] = json.loads(manifest_path.read_text())
    except ValueError as exc:
        raise BackupError(f"{manifest_path} is not valid JSON: {exc}") from exc
    if manifest.get("format") != FORMAT_VERSION:
        raise BackupError(f"{path}: backup format {manifest.get('format')!r}, this version reads {FORMAT_VERSION}")
    for entry in manifest["files"]:
        file = path / entry["path"]
        if not file.is_file():
            raise BackupError(f"{file} is missing")
        size, sha = file_digest(file)
        if size != entry["bytes"] or sha != entry["sha256"]:
            raise BackupError(f"{file} does not match the manifest ({size} bytes, expected {entry['bytes']})")
    listed = {entry["path"] for entry in manifest["files"]}
    for name in manifest["mongo"]["collections"]:
        if f"{MONGO_DIR}/{name}.bson" not in listed or f"{MONGO_DIR}/{name}.json" not in listed:
            raise BackupError(f"{path}: collection {name} has no checked file")
    if POSTGRES_DUMP not in listed:
        raise BackupError(f"{path}: no checked {POSTGRES_DUMP}")
    return manifest


def raw_documents(file: Path) -> Iterator[RawBSONDocument]:
    from bson import decode_file_iter

    with file.open("rb") as handle:
        yield from decode_file_iter(handle, codec_options=RAW)


def main(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Back up PostgreSQL and MongoDB into one directory.")
    parser.add_argument("--out", type=Path, default=Path("backups"), help="where the backup directory is made")
    parser.add_argument("--kms-keys", type=Path, help="a local stack's kms-keys.json to carry along")
    arguments = parser.parse_args(argv)
    env = database_env("backup", environ, note=" (DATABASE_URL as the owner role)")
    if env is None:
        return 2
    try:
        report = backup(env["DATABASE_URL"], env["MONGODB_URI"], arguments.out, kms_keys_file=arguments.kms_keys)
    except BackupError as exc:
        print(f"backup: {exc}", file=sys.stderr)
        return 1
    documents = sum(report.documents.values())
    rows = sum(report.rows.values())
    print(f"backed up {documents} MongoDB documents and {rows} PostgreSQL rows", file=sys.stderr)
    print(report.path.resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
