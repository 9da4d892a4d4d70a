"""The route queue consumed per job key (a conversation, or a GROUP recipient's lane): one job kept per waiting
key, the keys of a batch worked concurrently, fresh jobs long before SQS's own redrive, back-off by receive
count."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from chat4all.consumers import REFRESH_AFTER_RECEIVES, consume_batch, consume_conversations, retry_delay
from chat4all.domain.models import DomainEvent
from chat4all.domain.wire import RouteJob
from chat4all.services.notifications import EventBuffer
from devstack.template import load_template
from tests.fakes.in_memory import InMemoryEventOutbox, InMemoryEventPublisher

ROOT = Path(__file__).resolve().parents[2]


class Visibility:
    def __init__(self) -> None:
        self.postponed: list[tuple[str, int]] = []

    def postpone(self, queue_url: str, receipt_handle: str, delay_seconds: int) -> None:
        self.postponed.append((receipt_handle, delay_seconds))


def unit_of_work(bus: InMemoryEventPublisher | None = None) -> EventBuffer:
    return EventBuffer(bus or InMemoryEventPublisher(), InMemoryEventOutbox())


def record(conversation_id: str, message_id: str, receives: int = 1, user_id: str | None = None) -> dict[str, Any]:
    sqs_id = str(uuid.uuid4())
    job = RouteJob(message_id=message_id, conversation_id=conversation_id, user_id=user_id)
    return {
        "messageId": sqs_id,
        "receiptHandle": f"handle-{sqs_id}",
        "body": job.body(),
        "attributes": {"ApproximateReceiveCount": str(receives), "MessageGroupId": job.group_id},
    }


def test_each_conversation_is_worked_once_and_keeps_one_job_while_it_waits() -> None:
    # GIVEN a batch: two jobs of a waiting conversation, one of a finished one, one of a failing one, one bad
    waiting = [record("a", "a1"), record("a", "a2")]
    done = record("b", "b1")
    failing = record("c", "c1", receives=3)
    bad = {**record("d", "d1"), "body": "not json"}
    worked: list[str] = []

    def work(job: RouteJob) -> float | None:
        worked.append(job.conversation_id)
        if job.conversation_id == "c":
            raise RuntimeError("MongoDB is unavailable")
        return {"a": 2.5, "b": None}[job.conversation_id]

    visibility = Visibility()
    requeued: list[tuple[RouteJob, str]] = []
    result = consume_conversations(
        {"Records": [*waiting, done, failing, bad]},
        work,
        queue_url="q",
        visibility=visibility,  # type: ignore[arg-type]
        requeue=lambda *job: requeued.append(job),
        events=unit_of_work(),
    )
    # THEN each conversation was worked once (the conversations at once: in any order)
    assert sorted(worked) == ["a", "b", "c"]
    # AND the waiting one keeps its first job only, back after its wait; the failing one backs off by its
    # receive count; the bad record stays for the dead-letter queue; everything else is acknowledged
    failed = [item["itemIdentifier"] for item in result["batchItemFailures"]]
    assert sorted(failed) == sorted([bad["messageId"], waiting[0]["messageId"], failing["messageId"]])
    assert sorted(visibility.postponed) == sorted([(waiting[0]["receiptHandle"], 3), (failing["receiptHandle"], 8)])
    assert requeued == []


def test_the_lanes_of_a_batch_are_worked_at_once_each_with_its_own_first_job() -> None:
    # GIVEN a batch with a conversation's job and two of its recipients' lanes (one of them twice)
    batch = [record("g", "m1"), record("g", "m1", user_id="u1"), record("g", "m2", user_id="u1")]
    batch.append(record("g", "m1", user_id="u2"))
    all_in = threading.Barrier(3, timeout=5)  # each key's work waits until the three are running together
    worked: list[RouteJob] = []

    def work(job: RouteJob) -> float | None:
        worked.append(job)
        all_in.wait()
        return 4.0 if job.user_id == "u1" else None

    visibility = Visibility()
    result = consume_conversations(
        {"Records": batch},
        work,
        queue_url="q",
        visibility=visibility,  # type: ignore[arg-type]
        requeue=print,
        events=unit_of_work(),
    )
    # THEN each key was worked once, with its first job, and all three at the same time (the barrier let them)
    assert sorted((j.user_id or "", j.message_id) for j in worked) == [("", "m1"), ("u1", "m1"), ("u2", "m1")]
    # AND the waiting lane keeps its first job only
    assert [item["itemIdentifier"] for item in result["batchItemFailures"]] == [batch[1]["messageId"]]
    assert visibility.postponed == [(batch[1]["receiptHandle"], 4)]


def test_a_job_received_many_times_is_replaced_by_a_fresh_one() -> None:
    old = record("a", "a1", receives=REFRESH_AFTER_RECEIVES)
    visibility = Visibility()
    requeued: list[tuple[RouteJob, str]] = []
    result = consume_conversations(
        {"Records": [old]},
        lambda job: 5.0,
        queue_url="q",
        visibility=visibility,  # type: ignore[arg-type]
        requeue=lambda *job: requeued.append(job),
        events=unit_of_work(),
    )
    assert result["batchItemFailures"] == []  # the old job goes, the fresh one carries on
    assert [(job.message_id, job.conversation_id) for job, _ in requeued] == [("a1", "a")]
    assert requeued[0][1] != "a1"  # a new deduplication id: SQS would drop a repeat of the old one
    assert visibility.postponed == []


def test_a_job_stays_when_it_cannot_be_replaced() -> None:
    old = record("a", "a1", receives=REFRESH_AFTER_RECEIVES + 1)

    def broken_requeue(*job: object) -> None:
        raise RuntimeError("SQS is unavailable")

    visibility = Visibility()
    result = consume_conversations(
        {"Records": [old]},
        lambda c: 5.0,
        queue_url="q",
        visibility=visibility,  # type: ignore[arg-type]
        requeue=broken_requeue,
        events=unit_of_work(),
    )
    assert [item["itemIdentifier"] for item in result["batchItemFailures"]] == [old["messageId"]]
    assert visibility.postponed == [(old["receiptHandle"], 5)]


def test_a_batch_publishes_the_events_it_collected_as_it_ends_also_when_its_work_failed() -> None:
    # the consumers open and close the unit of work: no handler has to remember to flush it
    bus = InMemoryEventPublisher()
    events = unit_of_work(bus)

    def work(job: RouteJob) -> float | None:
        events.publish_many([DomainEvent("MessageSent", {"conversation": job.conversation_id})])
        if job.conversation_id == "b":
            raise RuntimeError("MongoDB is unavailable")
        return None

    batch = {"Records": [record("a", "a1"), record("b", "b1")]}
    consume_conversations(batch, work, queue_url="q", visibility=Visibility(), requeue=print, events=events)  # type: ignore[arg-type]
    assert sorted(detail["conversation"] for _, _, detail in bus.events) == ["a", "b"]

    def handler(sqs_record: Any) -> None:
        events.publish_many([DomainEvent("MessageStatusChanged", {"conversation": sqs_record.message_id})])
        raise RuntimeError("the record fails")

    one = record("c", "c1")
    consume_batch({"Records": [one]}, None, handler, fifo=False, queue_url="q", visibility=Visibility(), events=events)  # type: ignore[arg-type]
    assert [detail["conversation"] for _, _, detail in bus.events][2:] == [one["messageId"]]


@pytest.mark.parametrize("queue", ["RouteQueue", "StatusQueue"])
def test_sqs_redrive_is_far_above_what_the_consumers_spend(queue: str) -> None:
    # a job is replaced after REFRESH_AFTER_RECEIVES receives; a status report backs off up to a minute
    resources = load_template(ROOT / "template.yaml")["Resources"]
    max_receives = resources[queue]["Properties"]["RedrivePolicy"]["maxReceiveCount"]
    assert max_receives >= 4 * REFRESH_AFTER_RECEIVES
    assert sum(retry_delay(n) for n in range(1, max_receives)) > 3600  # over an hour of back-off
