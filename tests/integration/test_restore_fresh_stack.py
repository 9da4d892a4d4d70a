"""A backup restored into a stack started afresh brings back everything, and its channels deliver.

The suite's platform (A) gets users, an identity, a WhatsApp channel (credentials encrypted under A's KMS key),
a conversation, messages with status histories (one DELIVERED by a signed status webhook) and audit entries,
and is backed up. A second platform (B) is then started from nothing, as `make clean` then `make dev` would: its
own LocalStack (so its own, different KMS key, and none of A's), PostgreSQL, MongoDB and Redis, in a state dir
of its own. The backup is restored into B: every table row (the credentials' ciphertext aside: re-encrypted
under B's key) and every document is the backup's, the credentials of every channel decrypt in B to what they
were in A, B's API answers what A's did, and a message sent through B's API goes out to the fake WhatsApp with
the restored channel's token. Restoring again into B, no longer empty, is refused unless forced.
"""

from __future__ import annotations

import base64
import os
import time
from typing import TYPE_CHECKING, Any

import httpx
import psycopg
import pytest

from chat4all.adapters.aws_api import AwsApiError, AwsJsonApi
from chat4all.adapters.postgres import encryption_context
from chat4all.domain.models import Platform
from chat4all.ops.backup import MANIFEST, backup
from chat4all.ops.restore import main as restore_cli
from chat4all.ops.restore import restore
from devstack.localstack import KMS_KEYS_FILE
from tests.integration.conftest import Api, lost_key_line
from tests.integration.test_backup import (
    backed_up_documents,
    mongo_documents,
    postgres_rows,
    read,
    send_after_restore,
    sent_and_first_delivered,
)
from tests.integration.test_message_path import wait_for_status

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from devstack.stack import LocalPlatform
    from tests.integration.conftest import WhatsAppSetup
    from tests.support.fake_instagram import FakeInstagram
    from tests.support.fake_telegram import FakeTelegram
    from tests.support.fake_whatsapp import FakeWhatsApp

# what names the suite's own servers in this process: unset, the second stack starts servers of its own
SERVER_VARIABLES = ("AWS_ENDPOINT_URL", "DATABASE_URL", "MONGODB_URI", "REDIS_URL")


def forget_connections() -> None:
    """Clear the test process's bootstrap caches (settings, connections: made from the environment)."""
    from chat4all import bootstrap

    for value in list(vars(bootstrap).values()):
        if callable(getattr(value, "cache_clear", None)):
            value.cache_clear()


@pytest.fixture
def fresh_platform(
    fake_whatsapp: FakeWhatsApp, fake_telegram: FakeTelegram, fake_instagram: FakeInstagram
) -> Iterator[LocalPlatform]:
    """A stack started from nothing: its own state dir, LocalStack, PostgreSQL, MongoDB and Redis."""
    from devstack.stack import throwaway_platform

    # a stack's start sets this process's environment to its functions' and its teardown drops the databases this
    # process's bootstrap names: both are set back to the suite's stack afterwards
    environment = dict(os.environ)
    for name in SERVER_VARIABLES:
        os.environ.pop(name, None)
    forget_connections()
    bases = {
        "WHATSAPP_API_BASE": fake_whatsapp.url,
        "TELEGRAM_API_BASE": fake_telegram.url,
        "INSTAGRAM_API_BASE": fake_instagram.url,
    }
    try:
        with throwaway_platform("restored", bases) as stack:
            yield stack
    finally:
        os.environ.clear()
        os.environ.update(environment)
        forget_connections()


def channel_secrets(database_url: str, kms: AwsJsonApi) -> tuple[dict[str, tuple[str, bytes]], set[str]]:
    """Every channel's credentials as its stack's KMS decrypts them, and the key that did; and the channels
    whose ciphertext KMS cannot open (this test's lost-key line, and any other test's on the shared stack)."""
    found, undecryptable = {}, set()
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT channel_id, platform, credentials_ciphertext, credentials_bound FROM channels"
        ).fetchall()
    for channel_id, platform, ciphertext, bound in rows:
        params: dict[str, Any] = {"CiphertextBlob": base64.b64encode(bytes(ciphertext)).decode()}
        if bound:
            params["EncryptionContext"] = encryption_context(str(channel_id), Platform(platform))
        try:
            plain = kms.call("Decrypt", params)
        except AwsApiError as exc:
            assert exc.code == "InvalidCiphertextException", exc
            undecryptable.add(str(channel_id))
            continue
        found[str(channel_id)] = (str(plain["KeyId"]), base64.b64decode(plain["Plaintext"]))
    return found, undecryptable


