"""Different functions of the platform at once, through the local runtime: nobody gets another's request."""

from __future__ import annotations

import threading
import uuid
from typing import TYPE_CHECKING, Any

import httpx

from devstack.apigateway import api_gateway_event
from devstack.template import HttpRoute

if TYPE_CHECKING:
    from collections.abc import Callable

    from devstack.stack import LocalPlatform
    from tests.integration.conftest import Api, WhatsAppSetup


def test_concurrent_requests_to_four_functions_each_get_their_own_answer(
    platform: LocalPlatform, api: Api, whatsapp_conversation: WhatsAppSetup
) -> None:
    # GIVEN 40 clients that start together: sends (ingest), new users (identity), conversation and
    # message reads (conversations, status), each request carrying something of its own
    setup = whatsapp_conversation
    headers = {"Authorization": f"Bearer {platform.admin_api_key}"}
    seeded = api.call(
        "POST",
        "/v1/messages",
        json={"conversation_id": setup.conversation_id, "sender_id": setup.agent_id, "content": "seed"},
    ).json()

    def send(http: httpx.Client, n: int) -> None:
        content = f"message {n} {uuid.uuid4().hex}"
        body = {"conversation_id": setup.conversation_id, "sender_id": setup.agent_id, "content": content}
        response = http.post("/v1/messages", json=body)
        assert response.status_code == 202, response.text
        stored = http.get(f"/v1/messages/{response.json()['message_id']}").json()
        assert stored["content"] == content

    def create_user(http: httpx.Client, n: int) -> None:
        name = f"User {n} {uuid.uuid4().hex[:8]}"
        response = http.post("/v1/users", json={"display_name": name, "user_type": "AGENT"})
        assert response.status_code == 201, response.text
        assert response.json()["display_name"] == name

    def read_conversation(http: httpx.Client, n: int) -> None:
        response = http.get(f"/v1/conversations/{setup.conversation_id}")
        assert response.status_code == 200, response.text
        assert response.json()["conversation_id"] == setup.conversation_id

    def read_message(http: httpx.Client, n: int) -> None:
        response = http.get(f"/v1/messages/{seeded['message_id']}/status")
        assert response.status_code == 200, response.text
        assert response.json()["message_id"] == seeded["message_id"]

    kinds: list[Callable[[httpx.Client, int], None]] = [send, create_user, read_conversation, read_message]
    clients = 40
    barrier = threading.Barrier(clients)
    failures: list[str] = []

    def run(n: int) -> None:
        with httpx.Client(base_url=platform.api_url, headers=headers, timeout=60) as http:
            barrier.wait()
            try:
                kinds[n % len(kinds)](http, n)
            except AssertionError as exc:
                failures.append(f"{kinds[n % len(kinds)].__name__} {n}: {exc}")

    threads = [threading.Thread(target=run, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    # THEN every request was answered as its own
    assert failures == []
    assert not any(thread.is_alive() for thread in threads)


def test_any_function_can_be_invoked_directly(platform: LocalPlatform) -> None:
    event = api_gateway_event(
        "GET", "/health", "", [("host", "local")], b"", "127.0.0.1", HttpRoute("IngestFunction", "GET", "/health"), {}
    )
    result = platform.invoke("IngestFunction", event)
    assert result.ok, result.payload
    answer: dict[str, Any] = result.json()
    assert answer["statusCode"] in (200, 503)
    assert "dependencies" in answer["body"]
    # a handler's exception comes back as Invoke reports a function error: its type and message
    failed = platform.invoke("StatusFunction", {"Records": []})
    assert failed.error_type == "UnexpectedBatchTypeError"
    assert "Unexpected batch event type" in failed.json()["errorMessage"]
