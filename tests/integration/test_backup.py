"""Backup and restore of both databases (chat4all.ops.backup / restore) against the running platform.

A stack with users, an identity, a channel (its credentials encrypted with the stack's KMS key), a
conversation, messages with status histories and audit entries is backed up; both databases are wiped and
prepared again as a fresh `make dev` would (migrations, the admin key, the indexes); the backup is restored;
every table row and every document is as before, and the channel still delivers (its credentials decrypt).
A backup cut short (no manifest, a truncated file) and a target that is not empty are refused before anything
is touched.
"""

from __future__ import annotations

import shutil
import time
import uuid
from typing import TYPE_CHECKING, Any

import psycopg
import pymongo
import pytest
from bson import decode_file_iter
from bson.codec_options import CodecOptions
from psycopg import sql

from chat4all.adapters.aws_api import AwsJsonApi
from chat4all.ops.backup import MANIFEST, BackupError, backup
from chat4all.ops.restore import restore
from devstack.localstack import KMS_KEYS_FILE
from devstack.stack import postgres_database
from tests.integration.test_message_path import wait_for_status
from tests.support.fake_whatsapp import sign, status_webhook
from tests.support.waiting import wait_until

if TYPE_CHECKING:
    from pathlib import Path

    import httpx

    from devstack.stack import LocalPlatform
    from tests.integration.conftest import Api, WhatsAppSetup
    from tests.support.fake_whatsapp import FakeWhatsApp

OPTIONS: CodecOptions[dict[str, Any]] = CodecOptions(tz_aware=True)


def postgres_rows(url: str) -> dict[str, list[tuple[Any, ...]]]:
    with psycopg.connect(url) as conn:
        tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        return {
            table: sorted(conn.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(table))).fetchall(), key=repr)
            for table in tables
        }


def mongo_documents(url: str) -> dict[str, list[dict[str, Any]]]:
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(url, tz_aware=True)
    try:
        db = client.get_default_database()
        return {name: sorted(db[name].find(), key=lambda d: repr(d["_id"])) for name in db.list_collection_names()}
    finally:
        client.close()


def backed_up_documents(path: Path, name: str) -> list[dict[str, Any]]:
    with (path / "mongo" / f"{name}.bson").open("rb") as handle:
        return sorted(decode_file_iter(handle, codec_options=OPTIONS), key=lambda d: repr(d["_id"]))


def sent_and_first_delivered(api: Api, setup: WhatsAppSetup, texts: list[str]) -> list[str]:
    """The agent's messages to the customer, each SENT, the first reported DELIVERED by a signed webhook."""
    sent = []
    for text in texts:
        body = {"conversation_id": setup.conversation_id, "sender_id": setup.agent_id, "content": text}
        response = api.call("POST", "/v1/messages", json=body)
        assert response.status_code == 202, response.text
        sent.append(response.json()["message_id"])
    for message_id in sent:
        wait_for_status(api, message_id, "SENT", timeout=60)
    wamid = api.call("GET", f"/v1/messages/{sent[0]}").json()["platform_message_id"]
    report = status_webhook(setup.credentials["phone_number_id"], wamid, "delivered", setup.customer_phone)
    signature = sign(setup.credentials["app_secret"], report)
    answer = api.client.post("/webhooks/whatsapp", content=report, headers={"X-Hub-Signature-256": signature})
    assert answer.status_code == 200
    wait_for_status(api, sent[0], "DELIVERED", timeout=60)
    return sent


def send_after_restore(api: Api, setup: WhatsAppSetup, content: str) -> httpx.Response:
    """The agent's message to the customer, the same message_id again past a warm container's one 503 (its
    database connection went with the restore): one message; asserts the 202."""
    body = {
        "message_id": str(uuid.uuid4()),
        "conversation_id": setup.conversation_id,
        "sender_id": setup.agent_id,
        "content": content,
    }
    for _ in range(20):
        response = api.call("POST", "/v1/messages", json=body)
        if response.status_code != 503:
            break
        time.sleep(0.2)
    assert response.status_code == 202, response.text
    return response


def read(api: Api, path: str, **kwargs: Any) -> Any:
    """A GET, past the one 503 each warm container answers when its connection was to the dropped database."""
    for _ in range(20):
        response = api.call("GET", path, **kwargs)
        if response.status_code != 503:
            return response.json()
        time.sleep(0.2)
    raise AssertionError(f"{path}: still 503")


