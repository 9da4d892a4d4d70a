"""`python -m chat4all.prepare_databases`: what a deployment runs per release, idempotent."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from devstack.stack import LocalPlatform
    from tests.integration.conftest import Api

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
    # the seeded key is an admin key: it may create channels' keys
    response = api.client.post(
        "/v1/api-keys", json={"name": "ops", "role": "admin"}, headers={"Authorization": f"Bearer {key}"}
    )
    assert response.status_code == 201, response.text
