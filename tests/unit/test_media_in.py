"""Media in over fakes: the webhook stores the message at once with a file UPLOADING in its conversation and a fetch
job; the job streams the platform's bytes into the bucket with the record's size and type set before the object
lands, after which the ordinary checks make it CLEAN with a thumbnail; a refusal rejects it at once, a failure is
retried until the last attempt, too large is refused; the message stays."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from chat4all.adapters.thumbnails import PillowThumbnailer
from chat4all.domain.errors import ChannelRejectedError, ChannelRetryableError
from chat4all.domain.files import FileStatus, thumbnail_key
from chat4all.domain.models import ChannelConfig, FetchedMedia, InboundMedia, InboundMessage, Platform, Principal, Role
from chat4all.domain.wire import MediaFetchJob
from chat4all.ports import MediaFetchQueue
from chat4all.services.files import FileService
from chat4all.services.inbound import InboundService, inbound_message_id
from chat4all.services.media_in import FETCH_ATTEMPTS, MediaFetcher, MediaIntake, inbound_file_id
from devstack.template import load_template
from tests.unit.test_files import InMemoryFileStore, InMemoryStorage, SignatureScanner, png
from tests.unit.test_services import World

if TYPE_CHECKING:
    from collections.abc import Mapping


class Jobs(MediaFetchQueue):
    def __init__(self) -> None:
        self.jobs: list[MediaFetchJob] = []

    def enqueue(self, job: MediaFetchJob) -> None:
        # what goes on the queue is what the files function parses
        self.jobs.append(MediaFetchJob.model_validate_json(job.body()))


class Platformish:
    """A connector's fetch_media: serves `files` by reference in small chunks, or raises what it is told to."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[bytes, str | None, str | None]] = {}
        self.failures: list[Exception] = []
        self.calls: list[tuple[str, str]] = []

    def fetch_media(self, credentials: Mapping[str, str], reference: str) -> FetchedMedia:
        self.calls.append((credentials["access_token"], reference))
        if self.failures:
            raise self.failures.pop(0)
        if reference not in self.files:
            raise ChannelRejectedError("WhatsApp answered 404")
        data, mime_type, filename = self.files[reference]
        chunks = (data[i : i + 1000] for i in range(0, len(data), 1000))
        return FetchedMedia(chunks, mime_type, filename, len(data), lambda: None)


@pytest.fixture
def world() -> Any:
    base = World()
    now = datetime.now(UTC)
    channel = ChannelConfig("ch-1", Platform.WHATSAPP, "line", {"access_token": "token-1"}, True, now, now)
    files, storage, jobs, platform = InMemoryFileStore(), InMemoryStorage(), Jobs(), Platformish()
    inbound = InboundService(base.users, base.conversations, base.messages, base.events, media=MediaIntake(files, jobs))
    channels = base.channels
    channels.channels[channel.channel_id] = channel
    fetcher = MediaFetcher(files, storage, channels, {Platform.WHATSAPP: platform}, max_bytes=200_000)  # type: ignore[dict-item]
    checks = FileService(files, storage, base.conversations, SignatureScanner(), PillowThumbnailer())
    return base, channel, inbound, files, storage, jobs, platform, fetcher, checks


def image_message(reference: str, mime_type: str | None = "image/png") -> InboundMessage:
    return InboundMessage(
        Platform.WHATSAPP,
        f"wamid.{reference}",
        "5511999990000",
        "Carl",
        "this one",
        datetime.now(UTC),
        message_type="image",
        media=InboundMedia(reference, mime_type),
    )


def test_an_inbound_image_is_stored_at_once_and_becomes_a_clean_file_of_the_conversation(world: Any) -> None:
    _base, channel, inbound, files, storage, jobs, platform, fetcher, checks = world
    data = png()
    platform.files["1479"] = (data, "image/png", None)

    message = inbound.receive(channel, image_message("1479"))
    assert message is not None and message.file_id == inbound_file_id(message.message_id)
    assert (message.content, message.message_type) == ("this one", "image")
    record = files.get(message.file_id)
    assert (record.status, record.owner_id, record.conversation_ids) == (
        FileStatus.UPLOADING,
        None,
        [message.conversation_id],
    )
    [job] = jobs.jobs
    assert (job.file_id, job.channel_id, job.platform, job.reference) == (message.file_id, "ch-1", "WHATSAPP", "1479")
    assert "token-1" not in job.body()

    # a replayed webhook makes no second file and no second job
    assert inbound.receive(channel, image_message("1479")) is None
    assert len(jobs.jobs) == 1 and len(files.records) == 1

    assert fetcher.fetch(job, attempt=1) is FileStatus.UPLOADING
    assert platform.calls == [("token-1", "1479")]
    stored = files.get(message.file_id)
    assert (stored.size, stored.mime_type, stored.filename) == (
        len(data),
        "image/png",
        f"whatsapp-{stored.file_id[:8]}.png",
    )
    assert storage.objects[stored.key] == data
    assert storage.largest_chunk <= 1000  # streamed as it came

    # S3 announces the object: the ordinary checks
    assert checks.object_created(stored.key) is FileStatus.CLEAN
    assert thumbnail_key(stored.file_id) in storage.objects
    # the conversation's participants read it; others do not
    customer = Principal(key_id="c", role=Role.AGENT, user_id=message.sender_id)
    assert checks.get(stored.file_id, customer).download_url
    assert fetcher.fetch(job, attempt=2) is FileStatus.CLEAN  # a redelivered job does nothing
    assert len(platform.calls) == 1