def without_ciphertext(rows: dict[str, list[tuple[Any, ...]]], database_url: str) -> dict[str, list[Any]]:
    """The rows with the channels' credentials_ciphertext left out (a restore re-encrypts it)."""
    with psycopg.connect(database_url) as conn:
        columns = [
            r[0]
            for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'channels'"
                " ORDER BY ordinal_position"
            )
        ]
    position = columns.index("credentials_ciphertext")
    return rows | {"channels": sorted((r[:position] + r[position + 1 :] for r in rows["channels"]), key=repr)}


def test_a_backup_restored_into_a_fresh_stack_brings_everything_back_and_its_channels_deliver(
    platform: LocalPlatform,
    api: Api,
    whatsapp_conversation: WhatsAppSetup,
    fake_whatsapp: FakeWhatsApp,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # GIVEN platform A with a conversation whose messages went out, one of them reported DELIVERED
    setup = whatsapp_conversation
    sent = sent_and_first_delivered(api, setup, ["before the backup 1", "before the backup 2"])
    before = {
        "user": api.call("GET", f"/v1/users/{setup.customer_id}").json(),
        "identities": api.call("GET", f"/v1/users/{setup.customer_id}/identities").json(),
        "channel": api.call("GET", f"/v1/channels/{setup.channel['channel_id']}").json(),
        "conversation": api.call("GET", f"/v1/conversations/{setup.conversation_id}").json(),
        "history": api.call("GET", f"/v1/conversations/{setup.conversation_id}/messages").json(),
        "audit": api.call("GET", "/v1/audit-log", params={"entity_id": setup.customer_id}).json(),
        "statuses": {m: api.call("GET", f"/v1/messages/{m}/status").json() for m in sent},
    }
    assert before["audit"]["items"]
    assert len(before["statuses"][sent[0]]["history"]) >= 3  # PENDING, SENT, DELIVERED

    # WHEN A is backed up (with its local KMS key material)
    kms_a = AwsJsonApi("kms", region="us-east-1", endpoint_url=platform.urls["aws"])
    lost = lost_key_line(api, platform.urls["postgres"])
    secrets_a, undecryptable_a = channel_secrets(platform.urls["postgres"], kms_a)
    assert lost in undecryptable_a
    rows_a = postgres_rows(platform.urls["postgres"])
    state_a = platform.options.state_dir.resolve()
    taken = backup(platform.urls["postgres"], platform.urls["mongo"], tmp_path, kms_keys_file=state_a / KMS_KEYS_FILE)
    assert (taken.path / MANIFEST).is_file()
    assert (taken.path / KMS_KEYS_FILE).is_file()

    # AND a platform B is started from nothing
    fresh: LocalPlatform = request.getfixturevalue("fresh_platform")
    assert fresh.urls["aws"] != platform.urls["aws"]
    assert fresh.urls["postgres_server"] != platform.urls["postgres_server"]
    assert fresh.urls["mongo_server"] != platform.urls["mongo_server"]
    kms_b = AwsJsonApi("kms", region="us-east-1", endpoint_url=fresh.urls["aws"])
    alias_b = f"alias/{fresh.options.stack_name}-credentials"
    key_b = kms_b.call("DescribeKey", {"KeyId": alias_b})["KeyMetadata"]["KeyId"]
    for key_id_a in {key_id for key_id, _ in secrets_a.values()}:
        assert key_id_a.rsplit("/", 1)[-1] != key_b
        with pytest.raises(AwsApiError) as missing:  # B's LocalStack has never seen A's key
            kms_b.call("DescribeKey", {"KeyId": key_id_a})
        assert missing.value.code == "NotFoundException"

    # AND the backup is restored into B
    started = time.monotonic()
    restored = restore(taken.path, fresh.urls["postgres"], fresh.urls["mongo"], kms=kms_b, key_alias=alias_b)
    took = time.monotonic() - started
    assert restored.documents == taken.documents
    assert restored.rows == taken.rows
    assert restored.keys_created >= 1
    assert restored.channels_reencrypted == len(secrets_a)
    # a channel whose credentials do not decrypt does not stop the restore: it is left as it was, and named
    assert set(restored.channels_undecryptable) == undecryptable_a

    # THEN every row (the re-encrypted ciphertext aside) and every document is the backup's
    rows_b = postgres_rows(fresh.urls["postgres"])
    assert without_ciphertext(rows_b, fresh.urls["postgres"]) == without_ciphertext(rows_a, platform.urls["postgres"])
    documents_b = mongo_documents(fresh.urls["mongo"])
    for name in taken.documents:
        assert documents_b.get(name, []) == backed_up_documents(taken.path, name), name
    # every channel's credentials decrypt in B, under B's own key, to what they were in A
    secrets_b, undecryptable_b = channel_secrets(fresh.urls["postgres"], kms_b)
    assert undecryptable_b == undecryptable_a
    assert {c: plain for c, (_, plain) in secrets_b.items()} == {c: plain for c, (_, plain) in secrets_a.items()}
    assert {key_id.rsplit("/", 1)[-1] for key_id, _ in secrets_b.values()} == {key_b}

    # AND B, no longer empty, is refused by the CLI (`make restore`) unless forced (`FORCE=1`: --force)
    env = {"DATABASE_URL": fresh.urls["postgres"], "MONGODB_URI": fresh.urls["mongo"], "AWS_REGION": "us-east-1"}
    local = ["--aws-endpoint-url", fresh.urls["aws"], "--key-alias", alias_b]
    capsys.readouterr()
    assert restore_cli([str(taken.path), *local], env) == 1
    assert "the target is not empty (PostgreSQL users" in capsys.readouterr().err
    assert restore_cli([str(taken.path), "--force", *local], env) == 0
    said = capsys.readouterr()
    assert "restored" in said.out
    assert "channels' credentials did not decrypt and were left as they were" in said.err
    assert lost in said.err
    assert without_ciphertext(postgres_rows(fresh.urls["postgres"]), fresh.urls["postgres"]) == without_ciphertext(
        rows_a, platform.urls["postgres"]
    )
    assert channel_secrets(fresh.urls["postgres"], kms_b) == (secrets_b, undecryptable_b)

    # AND B's API (with A's admin key: the API keys are the backup's) answers what A's did
    with httpx.Client(base_url=fresh.api_url, timeout=30) as client:
        api_b = Api(client, platform.admin_api_key)
        assert read(api_b, f"/v1/users/{setup.customer_id}") == before["user"]
        assert read(api_b, f"/v1/users/{setup.customer_id}/identities") == before["identities"]
        assert read(api_b, f"/v1/channels/{setup.channel['channel_id']}") == before["channel"]
        assert read(api_b, f"/v1/conversations/{setup.conversation_id}") == before["conversation"]
        assert read(api_b, f"/v1/conversations/{setup.conversation_id}/messages") == before["history"]
        assert read(api_b, "/v1/audit-log", params={"entity_id": setup.customer_id}) == before["audit"]
        for message_id, status in before["statuses"].items():
            assert read(api_b, f"/v1/messages/{message_id}/status") == status

        # AND a message sent through B to the restored channel is delivered with the channel's token
        calls_before = len(fake_whatsapp.sent_to(setup.customer_phone))
        response = send_after_restore(api_b, setup, "through the restored stack")
        assert response.json()["sequence"] == len(sent) + 1  # the conversation's counter came back too
        wait_for_status(api_b, response.json()["message_id"], "SENT", timeout=60)
    calls = fake_whatsapp.sent_to(setup.customer_phone)
    assert len(calls) == calls_before + 1
    assert calls[-1].body["text"]["body"] == "through the restored stack"
    assert calls[-1].headers.get("authorization") == f"Bearer {setup.credentials['access_token']}"
    print(f"restored {sum(taken.documents.values())} documents and {sum(taken.rows.values())} rows in {took:.1f} s")
