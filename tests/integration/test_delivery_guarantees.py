"""Order, exactly-one platform call or FAILED, and duplicates, against the real servers (docs/GUARANTEES.md).

Every window of the model has a test: a crash before the platform call, after it and before its record,
after the record and before the SQS delete, and a duplicate batch. The crashes happen in this process, in a
delivery service built from the platform's own adapters (real MongoDB, PostgreSQL, KMS and WhatsApp-format
server); the re-run is the route function itself, through the local Lambda runtime. One test kills the route
function's process while its platform call is under way.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
import time
import uuid
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from chat4all import bootstrap
from chat4all.adapters.aws import EventBridgePublisher
from chat4all.adapters.aws_api import AwsJsonApi
from chat4all.adapters.mongo import MongoConversationStore, MongoEventOutbox, MongoMessageStore
from chat4all.adapters.mongo.documents import message_doc
from chat4all.domain.commands import CreateUser, SendMessage
from chat4all.domain.errors import ForbiddenError, ValidationFailedError
from chat4all.domain.models import (
    Conversation,
    ConversationType,
    Direction,
    Message,
    MessageStatus,
    Platform,
    Principal,
    Role,
    UserType,
    utcnow,
)
from chat4all.services import route_jobs
from chat4all.services.delivery import DeliveryService
from chat4all.services.messages import MessageService
from chat4all.services.notifications import EventBuffer, EventRelay
from tests.fakes.in_memory import InMemoryEventPublisher, InMemoryOutboundQueue
from tests.integration.conftest import wait_until_drained
from tests.integration.test_message_path import send, wait_for_status
from tests.support.waiting import wait_until

# a sender id of the same form as a real user's: the API's schema says a sender_id is a UUID
SOMEONE = str(uuid.uuid4())

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from chat4all.domain.models import OutboundMessage, ProviderReceipt
    from chat4all.ports import ChannelConnector
    from devstack.stack import LocalPlatform
    from tests.integration.conftest import Api, WhatsAppSetup
    from tests.support.fake_whatsapp import FakeWhatsApp

ADMIN = Principal("test-admin", Role.ADMIN)


class Crash(BaseException):
    """The process dies here (BaseException: nothing on the way catches it, as nothing survives a SIGKILL)."""


def store_without_enqueueing(setup: WhatsAppSetup, *contents: str) -> list[str]:
    """Accept messages as ingest does, but keep their jobs off the route queue: the test decides who runs them."""
    db = bootstrap.mongo()
    service = MessageService(
        MongoMessageStore(db),
        MongoConversationStore(db),
        bootstrap.users(),
        InMemoryOutboundQueue(),
    )
    return [
        service.accept(SendMessage(str(uuid.uuid4()), setup.conversation_id, setup.agent_id, content), ADMIN).message_id
        for content in contents
    ]


def delivery_with(
    connector: ChannelConnector | None = None, messages: MongoMessageStore | None = None
) -> DeliveryService:
    real = bootstrap.delivery_service()
    return DeliveryService(
        messages or real.messages,
        real.conversations,
        real.users,
        real.channels,
        {Platform.WHATSAPP: connector or real.connectors[Platform.WHATSAPP]},
        InMemoryEventPublisher(),
        send_margin=timedelta(0),  # the crashing runs here take short leases, so a re-run comes soon
    )


def route_job(message_id: str, conversation_id: str) -> None:
    """Put a fresh job on the route queue, as the sweeper or a redrive does."""
    bootstrap.outbound_queue().enqueue(message_id, conversation_id, dedupe_key=str(uuid.uuid4()))


def sqs_event(message_id: str, conversation_id: str) -> dict[str, Any]:
    """The route queue's record for a job, as Lambda's event source mapping hands it over."""
    return {
        "Records": [
            {
                "messageId": str(uuid.uuid4()),
                "receiptHandle": f"not-a-handle-{uuid.uuid4().hex}",
                "body": json.dumps({"message_id": message_id, "conversation_id": conversation_id}),
                "attributes": {"ApproximateReceiveCount": "1", "MessageGroupId": conversation_id},
                "messageAttributes": {},
                "md5OfBody": "",
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:000000000000:route.fifo",
                "awsRegion": "us-east-1",
            }
        ]
    }


def status_of(api: Api, message_id: str) -> dict[str, Any]:
    return dict(api.call("GET", f"/v1/messages/{message_id}").json())


# ------------------------------------------------------------------------------------------------ order


def test_many_concurrent_senders_on_one_conversation_in_order_without_gaps(
    platform: LocalPlatform, api: Api, whatsapp_conversation: WhatsAppSetup, fake_whatsapp: FakeWhatsApp
) -> None:
    # GIVEN 12 clients that start together, each sending 8 messages back to back into one conversation
    setup = whatsapp_conversation
    clients, each = 12, 8
    barrier = threading.Barrier(clients)
    accepted: list[dict[str, Any]] = []
    failures: list[str] = []
    lock = threading.Lock()

    def client(n: int) -> None:
        headers = {"Authorization": f"Bearer {platform.admin_api_key}"}
        with httpx.Client(base_url=platform.api_url, headers=headers, timeout=60) as http:
            barrier.wait()
            for k in range(each):
                body = {"conversation_id": setup.conversation_id, "sender_id": setup.agent_id, "content": f"c{n}-{k}"}
                response = http.post("/v1/messages", json=body)
                with lock:
                    if response.status_code == 202:
                        accepted.append({**response.json(), "content": body["content"]})
                    else:
                        failures.append(f"{response.status_code} {response.text}")

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert failures == []
    # THEN the sequences are 1..96 without a gap or a repeat, and the count is exact
    total = clients * each
    assert sorted(a["sequence"] for a in accepted) == list(range(1, total + 1))
    conversation = api.call("GET", f"/v1/conversations/{setup.conversation_id}").json()
    assert conversation["message_count"] == total
    # AND the platform received every message once, in sequence order, whatever order the enqueues landed in
    delivered = fake_whatsapp.wait_for(setup.customer_phone, total, timeout=240)
    by_content = {a["content"]: a["sequence"] for a in accepted}
    assert [by_content[r.body["text"]["body"]] for r in delivered] == list(range(1, total + 1))
    assert len(fake_whatsapp.sent_to(setup.customer_phone)) == total
    # AND each client's own messages kept the order it sent them in
    for n in range(clients):
        mine = [by_content[f"c{n}-{k}"] for k in range(each)]
        assert mine == sorted(mine)


def test_jobs_enqueued_in_reverse_and_again_still_deliver_in_sequence_order(
    platform: LocalPlatform, api: Api, whatsapp_conversation: WhatsAppSetup, fake_whatsapp: FakeWhatsApp
) -> None:
    # GIVEN 6 stored messages whose jobs reach the route queue newest first, some of them twice
    setup = whatsapp_conversation
    ids = store_without_enqueueing(setup, *(f"r{n}" for n in range(1, 7)))
    for message_id in [*reversed(ids), ids[3], ids[0]]:
        route_job(message_id, setup.conversation_id)
    # THEN the platform receives them once each, in sequence order
    delivered = fake_whatsapp.wait_for(setup.customer_phone, 6)
    assert [r.body["text"]["body"] for r in delivered] == [f"r{n}" for n in range(1, 7)]
    for message_id in ids:
        wait_for_status(api, message_id, "SENT")
    wait_until_drained(platform, "RouteQueue")  # the extra jobs were consumed; none sent anything again
    assert len(fake_whatsapp.sent_to(setup.customer_phone)) == 6


# ------------------------------------------------------------------------------------------------ windows


class CrashingConnector:
    """The real WhatsApp connector, with the process dying just before or just after its call."""

    def __init__(self, real: ChannelConnector, *, after_call: bool) -> None:
        self.real = real
        self.after_call = after_call

    def send(self, credentials: Mapping[str, str], message: OutboundMessage) -> ProviderReceipt:
        if not self.after_call:
            raise Crash("died before the platform call")
        self.real.send(credentials, message)
        raise Crash("died after the platform call, before recording it")


class CrashingBeforeTheAttempt(MongoMessageStore):
    def begin_attempt(self, message: Any, started_at: Any, lease_until: Any) -> int | None:
        raise Crash("died before recording the attempt")


def test_crash_before_the_attempt_is_recorded_then_the_rerun_sends_once(
    api: Api, whatsapp_conversation: WhatsAppSetup, fake_whatsapp: FakeWhatsApp
) -> None:
    setup = whatsapp_conversation
    [message_id] = store_without_enqueueing(setup, "before the attempt")
    crashing = delivery_with(messages=CrashingBeforeTheAttempt(bootstrap.mongo()))
    with pytest.raises(Crash):
        crashing.deliver_conversation(setup.conversation_id, utcnow() + timedelta(seconds=30))
    assert fake_whatsapp.sent_to(setup.customer_phone) == []
    route_job(message_id, setup.conversation_id)
    wait_for_status(api, message_id, "SENT")
    assert len(fake_whatsapp.sent_to(setup.customer_phone)) == 1


def test_crash_after_the_attempt_before_the_call_fails_it_as_unknown_with_no_call(
    api: Api, whatsapp_conversation: WhatsAppSetup, fake_whatsapp: FakeWhatsApp
) -> None:
    setup = whatsapp_conversation
    first, second = store_without_enqueueing(setup, "attempt recorded, never called", "the next one")
    real = bootstrap.delivery_service().connectors[Platform.WHATSAPP]
    crashing = delivery_with(connector=CrashingConnector(real, after_call=False))  # type: ignore[arg-type]
    with pytest.raises(Crash):
        crashing.deliver_conversation(setup.conversation_id, utcnow() + timedelta(seconds=2))
    # the re-run (the route function) waits out the dead invocation's lease, then settles without a call
    route_job(first, setup.conversation_id)
    status = wait_for_status(api, first, "FAILED")
    assert status["history"][-1]["detail"].startswith("outcome unknown")
    wait_for_status(api, second, "SENT")
    assert [r.body["text"]["body"] for r in fake_whatsapp.sent_to(setup.customer_phone)] == ["the next one"]


def test_crash_after_the_call_before_its_record_is_one_call_and_failed_as_unknown(
    api: Api, whatsapp_conversation: WhatsAppSetup, fake_whatsapp: FakeWhatsApp
) -> None:
    setup = whatsapp_conversation
    first, second = store_without_enqueueing(setup, "called, answer lost", "after it")
    real = bootstrap.delivery_service().connectors[Platform.WHATSAPP]
    crashing = delivery_with(connector=CrashingConnector(real, after_call=True))  # type: ignore[arg-type]
    with pytest.raises(Crash):
        crashing.deliver_conversation(setup.conversation_id, utcnow() + timedelta(seconds=2))
    assert len(fake_whatsapp.sent_to(setup.customer_phone)) == 1
    route_job(first, setup.conversation_id)
    status = wait_for_status(api, first, "FAILED")
    assert status["history"][-1]["detail"].startswith("outcome unknown")
    wait_for_status(api, second, "SENT")
    # exactly one call for the first message (the one before the crash), one for the second
    assert [r.body["text"]["body"] for r in fake_whatsapp.sent_to(setup.customer_phone)] == [
        "called, answer lost",
        "after it",
    ]


def test_after_the_record_before_the_delete_the_record_again_sends_nothing(
    platform: LocalPlatform, api: Api, whatsapp_conversation: WhatsAppSetup, fake_whatsapp: FakeWhatsApp
) -> None:
    # GIVEN a message sent and recorded SENT, whose SQS record was not deleted (it comes again)
    setup = whatsapp_conversation
    accepted = send(api, setup, "recorded")
    wait_for_status(api, accepted["message_id"], "SENT")
    # WHEN the same record is handed to the route function again, twice
    for _ in range(2):
        result = platform.invoke("RouteFunction", sqs_event(accepted["message_id"], setup.conversation_id))
        assert result.ok, result.payload
        assert result.json() == {"batchItemFailures": []}
    # THEN nothing is sent again and the status stays
    assert len(fake_whatsapp.sent_to(setup.customer_phone)) == 1
    assert status_of(api, accepted["message_id"])["status"] == "SENT"


def test_a_duplicate_batch_run_concurrently_is_one_platform_call(
    platform: LocalPlatform, api: Api, whatsapp_conversation: WhatsAppSetup, fake_whatsapp: FakeWhatsApp
) -> None:
    # GIVEN a stored message whose one record is delivered to four route invocations at once
    setup = whatsapp_conversation
    ids = store_without_enqueueing(setup, "d1", "d2", "d3")
    event = sqs_event(ids[0], setup.conversation_id)
    results: list[Any] = []
    barrier = threading.Barrier(4)

    def invoke() -> None:
        barrier.wait()
        results.append(platform.invoke("RouteFunction", event))

    threads = [threading.Thread(target=invoke) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert all(result.ok for result in results), [r.payload for r in results]
    # THEN each message reached the platform exactly once, in order (an invocation that found another's open
    # attempt waited for it; the one that holds the conversation sends them all)
    for message_id in ids:
        wait_for_status(api, message_id, "SENT", timeout=60)
    assert [r.body["text"]["body"] for r in fake_whatsapp.sent_to(setup.customer_phone)] == ["d1", "d2", "d3"]


def test_route_killed_during_the_platform_call_is_one_call_and_failed_as_unknown(
    platform: LocalPlatform,
    api: Api,
    whatsapp_conversation: WhatsAppSetup,
    fake_whatsapp: FakeWhatsApp,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN a platform that takes its time answering this recipient
    setup = whatsapp_conversation
    answer = fake_whatsapp._answer
    entered, release = threading.Event(), threading.Event()

    def slow_answer(path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any], str | None]:
        if body.get("to") == setup.customer_phone:
            entered.set()
            release.wait(20)
        return answer(path, body)

    monkeypatch.setattr(fake_whatsapp, "_answer", slow_answer)
    # WHEN the route function, invoked with the message's job, is SIGKILLed while its call is under way (the job
    # is handed over directly: a batch killed in SQS's hands would come back only after the queue's 180 s
    # visibility timeout, and LocalStack then also holds back other groups' postponed records)
    [message_id] = store_without_enqueueing(setup, "killed mid-call")
    event = sqs_event(message_id, setup.conversation_id)
    results: list[Any] = []
    invocation = threading.Thread(target=lambda: results.append(platform.invoke("RouteFunction", event)))
    invocation.start()
    wait_until(entered.is_set, what="the platform call")
    assert platform.runtime is not None
    killed = platform.runtime.container_pids().get("RouteFunction", [])
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    invocation.join(30)
    assert [r.error_type for r in results] == ["Runtime.ExitError"]
    release.set()
    # AND the job comes again and again, as SQS's redelivery or a redrive would bring it
    deadline = time.monotonic() + 90
    while status_of(api, message_id)["status"] == "PENDING":
        assert time.monotonic() < deadline, "the message stayed PENDING"
        # (an idle container killed with the busy one may take an invocation before the runtime sees it gone)
        platform.invoke("RouteFunction", event)
        time.sleep(1)
    # THEN the message is FAILED with its reason once the dead invocation's time is over, never sent again
    status = api.call("GET", f"/v1/messages/{message_id}/status").json()
    assert status["history"][-1]["detail"].startswith("outcome unknown")
    wait_until_drained(platform, "RouteQueue")  # a job the settlement queued, if any, has run
    assert len(fake_whatsapp.sent_to(setup.customer_phone)) == 1


# ------------------------------------------------------------------------------------------------ duplicates


def test_concurrent_duplicates_get_the_same_202_and_one_delivery(
    platform: LocalPlatform, api: Api, whatsapp_conversation: WhatsAppSetup, fake_whatsapp: FakeWhatsApp
) -> None:
    setup = whatsapp_conversation
    message_id = str(uuid.uuid4())
    body = {
        "message_id": message_id,
        "conversation_id": setup.conversation_id,
        "sender_id": setup.agent_id,
        "content": "once",
    }
    copies = 8
    barrier = threading.Barrier(copies)
    answers: list[tuple[int, str]] = []

    def post() -> None:
        headers = {"Authorization": f"Bearer {platform.admin_api_key}"}
        with httpx.Client(base_url=platform.api_url, headers=headers, timeout=60) as http:
            barrier.wait()
            response = http.post("/v1/messages", json=body)
            answers.append((response.status_code, response.text))

    threads = [threading.Thread(target=post) for _ in range(copies)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert {status for status, _ in answers} == {202}, answers
    assert len({json.dumps(json.loads(text), sort_keys=True) for _, text in answers}) == 1
    conflict = api.call("POST", "/v1/messages", json={**body, "content": "changed"})
    assert conflict.status_code == 409
    wait_for_status(api, message_id, "SENT")
    wait_until_drained(platform, "RouteQueue")  # a second job, had the duplicates made one, was consumed
    assert len(fake_whatsapp.sent_to(setup.customer_phone)) == 1
    history = api.call("GET", f"/v1/conversations/{setup.conversation_id}/messages").json()
    assert [m["message_id"] for m in history["items"]] == [message_id]


# ------------------------------------------------------------------------------------------------ outages


# the URLs the functions' secrets hold, as the stack knows them
REAL_URLS: dict[str, Callable[[LocalPlatform], str]] = {
    "MONGODB_URI": lambda platform: platform.urls["mongo"],
    "DATABASE_URL": lambda platform: platform.urls["postgres_app"],
}


@pytest.mark.parametrize("variable", ["MONGODB_URI", "DATABASE_URL"])
def test_a_database_that_is_down_is_a_quick_503_and_recovers(
    platform: LocalPlatform, api: Api, whatsapp_conversation: WhatsAppSetup, variable: str
) -> None:
    # GIVEN the ingest function's database moved to a port where nothing listens (UpdateFunctionConfiguration)
    setup = whatsapp_conversation
    assert platform.runtime is not None
    # (the functions read these URLs from secrets; a variable in their environment wins over the secret)
    environment = platform.function_environment("IngestFunction")
    real = REAL_URLS[variable](platform)
    host = real.split("://", 1)[1].split("/", 1)[0].rpartition("@")[2]
    platform.runtime.update_function_environment(
        "IngestFunction", {**environment, variable: real.replace(host, "127.0.0.1:9")}
    )
    body = {"conversation_id": setup.conversation_id, "sender_id": setup.agent_id, "content": "while down"}
    try:
        response = api.call("POST", "/v1/messages", json=body)
    finally:
        platform.runtime.update_function_environment("IngestFunction", environment)
    # THEN the answer is a 503 problem, and the next request after the database is back is accepted
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == 503
    assert api.call("POST", "/v1/messages", json=body).status_code == 202


# ------------------------------------------------------------------------------------------------ events


class CountingEvents(AwsJsonApi):
    """The real EventBridge API, counting PutEvents calls."""

    def __init__(self) -> None:
        settings = bootstrap.settings()
        super().__init__("events", region=settings.aws_region, endpoint_url=settings.aws_endpoint_url)
        self.calls: list[int] = []
        self.entries: list[list[dict[str, Any]]] = []

    def call(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        if operation == "PutEvents":
            self.calls.append(len(params["Entries"]))
            self.entries.append(params["Entries"])
        return super().call(operation, params)


def test_events_go_out_in_batches_and_what_the_bus_refuses_waits_in_the_outbox(platform: LocalPlatform) -> None:
    # GIVEN the real bus (LocalStack) and the real outbox (MongoDB)
    db = bootstrap.mongo()
    outbox = MongoEventOutbox(db, relay_after=timedelta(days=1))  # events kept on messages: the next test
    outbox.remove([outbox_id for outbox_id, _ in outbox.pending(1000)])  # what other tests left
    client = CountingEvents()
    bus = EventBridgePublisher(client, bootstrap.settings().event_bus_name)
    buffer = EventBuffer(bus, outbox)
    run = uuid.uuid4().hex
    # WHEN a unit of work publishes 23 events and then flushes
    for n in range(23):
        buffer.publish("MessageSent", {"run": run, "n": n})
    # THEN they went out in 3 PutEvents (10 and 10 once 20 were collected, then 3), and nothing is kept
    assert client.calls == [10, 10]
    assert buffer.flush() == 3
    assert client.calls == [10, 10, 3]
    assert outbox.pending(100) == []
    # WHEN the bus cannot be reached (its endpoint moved to a port where nothing listens)
    down = AwsJsonApi("events", region="us-east-1", endpoint_url="http://127.0.0.1:9", connect_timeout=1, attempts=1)
    refusing = EventBuffer(EventBridgePublisher(down, bootstrap.settings().event_bus_name), outbox)
    for n in range(12):
        refusing.publish("MessageSent", {"run": run, "n": n})
    assert refusing.flush() == 0
    # THEN every one is kept in MongoDB, and the relay publishes them to the real bus and empties the outbox
    kept = outbox.pending(100)
    assert sorted(event.detail["n"] for _, event in kept) == list(range(12))
    relay = EventRelay(bus, outbox)
    assert relay.publish_pending_events(limit=5) == 5
    assert relay.publish_pending_events(limit=100) == 7
    assert outbox.pending(100) == []
    assert relay.publish_pending_events(limit=100) == 0


def test_a_dependency_down_for_route_is_retried_then_failed_with_its_reason(
    platform: LocalPlatform, api: Api, whatsapp_conversation: WhatsAppSetup, fake_whatsapp: FakeWhatsApp
) -> None:
    # GIVEN route's PostgreSQL down, and route giving up on a message after 4 s of unavailable dependencies
    setup = whatsapp_conversation
    assert platform.runtime is not None
    environment = platform.function_environment("RouteFunction")
    real = REAL_URLS["DATABASE_URL"](platform)
    host = real.split("://", 1)[1].split("/", 1)[0].rpartition("@")[2]
    down = {**environment, "DATABASE_URL": real.replace(host, "127.0.0.1:9"), "DELIVERY_TROUBLE_SECONDS": "4"}
    platform.runtime.update_function_environment("RouteFunction", down)
    try:
        # WHEN a message is sent
        accepted = send(api, setup, "while PostgreSQL is down")
        # THEN it is retried with back-off and ends FAILED with the reason, not PENDING for ever
        status = wait_for_status(api, accepted["message_id"], "FAILED", timeout=60)
    finally:
        platform.runtime.update_function_environment("RouteFunction", environment)
    assert "unavailable dependencies" in status["history"][-1]["detail"]
    assert fake_whatsapp.sent_to(setup.customer_phone) == []
    # AND once PostgreSQL is back, the conversation's next message goes out
    after = send(api, setup, "after the outage")
    wait_for_status(api, after["message_id"], "SENT")
    assert [r.body["text"]["body"] for r in fake_whatsapp.sent_to(setup.customer_phone)] == ["after the outage"]


def stored_conversation(conversations: MongoConversationStore, *, message_count: int) -> Conversation:
    """A conversation without participants, stored directly (the adapter tests need no API around it)."""
    now = utcnow()
    conversation = Conversation(
        str(uuid.uuid4()), ConversationType.ONE_TO_ONE, [], Platform.WHATSAPP, message_count, now, now
    )
    conversations.add_conversation(conversation)
    return conversation


def outbound_message(conversation: Conversation, text: str, *, sequence: int = 0) -> Message:
    return Message(
        str(uuid.uuid4()), conversation.conversation_id, SOMEONE, text, None, Platform.WHATSAPP,
        Direction.OUTBOUND, sequence, MessageStatus.PENDING, [], utcnow(), "",
    )  # fmt: skip


def test_a_counter_behind_its_messages_is_caught_up_never_reusing_a_sequence(platform: LocalPlatform) -> None:
    # GIVEN a conversation whose messages 1..3 were stored before the counter moved with them, the counter at 1
    db = bootstrap.mongo()
    conversations, messages = MongoConversationStore(db), MongoMessageStore(db)
    conversation = stored_conversation(conversations, message_count=1)
    db.conversations.update_one({"_id": conversation.conversation_id}, {"$set": {"last_sequence": 1}})

    def message(n: int) -> Message:
        return outbound_message(conversation, f"m{n}", sequence=n)

    for n in (1, 2, 3):
        db.messages.insert_one(message_doc(message(n)))
    # WHEN a message is stored through the adapter
    stored = messages.add_message(message(0))
    # THEN it takes the next free sequence, and the conversation's counter and count agree with the messages
    assert stored is not None and stored.sequence == 4
    again = conversations.get_conversation(conversation.conversation_id)
    assert again is not None and again.message_count == 4
    assert messages.add_message(stored) is None  # the same id again stores nothing


def test_events_kept_on_messages_by_a_process_that_died_are_published_by_the_relay(
    platform: LocalPlatform, whatsapp_conversation: WhatsAppSetup
) -> None:
    # GIVEN messages accepted by a process that died before publishing their events (its flush never ran)
    setup = whatsapp_conversation
    ids = store_without_enqueueing(setup, "e1", "e2", "e3")
    db = bootstrap.mongo()
    kept = {doc["_id"]: doc["pending_events"] for doc in db.messages.find({"_id": {"$in": ids}})}
    assert {message_id: [e["detail_type"] for e in events] for message_id, events in kept.items()} == {
        message_id: ["MessageAccepted"] for message_id in ids
    }
    # WHEN the relay runs (here without the grace it gives the live path)
    client = CountingEvents()
    relay = EventRelay(
        EventBridgePublisher(client, bootstrap.settings().event_bus_name),
        MongoEventOutbox(db, relay_after=timedelta(0)),
    )
    published = 0
    while batch := relay.publish_pending_events(limit=50):
        published += batch
    # THEN the bus got them (with the time of the change, not of publishing), and nothing is kept any more
    sent = [json.loads(entry["Detail"]) for call in client.entries for entry in call]
    mine = [d for d in sent if d["message_id"] in ids]
    assert sorted(d["message_id"] for d in mine) == sorted(ids)
    assert {d["status"] for d in mine} == {"PENDING"}
    assert all(d["at"] == kept[d["message_id"]][0]["detail"]["at"] for d in mine)
    assert published >= 3
    assert [doc.get("pending_events") for doc in db.messages.find({"_id": {"$in": ids}})] == [[], [], []]


def test_the_live_path_forgets_the_events_it_published(
    api: Api, whatsapp_conversation: WhatsAppSetup, fake_whatsapp: FakeWhatsApp
) -> None:
    # a message sent through the whole platform: its MessageAccepted and MessageSent events were published
    # by route (both with its batch), and are no longer kept on it
    setup = whatsapp_conversation
    accepted = send(api, setup, "events")
    wait_for_status(api, accepted["message_id"], "SENT")
    wait_until(
        lambda: bootstrap.mongo().messages.find_one({"_id": accepted["message_id"]})["pending_events"] == [],
        what="the published events forgotten",
    )


def test_a_conversation_is_marked_for_one_route_job_until_its_run_releases_it(platform: LocalPlatform) -> None:
    db = bootstrap.mongo()
    conversations, messages = MongoConversationStore(db), MongoMessageStore(db)
    conversation = stored_conversation(conversations, message_count=0)

    def needs_job(text: str) -> bool:
        message = outbound_message(conversation, text)
        added = messages.add_outbound(conversation.conversation_id, message.created_at, lambda _: (message, []))
        assert added is not None
        return route_jobs.needs_job(added)

    # the first message of a quiet conversation needs a job, the next ones are that job's run's to send
    assert [needs_job("m1"), needs_job("m2"), needs_job("m3")] == [True, False, False]
    # an inbound message neither needs nor takes the mark
    inbound = dataclasses.replace(outbound_message(conversation, "in"), direction=Direction.INBOUND)
    assert messages.add_message(inbound) is not None
    # the run ends: the conversation is released once, and its next message needs a job again
    assert messages.release_route_job(conversation.conversation_id) is True
    assert messages.release_route_job(conversation.conversation_id) is False
    assert needs_job("m4") is True
    # a mark older than ROUTE_JOB_STALE (its job may have been lost) gets every message a job of its own
    stale = utcnow() - route_jobs.ROUTE_JOB_STALE - timedelta(seconds=1)
    db.conversations.update_one({"_id": conversation.conversation_id}, {"$set": {"route_job_at": stale}})
    assert [needs_job("m5"), needs_job("m6")] == [True, True]
    doc = db.conversations.find_one({"_id": conversation.conversation_id})
    assert doc is not None and doc["last_sequence"] == 7 and doc["message_count"] == 7
    # a run that read the counter at 6 and found no more work leaves the mark: m7 came since, it looks again
    assert messages.finish_route_job(conversation.conversation_id, 6) is False
    assert "route_job_at" in db.conversations.find_one({"_id": conversation.conversation_id})
    assert messages.finish_route_job(conversation.conversation_id, 7) is True
    assert "route_job_at" not in db.conversations.find_one({"_id": conversation.conversation_id})
    assert needs_job("m8") is True


def test_a_sender_refused_on_the_conversation_the_transaction_read_moves_nothing(
    whatsapp_conversation: WhatsAppSetup,
) -> None:
    # GIVEN a conversation, and a user who is not in it (the participant check runs inside the transaction
    # that takes the sequence)
    setup = whatsapp_conversation
    db = bootstrap.mongo()
    queue = InMemoryOutboundQueue()
    service = MessageService(MongoMessageStore(db), MongoConversationStore(db), bootstrap.users(), queue)
    outsider = bootstrap.identity_service().create_user(CreateUser("Outsider", UserType.AGENT), ADMIN)
    before = db.conversations.find_one({"_id": setup.conversation_id})
    assert before is not None
    # WHEN they send into it, and someone sends into a conversation that does not exist
    with pytest.raises(ForbiddenError):
        service.accept(SendMessage(str(uuid.uuid4()), setup.conversation_id, outsider.user_id, "no"), ADMIN)
    with pytest.raises(ValidationFailedError) as unknown:
        service.accept(SendMessage(str(uuid.uuid4()), str(uuid.uuid4()), setup.agent_id, "nowhere"), ADMIN)
    assert [e.field for e in unknown.value.errors] == ["conversation_id"]
    # THEN the conversation's counter, count, activity and mark are as they were, nothing was stored or queued
    after = db.conversations.find_one({"_id": setup.conversation_id})
    assert after == before
    assert db.messages.count_documents({"sender_id": outsider.user_id}) == 0
    assert queue.enqueued == []
    # AND a participant's next message takes the next sequence: no gap where the refused one was
    accepted = service.accept(SendMessage(str(uuid.uuid4()), setup.conversation_id, setup.agent_id, "yes"), ADMIN)
    assert accepted.sequence == before["last_sequence"] + 1


def test_concurrent_senders_to_a_quiet_conversation_enqueue_at_least_one_job_and_the_run_sends_all(
    whatsapp_conversation: WhatsAppSetup, fake_whatsapp: FakeWhatsApp
) -> None:
    # GIVEN 8 requests accepting messages at once into one conversation, as 8 ingest containers would
    setup = whatsapp_conversation
    db = bootstrap.mongo()
    queue = InMemoryOutboundQueue()
    service = MessageService(MongoMessageStore(db), MongoConversationStore(db), bootstrap.users(), queue)
    barrier = threading.Barrier(8)
    accepted: list[str] = []

    def accept(n: int) -> None:
        barrier.wait()
        command = SendMessage(str(uuid.uuid4()), setup.conversation_id, setup.agent_id, f"c{n}")
        accepted.append(service.accept(command, ADMIN).message_id)

    threads = [threading.Thread(target=accept, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # THEN one job was enqueued (by the sender whose transaction found no mark), and the run it starts sends
    # all 8, in sequence order, and releases the conversation
    assert len(queue.enqueued) == 1
    delivery = bootstrap.delivery_service()
    progress = delivery.deliver_conversation(setup.conversation_id, utcnow() + timedelta(seconds=30))
    assert sorted(o.message_id for o in progress.outcomes) == sorted(accepted)
    assert {o.status for o in progress.outcomes} == {MessageStatus.SENT}
    in_sequence = sorted(db.messages.find({"_id": {"$in": accepted}}), key=lambda m: m["sequence"])
    texts = [r.body["text"]["body"] for r in fake_whatsapp.sent_to(setup.customer_phone)]
    assert texts == [m["content"] for m in in_sequence]
    doc = db.conversations.find_one({"_id": setup.conversation_id})
    assert doc is not None and "route_job_at" not in doc