def test_a_reference_the_platform_refuses_rejects_the_file_at_once_and_the_message_stays(world: Any) -> None:
    base, channel, inbound, files, _storage, jobs, _platform, fetcher, _checks = world
    message = inbound.receive(channel, image_message("gone"))
    assert fetcher.fetch(jobs.jobs[0], attempt=1) is FileStatus.REJECTED
    record = files.get(message.file_id)
    assert record.status is FileStatus.REJECTED and "404" in record.reason
    assert base.messages.get_message(message.message_id).file_id == record.file_id


def test_a_failing_fetch_is_retried_until_the_last_attempt_then_rejected(world: Any) -> None:
    _base, channel, inbound, files, _storage, jobs, platform, fetcher, _checks = world
    platform.files["1"] = (png(), "image/png", None)
    platform.failures = [ChannelRetryableError("WhatsApp answered 503")] * FETCH_ATTEMPTS
    inbound.receive(channel, image_message("1"))
    job = jobs.jobs[0]
    for attempt in range(1, FETCH_ATTEMPTS):
        with pytest.raises(ChannelRetryableError):
            fetcher.fetch(job, attempt)
        assert files.get(job.file_id).status is FileStatus.UPLOADING
    assert fetcher.fetch(job, FETCH_ATTEMPTS) is FileStatus.REJECTED
    assert f"in {FETCH_ATTEMPTS} attempts" in files.get(job.file_id).reason


def test_a_failure_then_a_success_fetches_it(world: Any) -> None:
    _base, channel, inbound, files, _storage, jobs, platform, fetcher, checks = world
    platform.files["1"] = (png(), "image/png", None)
    platform.failures = [ChannelRetryableError("WhatsApp answered 503")]
    inbound.receive(channel, image_message("1"))
    with pytest.raises(ChannelRetryableError):
        fetcher.fetch(jobs.jobs[0], 1)
    assert fetcher.fetch(jobs.jobs[0], 2) is FileStatus.UPLOADING
    assert checks.object_created(files.get(jobs.jobs[0].file_id).key) is FileStatus.CLEAN


def test_too_large_is_rejected_and_nothing_is_stored(world: Any) -> None:
    _base, channel, inbound, _files, storage, jobs, platform, fetcher, _checks = world
    platform.files["big"] = (b"\x89PNG\r\n\x1a\n" + bytes(300_000), "image/png", None)
    inbound.receive(channel, image_message("big"))
    assert fetcher.fetch(jobs.jobs[0], 1) is FileStatus.REJECTED
    assert storage.objects == {}


def test_a_type_the_platform_does_not_give_is_read_from_the_bytes(world: Any) -> None:
    _base, channel, inbound, files, _storage, jobs, platform, fetcher, checks = world
    platform.files["cdn"] = (png(), "application/octet-stream", None)
    inbound.receive(channel, image_message("cdn", mime_type=None))
    assert fetcher.fetch(jobs.jobs[0], 1) is FileStatus.UPLOADING
    record = files.get(jobs.jobs[0].file_id)
    assert record.mime_type == "image/png"
    assert checks.object_created(record.key) is FileStatus.CLEAN


def test_a_declared_type_the_bytes_contradict_is_rejected_by_the_checks(world: Any) -> None:
    _base, channel, inbound, files, _storage, jobs, platform, fetcher, checks = world
    platform.files["x"] = (b"MZ\x90\x00" + bytes(500), "application/pdf", "invoice.pdf")
    message = replace(image_message("x", "application/pdf"), message_type="document")
    inbound.receive(channel, replace(message, media=InboundMedia("x", "application/pdf", "invoice.pdf")))
    assert fetcher.fetch(jobs.jobs[0], 1) is FileStatus.UPLOADING
    record = files.get(jobs.jobs[0].file_id)
    assert record.filename == "invoice.pdf"
    assert checks.object_created(record.key) is FileStatus.REJECTED


def test_without_files_configured_a_media_message_keeps_its_type_only() -> None:
    base = World()
    now = datetime.now(UTC)
    channel = ChannelConfig("ch-1", Platform.WHATSAPP, "line", {"access_token": "t"}, True, now, now)
    inbound = InboundService(base.users, base.conversations, base.messages, base.events)
    message = inbound.receive(channel, image_message("1"))
    assert message is not None and message.file_id is None
    assert message.message_id == inbound_message_id(Platform.WHATSAPP, "wamid.1")


def test_the_last_fetch_attempt_is_the_file_events_queues_last_receive() -> None:
    template = load_template(Path(__file__).resolve().parents[2] / "template.yaml")
    redrive = template["Resources"]["FileEventsQueue"]["Properties"]["RedrivePolicy"]
    assert redrive["maxReceiveCount"] == FETCH_ATTEMPTS
