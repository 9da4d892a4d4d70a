"""Media in: a photo, document or video a person sends becomes a file of the conversation, fetched by queued work.

The webhook does only what is quick (`MediaIntake`): a file record UPLOADING in the message's conversation, whose
id the message carries, and a job on the file-events queue (`MediaFetchJob`). The files function then fetches the
bytes from the platform by their reference with the channel's credentials (`MediaFetcher`), streams them into the
bucket, and S3's ObjectCreated notification runs the checks every stored object gets (FileService.object_created:
sniffed, scanned, thumbnailed). The record's size and type are set before the object lands, so the checks compare
the bytes with what the platform said they are.

A fetch the platform refuses for good (ChannelRejectedError: it does not know the reference) or that is too large
rejects the file at once; any other failure is retried by the queue with back-off (chat4all.consumers), and the
last of FETCH_ATTEMPTS rejects the file with the reason. The message stays as it is in every case.
"""

from __future__ import annotations

import logging
import mimetypes
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from chat4all.domain.errors import ChannelError, ChannelRejectedError, CredentialsUnreadableError
from chat4all.domain.files import (
    SINGLE_UPLOAD_MAX,
    FileKind,
    FileRecord,
    FileStatus,
    sniff_head,
)
from chat4all.domain.wire import MediaFetchJob
from chat4all.telemetry import current_correlation_id

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping

    from chat4all.domain.models import ChannelConfig, InboundMessage, Platform
    from chat4all.ports import ChannelConnector, ChannelRepository, FileStore, MediaFetchQueue, ObjectStorage

logger = logging.getLogger(__name__)

# the largest inbound file fetched (WhatsApp's documents go to 100 MB; Telegram's bots get files up to 20 MB)
INBOUND_MAX_BYTES = SINGLE_UPLOAD_MAX
# receives of a fetch job before its file is REJECTED: the file-events queue's maxReceiveCount (template.yaml), so
# the last attempt rejects the file rather than leaving the job to the dead-letter queue
FETCH_ATTEMPTS = 5
# types that say nothing about the bytes: the file takes the type its first bytes show
GENERIC_TYPES = frozenset({"", "application/octet-stream", "binary/octet-stream"})
INBOUND_FILES = uuid.UUID("0b7f3a52-6a1e-4d8c-9a55-2f0d1c7e4b11")


def inbound_file_id(message_id: str) -> str:
    """An inbound message's file: derived from the message, so a replayed webhook makes no second file."""
    return str(uuid.uuid5(INBOUND_FILES, message_id))


def media_type(raw: str | None) -> str:
    """A MIME type without its parameters, lower case ("" for none)."""
    return (raw or "").split(";", 1)[0].strip().lower()


def _filename(name: str | None, platform: Platform, file_id: str, mime_type: str) -> str:
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1].strip()[:200]
    if base:
        return base
    extension = (mimetypes.guess_extension(mime_type) or "") if mime_type not in GENERIC_TYPES else ""
    return f"{str(platform).lower()}-{file_id[:8]}{extension}"


@dataclass
class MediaIntake:
    """What a webhook does for an inbound file: its record (UPLOADING, in the conversation) and its fetch job."""

    files: FileStore
    queue: MediaFetchQueue

    def accept(self, channel: ChannelConfig, inbound: InboundMessage, message_id: str, conversation_id: str) -> str:
        """The file id the message carries. The job goes out before the message is stored: a webhook that fails
        after it is retried by the platform and enqueues again (a fetch of a file already fetched does nothing)."""
        assert inbound.media is not None
        media = inbound.media
        file_id = inbound_file_id(message_id)
        mime_type = media_type(media.mime_type) or "application/octet-stream"
        record = FileRecord(
            file_id=file_id,
            filename=_filename(media.filename, inbound.platform, file_id, mime_type),
            mime_type=mime_type,
            size=0,  # not known until fetched: set before the object lands
            status=FileStatus.UPLOADING,
            owner_id=None,  # nobody uploaded it: its conversation's participants read it
            conversation_ids=[conversation_id],
        )
        self.files.insert_once(record)
        self.queue.enqueue(
            MediaFetchJob(
                file_id=file_id,
                channel_id=channel.channel_id,
                platform=inbound.platform,
                reference=media.reference,
                mime_type=media.mime_type,
                filename=media.filename,
                correlation_id=current_correlation_id(),
            )
        )
        return file_id


