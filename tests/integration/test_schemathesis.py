"""schemathesis (coverage and fuzzing phases, every check) over openapi.yaml against the running platform.

A short run CI can afford: a bounded number of examples per operation, deterministic generation. It runs
last in the session (tests/conftest.py), because the users and channels it creates are real.

GET /v1/messages/{message_id} and its /status take, half of the time, the id of a real GROUP message made
for the run (a schemathesis dictionary bound to the path parameter), so that the document's `deliveries` and
`delivery_counts` are checked against real answers, not only 404s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

if TYPE_CHECKING:
    from devstack.stack import LocalPlatform
    from tests.integration.conftest import Api

ROOT = Path(__file__).resolve().parents[2]
MAX_EXAMPLES = os.environ.get("CHAT4ALL_FUZZ_EXAMPLES", "25")
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


def group_message(api: Api, whatsapp_channel: tuple[dict[str, Any], dict[str, str]]) -> str:
    """A message in a GROUP of an agent and two WhatsApp customers: its answer has `deliveries`."""
    agent = api.created("/v1/users", {"display_name": "Fuzz Agent", "user_type": "AGENT"})["user_id"]
    customers = []
    for _ in range(2):
        phone = "55119" + str(uuid.uuid4().int)[:8]
        customer = api.created("/v1/users", {"display_name": "Fuzz Customer", "user_type": "CUSTOMER"})["user_id"]
        api.created(f"/v1/users/{customer}/identities", {"platform": "WHATSAPP", "platform_user_id": phone})
        customers.append(customer)
    body = {
        "conversation_type": "GROUP",
        "participants": [agent, *customers],
        "primary_channel": "WHATSAPP",
        "channel_id": whatsapp_channel[0]["channel_id"],
    }
    conversation_id = api.created("/v1/conversations", body)["conversation_id"]
    sent = api.call(
        "POST", "/v1/messages", json={"conversation_id": conversation_id, "sender_id": agent, "content": "hi"}
    )
    assert sent.status_code == 202, sent.text
    return str(sent.json()["message_id"])


def config_with_group_message(folder: Path, message_id: str) -> Path:
    """tests/fuzz/schemathesis.toml, plus: the message_id path parameter is the GROUP message half of the time."""
    config = folder / "schemathesis.toml"
    base = (ROOT / "tests" / "fuzz" / "schemathesis.toml").read_text()
    config.write_text(
        f"{base}\n[dictionaries.group_messages]\nvalues = [{json.dumps(message_id)}]\n\n"
        '[parameters]\n"path.message_id" = { dictionary = "group_messages", probability = 0.5 }\n'
    )
    return config


@pytest.mark.fuzz
def test_the_api_keeps_its_document(
    platform: LocalPlatform, api: Api, whatsapp_channel: tuple[dict[str, Any], dict[str, str]], tmp_path: Path
) -> None:
    config = config_with_group_message(tmp_path, group_message(api, whatsapp_channel))
    # an admin key of the fuzzer's own, with a rate no burst of its reaches: a 429 would be a "valid request
    # rejected" to schemathesis (test_request_limits checks the limits themselves)
    fuzzer = api.created("/v1/api-keys", {"name": "schemathesis", "role": "admin", "rate_limit": 100_000})["api_key"]
    command = [
        str(Path(sys.executable).parent / "schemathesis"),
        "--config-file", str(config),
        "run", str(ROOT / "openapi.yaml"),
        "--url", platform.api_url,
        "--header", f"Authorization: Bearer {fuzzer}",
        "--phases", "coverage,fuzzing",
        "--checks", "all",
        "--max-examples", MAX_EXAMPLES,
        "--generation-deterministic",
        "--workers", "2",
        "--request-timeout", "30",
        "--no-color",
        "--report", "junit",
        "--report-dir", str(tmp_path),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False, cwd=tmp_path)
    summary = result.stdout[-20000:]
    assert result.returncode == 0, summary + result.stderr[-5000:]
    # every operation of the document was exercised, by both phases
    document = yaml.safe_load((ROOT / "openapi.yaml").read_text())
    operations = sum(1 for item in document["paths"].values() for method in item if method in HTTP_METHODS)
    assert f"Tested: {operations}\n" in summary, summary
    assert "✅ Coverage" in summary and "✅ Fuzzing" in summary, summary