def wipe(platform: LocalPlatform) -> None:
    """Both databases gone, then prepared again as a fresh `make dev` prepares them."""
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(platform.urls["mongo"])
    try:
        with pymongo.timeout(120):
            client.drop_database(client.get_default_database().name)
    finally:
        client.close()
    name = platform.options.database_name
    postgres_database(platform.urls["postgres_server"], name, drop=True, create=True)
    platform.prepare_databases()


def test_backup_wipe_restore_brings_everything_back_and_channels_deliver(
    platform: LocalPlatform, api: Api, whatsapp_conversation: WhatsAppSetup, fake_whatsapp: FakeWhatsApp, tmp_path: Path
) -> None:
    setup = whatsapp_conversation
    # a status history with a platform report in it
    sent = sent_and_first_delivered(api, setup, ["first", "second", "third"])
    before_status = {m: api.call("GET", f"/v1/messages/{m}/status").json() for m in sent}
    before_user = api.call("GET", f"/v1/users/{setup.customer_id}").json()
    before_conversation = api.call("GET", f"/v1/conversations/{setup.conversation_id}").json()
    before_audit = api.call("GET", "/v1/audit-log", params={"entity_id": setup.customer_id}).json()
    assert before_audit["items"]

    rows_before = postgres_rows(platform.urls["postgres"])
    state_dir = platform.options.state_dir.resolve()
    report = backup(
        platform.urls["postgres"], platform.urls["mongo"], tmp_path, kms_keys_file=state_dir / KMS_KEYS_FILE
    )
    path = report.path
    assert (path / MANIFEST).is_file()
    assert report.rows["channels"] >= 1
    assert report.documents["messages"] >= 3
    # the key material that decrypts the channels travels with a local backup
    assert (path / KMS_KEYS_FILE).read_bytes() == (state_dir / KMS_KEYS_FILE).read_bytes()

    # cut short: no manifest, or a file that is not what the manifest says; refused before anything is touched
    unfinished = tmp_path / "unfinished"
    shutil.copytree(path, unfinished)
    (unfinished / MANIFEST).unlink()
    with pytest.raises(BackupError, match="did not finish"):
        restore(unfinished, platform.urls["postgres"], platform.urls["mongo"], force=True)
    truncated = tmp_path / "truncated"
    shutil.copytree(path, truncated)
    messages_file = truncated / "mongo" / "messages.bson"
    messages_file.write_bytes(messages_file.read_bytes()[:-7])
    with pytest.raises(BackupError, match="does not match the manifest"):
        restore(truncated, platform.urls["postgres"], platform.urls["mongo"], force=True)
    # a target that is not empty is refused unless forced
    with pytest.raises(BackupError, match="not empty"):
        restore(path, platform.urls["postgres"], platform.urls["mongo"])
    assert api.call("GET", f"/v1/users/{setup.customer_id}").status_code == 200  # nothing was touched

    wipe(platform)
    # the functions' connections to the dropped database fail once (503), then reconnect to the new one
    for gone in (f"/v1/users/{setup.customer_id}", f"/v1/conversations/{setup.conversation_id}"):
        wait_until(lambda path=gone: api.call("GET", path).status_code == 404, 30, f"{gone} gone")

    kms = AwsJsonApi("kms", region="us-east-1", endpoint_url=platform.urls["aws"])
    restored = restore(
        path,
        platform.urls["postgres"],
        platform.urls["mongo"],
        kms=kms,
        key_alias=f"alias/{platform.options.stack_name}-credentials",
    )
    assert restored.documents == report.documents
    assert restored.rows == report.rows

    # every row and every document as it was backed up
    assert postgres_rows(platform.urls["postgres"]) == rows_before
    documents = mongo_documents(platform.urls["mongo"])
    for name in report.documents:
        assert documents[name] == backed_up_documents(path, name), name
    # and through the API
    assert read(api, f"/v1/users/{setup.customer_id}") == before_user
    assert read(api, f"/v1/conversations/{setup.conversation_id}") == before_conversation
    assert read(api, "/v1/audit-log", params={"entity_id": setup.customer_id}) == before_audit
    for message_id, status in before_status.items():
        assert read(api, f"/v1/messages/{message_id}/status") == status

    # the channel still delivers: its credentials decrypt, and the conversation's sequence goes on
    response = send_after_restore(api, setup, "after the restore")
    assert response.json()["sequence"] == 4
    wait_for_status(api, response.json()["message_id"], "SENT", timeout=60)
    calls = fake_whatsapp.sent_to(setup.customer_phone)
    assert [c.body["text"]["body"] for c in calls] == ["first", "second", "third", "after the restore"]
    assert calls[-1].headers.get("authorization") == f"Bearer {setup.credentials['access_token']}"