class MediaTooLargeError(Exception):
    pass


@dataclass
class MediaFetcher:
    """The files function's part: fetch an inbound file from its platform into the bucket."""

    files: FileStore
    storage: ObjectStorage
    channels: ChannelRepository
    connectors: Mapping[Platform, ChannelConnector]
    max_bytes: int = INBOUND_MAX_BYTES

    def fetch(self, job: MediaFetchJob, attempt: int) -> FileStatus | None:
        """The file's status after this attempt (UPLOADING: stored, its checks follow; REJECTED: given up).

        Raises what is worth another attempt (the consumer retries with back-off) until the last one.
        """
        record = self.files.get(job.file_id)
        if record is None:
            logger.warning("inbound media job for no file", extra={"file_id": job.file_id})
            return None
        if record.status is not FileStatus.UPLOADING or self.storage.size_of(record.key) is not None:
            return record.status  # fetched before (a redelivered job): the object's own notification does the rest
        try:
            self._fetch(job, record)
        except (ChannelRejectedError, MediaTooLargeError) as exc:
            return self._reject(record, f"the platform's file could not be fetched: {exc}")
        except ChannelError as exc:
            if attempt >= FETCH_ATTEMPTS:
                return self._reject(record, f"the platform's file could not be fetched in {attempt} attempts: {exc}")
            logger.info("inbound media fetch failed; retried", extra={"file_id": record.file_id, "error": str(exc)})
            raise
        return FileStatus.UPLOADING

    def _fetch(self, job: MediaFetchJob, record: FileRecord) -> None:
        connector = self.connectors.get(job.platform)
        try:
            channel = self.channels.get_channel(job.channel_id)
        except CredentialsUnreadableError:
            channel = None
        if connector is None or channel is None:
            raise ChannelRejectedError(f"channel {job.channel_id} is gone or its credentials cannot be read")
        with connector.fetch_media(channel.credentials, job.reference) as media:
            if media.size is not None and media.size > self.max_bytes:
                raise MediaTooLargeError(f"{media.size} bytes announced; at most {self.max_bytes} are taken")
            chunks = _bounded(media.chunks, self.max_bytes)
            first = next(chunks, b"")
            declared = media_type(job.mime_type) or media_type(media.mime_type)
            mime_type = _stated_type(declared, first)
            # the webhook's name, else the platform's (Telegram's file path), else one with the type's extension
            filename = record.filename
            if not job.filename:
                filename = _filename(media.filename, job.platform, record.file_id, mime_type)

            def before_complete(size: int) -> None:
                # the record says what the object is before S3 announces it (its checks compare the two)
                moved = self.files.move(
                    record.file_id,
                    [FileStatus.UPLOADING],
                    FileStatus.UPLOADING,
                    size=size,
                    mime_type=mime_type,
                    filename=filename,
                )
                if moved is None:
                    raise ChannelRejectedError("the file is no longer waiting for its bytes")

            size = self.storage.upload(record.key, _prepend(first, chunks), mime_type, before_complete)
        logger.info("inbound media fetched", extra={"file_id": record.file_id, "size": size, "mime_type": mime_type})

    def _reject(self, record: FileRecord, reason: str) -> FileStatus:
        logger.warning("inbound media rejected", extra={"file_id": record.file_id, "reason": reason[:500]})
        self.storage.delete(record.key)
        final = self.files.move(record.file_id, [FileStatus.UPLOADING], FileStatus.REJECTED, reason=reason[:500])
        if final is not None:
            return final.status
        current = self.files.get(record.file_id)
        return current.status if current is not None else FileStatus.REJECTED


def _stated_type(declared: str, head: bytes) -> str:
    """The type the file is taken as: what the platform said, unless it said nothing useful (then what the first
    bytes show, where they show an allowed kind)."""
    if declared not in GENERIC_TYPES:
        return declared
    kind = sniff_head(head)
    return kind.mime_type if isinstance(kind, FileKind) else declared or "application/octet-stream"


def _bounded(chunks: Iterable[bytes], limit: int) -> Iterator[bytes]:
    taken = 0
    for chunk in chunks:
        taken += len(chunk)
        if taken > limit:
            raise MediaTooLargeError(f"more than {limit} bytes")
        yield chunk


def _prepend(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if first:
        yield first
    yield from rest
