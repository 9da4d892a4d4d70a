"""A fourth platform is one module: Pigeon (tests/support/fourth_platform), registered from the test package
through CHAT4ALL_CHANNEL_MODULES, sends and receives through `/webhooks/{platform}` with no change in the code.

The platform runs a stack of its own whose functions get the module's name, its API base (the fake server) and
the checkout on their path, as a deployment would add a layer: no other test sees the platform.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.support.fourth_platform.fake import FakePigeon, message_event, status_event, webhook
from tests.support.waiting import wait_until

if TYPE_CHECKING:
    from collections.abc import Iterator

REPO = Path(__file__).resolve().parents[2]
MODULE = "tests.support.fourth_platform.connector"
SERVER_VARIABLES = ("AWS_ENDPOINT_URL", "DATABASE_URL", "MONGODB_URI", "REDIS_URL")


@pytest.fixture(scope="module")
def pigeon() -> Iterator[FakePigeon]:
    server = FakePigeon()
    yield server
    server.close()


@pytest.fixture(scope="module")
def client(pigeon: FakePigeon) -> Iterator[httpx.Client]:
    from devstack.stack import throwaway_platform

    # a stack's start sets this process's environment to its functions' and its teardown drops the databases
    # this process's bootstrap names: with the suite's own stack running too, both are set back afterwards. The
    # servers that stack's start named here are its own (and one LocalStack holds one `chat4all` bus): Pigeon's
    # stack starts servers of its own
    environment = dict(os.environ)
    for name in SERVER_VARIABLES:
        os.environ.pop(name, None)
    forget_connections()
    variables = {"CHAT4ALL_CHANNEL_MODULES": MODULE, "PIGEON_API_BASE": pigeon.url, "PYTHONPATH": str(REPO)}
    try:
        with (
            throwaway_platform("pigeon", {}, variables) as stack,
            httpx.Client(base_url=stack.api_url, timeout=30) as http,
        ):
            http.headers["Authorization"] = f"Bearer {stack.admin_api_key}"
            yield http
    finally:
        os.environ.clear()
        os.environ.update(environment)
        forget_connections()


def forget_connections() -> None:
    """Clear the test process's bootstrap caches (settings, connections, services: made from the environment)."""
    from chat4all import bootstrap

    for value in list(vars(bootstrap).values()):
        if callable(getattr(value, "cache_clear", None)):
            value.cache_clear()


def created(client: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post(path, json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


def test_only_the_test_package_names_the_fourth_platform() -> None:
    # GIVEN the code a deployment runs: functions, layers and the template
    found = subprocess.run(
        ["git", "grep", "-I", "-l", "-i", "pigeon", "--", "functions", "layers", "template.yaml", "devstack"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    # THEN none of it names the platform: its module and its tests are all there is of it
    assert found.stdout == ""


def test_a_fourth_platform_sends_and_receives_through_its_own_module(client: httpx.Client, pigeon: FakePigeon) -> None:
    # GIVEN a Pigeon channel (its credentials checked by Pigeon's API), an agent and a customer on Pigeon
    account = f"acct-{uuid.uuid4().hex[:8]}"
    credentials = {"api_key": f"pk_{uuid.uuid4().hex}", "account_id": account, "webhook_secret": uuid.uuid4().hex}
    pigeon.keys[account] = credentials["api_key"]
    refused = client.post(
        "/v1/channels", json={"platform": "PIGEON", "name": "x", "credentials": {**credentials, "api_key": "pk_wrong!"}}
    )
    assert refused.status_code == 422, refused.text
    channel = created(client, "/v1/channels", {"platform": "PIGEON", "name": "Pigeon line", "credentials": credentials})
    assert (channel["platform"], channel["rate_limit"]) == ("PIGEON", 20)
    agent = created(client, "/v1/users", {"display_name": "Ana Agent", "user_type": "AGENT"})
    customer = created(client, "/v1/users", {"display_name": "Carl", "user_type": "CUSTOMER"})
    created(
        client, f"/v1/users/{customer['user_id']}/identities", {"platform": "PIGEON", "platform_user_id": "pg-carl"}
    )
    conversation = created(
        client,
        "/v1/conversations",
        {
            "conversation_type": "ONE_TO_ONE",
            "participants": [agent["user_id"], customer["user_id"]],
            "primary_channel": "PIGEON",
            "channel_id": channel["channel_id"],
        },
    )
    conversation_id = conversation["conversation_id"]

    # WHEN the agent sends a message
    accepted = client.post(
        "/v1/messages",
        json={"conversation_id": conversation_id, "sender_id": agent["user_id"], "content": "Hello by pigeon"},
    )
    assert accepted.status_code == 202, accepted.text
    message_id = accepted.json()["message_id"]

    # THEN it reaches Pigeon's API in Pigeon's format, and is SENT under Pigeon's id
    wait_until(lambda: pigeon.messages_to(account, "pg-carl"), what="the message at the Pigeon server")
    assert pigeon.messages_to(account, "pg-carl") == [{"to": "pg-carl", "text": "Hello by pigeon"}]

    def status() -> dict[str, Any]:
        return dict(client.get(f"/v1/messages/{message_id}").json())

    wait_until(lambda: status()["status"] == "SENT", what="the message SENT")
    platform_message_id = status()["platform_message_id"]
    assert platform_message_id.startswith("pg-")

    # WHEN Pigeon reports it delivered, and the customer answers, at /webhooks/pigeon
    body, headers = webhook(account, credentials["webhook_secret"], status_event(platform_message_id, "delivered"))
    assert client.post("/webhooks/pigeon", content=body, headers=headers).status_code == 200
    body, headers = webhook(account, credentials["webhook_secret"], message_event("pg-in-1", "pg-carl", "Got it!"))
    forged = {**headers, "X-Pigeon-Signature": "sha256=" + "0" * 64}
    assert client.post("/webhooks/pigeon", content=body, headers=forged).status_code == 401
    answered = client.post("/webhooks/pigeon", content=body, headers=headers)
    assert answered.status_code == 200, answered.text

    # THEN the status moves and the answer lands in the conversation, from the customer, on Pigeon
    wait_until(lambda: status()["status"] == "DELIVERED", what="the message DELIVERED")

    def history() -> list[tuple[str, str, str, str]]:
        items = client.get(f"/v1/conversations/{conversation_id}/messages").json()["items"]
        return [(m["content"], m["direction"], m["sender_id"], m["channel"]) for m in items]

    assert history() == [
        ("Hello by pigeon", "OUTBOUND", agent["user_id"], "PIGEON"),
        ("Got it!", "INBOUND", customer["user_id"], "PIGEON"),
    ]
    # an unknown platform's webhook is a 404 problem; Pigeon has no subscription check
    unknown = client.post("/webhooks/carrier-crow", content=b"{}", headers={"Content-Type": "application/json"})
    assert unknown.status_code == 404 and unknown.headers["content-type"].startswith("application/problem+json")
    assert client.get("/webhooks/pigeon").status_code == 404
    assert client.post("/v1/channels", json={"platform": "CROW", "name": "x", "credentials": {}}).status_code == 422
