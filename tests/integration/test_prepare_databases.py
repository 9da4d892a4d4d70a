"""`python -m chat4all.prepare_databases`: what a deployment runs per release, idempotent."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pymongo import MongoClient

from chat4all.adapters.mongo import DEFAULT_DATABASE

if TYPE_CHECKING:
    from devstack.stack import LocalPlatform
    from tests.integration.conftest import Api, WhatsAppSetup

LAYERS = Path(__file__).resolve().parents[2] / "layers"


def test_rerun_is_a_no_op_and_seeds_a_working_admin_key(platform: LocalPlatform, api: Api) -> None:
    key = f"c4a_release_{uuid.uuid4().hex}"
    env = {
        **os.environ,
        "PYTHONPATH": str(LAYERS),
        "DATABASE_URL": platform.urls["postgres"],
        "MONGODB_URI": platform.urls["mongo"],
        "CHAT4ALL_ADMIN_API_KEY": key,
    }
    assert api.client.get(f"/v1/users/{uuid.uuid4()}", headers={"Authorization": f"Bearer {key}"}).status_code == 401
    for _ in range(2):
        result = subprocess.run(
            [sys.executable, "-m", "chat4all.prepare_databases"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert "migrations applied: none (up to date)" in result.stderr
        # the local server is one node that has time-series collections
        assert "MongoDB status history: time-series status_history" in result.stderr
        assert "sharded cluster" not in result.stderr
    # the seeded key is an admin key: it may create channels' keys
    response = api.client.post(
        "/v1/api-keys", json={"name": "ops", "role": "admin"}, headers={"Authorization": f"Bearer {key}"}
    )
    assert response.status_code == 201, response.text


def test_an_upgraded_deployment_keeps_its_users_conversation_lists(
    platform: LocalPlatform, api: Api, whatsapp_conversation: WhatsAppSetup
) -> None:
    # GIVEN a conversation as a version before `participations` left it: no participations, no backfill marker
    setup = whatsapp_conversation
    key = api.created("/v1/api-keys", {"name": "upgrade", "role": "agent", "user_id": setup.agent_id})["api_key"]
    client: MongoClient[dict[str, Any]] = MongoClient(platform.urls["mongo"], tz_aware=True)
    db = client.get_default_database(DEFAULT_DATABASE)
    try:
        db.participations.delete_many({"conversation_id": setup.conversation_id})
        db.layout.delete_many({})
        listed = api.call("GET", "/v1/conversations?limit=200", key=key).json()["items"]
        assert setup.conversation_id not in [c["conversation_id"] for c in listed]
        # WHEN the new release's prepare_databases runs
        result = subprocess.run(
            [sys.executable, "-m", "chat4all.prepare_databases"],
            env={
                **os.environ,
                "PYTHONPATH": str(LAYERS),
                "DATABASE_URL": platform.urls["postgres"],
                "MONGODB_URI": platform.urls["mongo"],
            },
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        # THEN both participants have their participation again, and the agent lists the conversation
        assert "participations backfilled: 2" in result.stderr
        assert db.participations.count_documents({"conversation_id": setup.conversation_id}) == 2
        listed = api.call("GET", "/v1/conversations?limit=200", key=key).json()["items"]
        assert setup.conversation_id in [c["conversation_id"] for c in listed]
    finally:
        client.close()
