"""One correlation id from the request that sends a message to the webhook that makes it READ (issue 19): the
answer's header, the stored message, the events on the bus, and the log lines of IngestFunction (the send),
RouteFunction (the delivery and the platform call) and StatusFunction (applying READ), read from the functions'
log files in the stack's state dir."""

from __future__ import annotations

import json
import time
import uuid
from typing import TYPE_CHECKING, Any

import boto3
import pytest

from chat4all.adapters.mongo.connection import connect
from tests.integration.test_message_path import post_webhook, wait_for_status
from tests.support.fake_whatsapp import sign, status_webhook
from tests.support.waiting import wait_until

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from devstack.stack import LocalPlatform
    from tests.integration.conftest import Api, WhatsAppSetup
    from tests.support.fake_whatsapp import FakeWhatsApp


def function_log(platform: LocalPlatform, logical_id: str, needle: str) -> list[dict[str, Any]]:
    """The function's structured log lines (logs/functions/<LogicalId>.log) that mention `needle`."""
    path = platform.options.state_dir / "logs" / "functions" / f"{logical_id}.log"
    lines = path.read_text(errors="replace").splitlines() if path.is_file() else []
    found = []
    for line in lines:
        if needle in line and line.startswith("{"):
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
    return found


@pytest.fixture(scope="module")
def bus_events(platform: LocalPlatform) -> Iterator[Callable[[str], list[dict[str, Any]]]]:
    """What the chat4all bus received about a message, collected in a queue of the test's own through a rule."""
    sqs = boto3.client("sqs", endpoint_url=platform.urls["aws"], region_name="us-east-1")
    events = boto3.client("events", endpoint_url=platform.urls["aws"], region_name="us-east-1")
    name = f"test-correlation-{uuid.uuid4().hex[:8]}"
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name=name, EventBusName="chat4all", EventPattern=json.dumps({"source": ["chat4all"]}))
    events.put_targets(Rule=name, EventBusName="chat4all", Targets=[{"Id": "q", "Arn": arn}])
    seen: list[dict[str, Any]] = []

    def received(message_id: str) -> list[dict[str, Any]]:
        reply = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        seen.extend(json.loads(message["Body"]) for message in reply.get("Messages", []))
        return [event for event in seen if event["detail"].get("message_id") == message_id]

    yield received
    events.remove_targets(Rule=name, EventBusName="chat4all", Ids=["q"])
    events.delete_rule(Name=name, EventBusName="chat4all")
    sqs.delete_queue(QueueUrl=url)


def test_one_correlation_id_from_the_send_to_the_webhook_that_makes_it_read(
    api: Api,
    platform: LocalPlatform,
    whatsapp_conversation: WhatsAppSetup,
    fake_whatsapp: FakeWhatsApp,
    bus_events: Callable[[str], list[dict[str, Any]]],
) -> None:
    setup = whatsapp_conversation
    correlation_id = f"test-{uuid.uuid4()}"
    # WHEN a message is sent with the client's X-Correlation-Id
    body = {"conversation_id": setup.conversation_id, "sender_id": setup.agent_id, "content": "correlated"}
    response = api.call("POST", "/v1/messages", json=body, headers={"X-Correlation-Id": correlation_id})
    assert response.status_code == 202, response.text
    # THEN the answer echoes it
    assert response.headers["x-correlation-id"] == correlation_id
    message_id = response.json()["message_id"]
    # AND once it is SENT, WhatsApp reports it read in a signed webhook (a request of its own: its own id)
    wait_for_status(api, message_id, "SENT")
    wamid = fake_whatsapp.wait_for(setup.customer_phone, 1)[-1].platform_message_id
    assert wamid is not None
    read = status_webhook(setup.credentials["phone_number_id"], wamid, "read", setup.customer_phone, int(time.time()))
    assert post_webhook(api, read, sign(setup.credentials["app_secret"], read)) == 200
    wait_for_status(api, message_id, "READ")

    # THEN the stored message keeps it
    database = connect(platform.urls["mongo"])
    try:
        stored = database["messages"].find_one({"_id": message_id})
    finally:
        database.client.close()
    assert stored is not None and stored["correlation_id"] == correlation_id

    # AND every event the bus received about it carries it
    def all_events() -> bool:
        kinds = {event["detail-type"] for event in bus_events(message_id)}
        return {"MessageAccepted", "MessageSent", "MessageStatusChanged"} <= kinds

    wait_until(all_events, 30, "MessageAccepted, MessageSent and MessageStatusChanged on the bus")
    for event in bus_events(message_id):
        assert event["detail"]["correlation_id"] == correlation_id, event

    # AND the log lines of ingest (the send), route (the delivery and the platform call) and status (applying
    # READ) carry it, with the message's id
    def logged() -> bool:
        return bool(
            function_log(platform, "IngestFunction", correlation_id)
            and any(
                line.get("message") == "platform call" for line in function_log(platform, "RouteFunction", message_id)
            )
            and any(
                str(line.get("message", "")).startswith("status READ")
                for line in function_log(platform, "StatusFunction", message_id)
            )
        )

    wait_until(logged, 30, "the message's lines in the ingest, route and status logs")
    ingest = function_log(platform, "IngestFunction", message_id)
    assert any(line.get("message") == "message accepted" for line in ingest)
    route = function_log(platform, "RouteFunction", message_id)
    status = function_log(platform, "StatusFunction", message_id)
    for name, lines in (("IngestFunction", ingest), ("RouteFunction", route), ("StatusFunction", status)):
        about = [line for line in lines if line.get("message_id") == message_id]
        assert about, f"{name} logged nothing with message_id {message_id}"
        assert {line.get("correlation_id") for line in about} == {correlation_id}, (name, about)
        assert {line.get("conversation_id") for line in about} == {setup.conversation_id}, name
    call = next(line for line in route if line.get("message") == "platform call")
    assert call["platform"] == "WHATSAPP" and call["outcome"] == "sent"
    applied = next(line for line in status if str(line.get("message", "")).startswith("status READ"))
    # the webhook's own request id is kept besides, and it is not the message's
    assert applied.get("webhook_correlation_id") not in (None, correlation_id)


def test_a_request_without_the_header_gets_one_and_an_invalid_one_is_replaced(api: Api) -> None:
    made = api.call("GET", "/health")
    assert made.headers.get("x-correlation-id")
    replaced = api.call("GET", "/v1/users/not-a-uuid", headers={"X-Correlation-Id": "not valid!"})
    assert replaced.headers["x-correlation-id"] not in (None, "not valid!")
    kept = api.call("GET", f"/v1/messages/{uuid.uuid4()}", headers={"X-Correlation-Id": "kept.1"})
    assert kept.status_code == 404 and kept.headers["x-correlation-id"] == "kept.1"
