"""Helpers over the platform under test (the `platform` fixture and the channels' local servers are in
tests/support/platform.py, shared with the port contract suite)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import boto3
import httpx
import psycopg
import pytest

from tests.support.waiting import wait_until

if TYPE_CHECKING:
    from collections.abc import Iterator

    from devstack.stack import LocalPlatform


def wait_until_drained(platform: LocalPlatform, queue: str, timeout: float = 60.0) -> None:
    """Wait until the template's queue `queue` (its logical id) holds no message, waiting or in flight: all that
    was sent to it before has been consumed (a consumer deletes a record only once it has handled it)."""
    assert platform.stack is not None
    sqs = boto3.client("sqs", endpoint_url=platform.urls["aws"], region_name="us-east-1")
    url = platform.stack.resolve({"Ref": queue})
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]

    def drained() -> bool:
        attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
        return all(attributes[name] == "0" for name in names)

    wait_until(drained, timeout, f"{queue} drained")


@dataclass
class Api:
    """An HTTP client for the platform with the admin key, plus helpers for the common setup."""

    client: httpx.Client
    admin_key: str

    def call(self, method: str, path: str, *, key: str | None = None, **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        headers.setdefault("Authorization", f"Bearer {key or self.admin_key}")
        return self.client.request(method, path, headers=headers, **kwargs)

    def created(self, path: str, body: dict[str, Any], key: str | None = None) -> dict[str, Any]:
        response = self.call("POST", path, json=body, key=key)
        assert response.status_code == 201, response.text
        return dict(response.json())


def lost_key_line(api: Api, database_url: str) -> str:
    """A WhatsApp channel whose stored ciphertext no KMS key opens (as after losing its key); `database_url`:
    the platform's PostgreSQL, on a connection of its own (this process's may be gone after a wiping test)."""
    secret = uuid.uuid4().hex
    credentials = {"access_token": secret, "phone_number_id": f"7{uuid.uuid4().int % 10**12}"}
    credentials |= {"app_secret": secret, "verify_token": secret}
    body = {"platform": "WHATSAPP", "name": "lost key", "credentials": credentials}
    channel_id: str = api.created("/v1/channels", body)["channel_id"]
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE channels SET credentials_ciphertext = %s WHERE channel_id = %s", (b"\x00" * 64, channel_id)
        )
    return channel_id


@pytest.fixture(scope="session")
def api(platform: LocalPlatform) -> Iterator[Api]:
    with httpx.Client(base_url=platform.api_url, timeout=30) as client:
        yield Api(client, platform.admin_api_key)


@dataclass
class WhatsAppSetup:
    agent_id: str
    customer_id: str
    customer_phone: str
    conversation_id: str
    channel: dict[str, Any]
    credentials: dict[str, str]


@pytest.fixture(scope="session")
def whatsapp_channel(api: Api) -> tuple[dict[str, Any], dict[str, str]]:
    credentials = {
        "access_token": f"EAAG-{uuid.uuid4().hex}",
        "phone_number_id": "106540352242922",
        "app_secret": uuid.uuid4().hex,
        "verify_token": uuid.uuid4().hex,
    }
    channel = api.created("/v1/channels", {"platform": "WHATSAPP", "name": "Support line", "credentials": credentials})
    return channel, credentials


@pytest.fixture
def whatsapp_conversation(api: Api, whatsapp_channel: tuple[dict[str, Any], dict[str, str]]) -> WhatsAppSetup:
    """A fresh agent, a fresh customer with a WhatsApp number, and their one-to-one conversation."""
    phone = "55119" + str(uuid.uuid4().int)[:8]
    agent = api.created("/v1/users", {"display_name": "Ana Agent", "user_type": "AGENT"})
    customer = api.created(
        "/v1/users", {"display_name": "Carlos Customer", "user_type": "CUSTOMER", "phone": f"+{phone}"}
    )
    api.created(f"/v1/users/{customer['user_id']}/identities", {"platform": "WHATSAPP", "platform_user_id": phone})
    channel, credentials = whatsapp_channel
    conversation = api.created(
        "/v1/conversations",
        {
            "conversation_type": "ONE_TO_ONE",
            "participants": [agent["user_id"], customer["user_id"]],
            "primary_channel": "WHATSAPP",
            "channel_id": channel["channel_id"],
        },
    )
    return WhatsAppSetup(
        agent["user_id"], customer["user_id"], phone, conversation["conversation_id"], channel, credentials
    )
