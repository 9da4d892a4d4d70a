"""Files: presigned uploads and downloads, and each stored object checked on its bytes, scanned and thumbnailed.

The platform never holds a file's bytes in a request: clients upload to and download from the object store
with presigned URLs. Up to SINGLE_UPLOAD_MAX a presigned POST whose policy pins `content-length-range` to the
declared size (a presigned PUT cannot cap the size: its signature does not cover the body's length); above it a
multipart upload with presigned part URLs, completed by the platform from the parts S3 lists.

Who may read a file: admins; an agent that uploaded it, or that is a participant of a conversation the file
belongs to (the `conversation_id` it was uploaded for, and every conversation a message carried it in).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from chat4all.domain.errors import (
    ConflictError,
    DependencyUnavailableError,
    FieldError,
    ForbiddenError,
    NotFoundError,
    UndeliverableError,
    ValidationFailedError,
)
from chat4all.domain.files import (
    DOWNLOAD_URL_SECONDS,
    FINAL_STATUSES,
    HEAD_BYTES,
    KIND_BY_MIME,
    MAX_FILE_SIZE,
    MIN_PART_SIZE,
    PART_SIZE,
    THUMBNAILED,
    UPLOAD_URL_SECONDS,
    FileRecord,
    FileStatus,
    file_id_of,
    part_count,
    sniff,
    thumbnail_key,
)
from chat4all.domain.models import OutboundMedia

if TYPE_CHECKING:
    from collections.abc import Callable

    from chat4all.domain.models import Principal
    from chat4all.ports import ConversationStore, FileStore, MalwareScanner, ObjectStorage, Thumbnailer

logger = logging.getLogger(__name__)
# the scanner and the thumbnailer read the object in chunks of this size: memory stays flat whatever the file's size
STREAM_CHUNK_BYTES = 1024 * 1024
# images larger than this get no thumbnail (they are still scanned and CLEAN)
THUMBNAIL_MAX_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class CreateFile:
    file_id: str
    filename: str
    mime_type: str
    size: int
    conversation_id: str | None = None


@dataclass(frozen=True)
class FileLinks:
    """What GET /v1/files/{id} shows: the record and, only when CLEAN, its URLs."""

    record: FileRecord
    download_url: str | None = None
    thumbnail_url: str | None = None


@dataclass
class FileService:
    """Uploads, downloads and the checks on every stored object.

    Parameters
    ----------
    files : FileStore
        The files' metadata.
    storage : ObjectStorage
        The private bucket.
    conversations : ConversationStore
        Who takes part where (agents read files of their conversations).
    scanner : MalwareScanner or None
        None: no scanner is configured and no file can become CLEAN (they stay SCANNING and are retried).
    thumbnailer : Thumbnailer

    Example
    -------
    >>> service.create(CreateFile(file_id, "a.pdf", "application/pdf", 1024), principal)
    """

    files: FileStore
    storage: ObjectStorage
    conversations: ConversationStore
    scanner: MalwareScanner | None
    thumbnailer: Thumbnailer

    # ------------------------------------------------------------------ the API

    def create(self, command: CreateFile, principal: Principal) -> tuple[FileRecord, dict[str, Any]]:
        """A new file UPLOADING and how to upload it; 422 over MAX_FILE_SIZE before any URL exists."""
        if command.size > MAX_FILE_SIZE:
            raise ValidationFailedError(
                f"a file may have at most {MAX_FILE_SIZE} bytes",
                errors=[FieldError("size", f"at most {MAX_FILE_SIZE}")],
            )
        if command.mime_type.lower() not in KIND_BY_MIME:
            raise ValidationFailedError(
                "mime_type is not an allowed type (jpeg, png, gif, pdf, docx, mp4, mov)",
                errors=[FieldError("mime_type", "not allowed")],
            )
        conversation_ids: list[str] = []
        if command.conversation_id is not None:
            self._check_conversation(command.conversation_id, principal)
            conversation_ids.append(command.conversation_id)
        record = FileRecord(
            file_id=command.file_id,
            filename=command.filename,
            mime_type=command.mime_type.lower(),
            size=command.size,
            status=FileStatus.UPLOADING,
            owner_id=principal.user_id,
            conversation_ids=conversation_ids,
        )
        if record.multipart:
            record.upload_id = self.storage.start_multipart(record.key, record.mime_type)
        self.files.insert(record)
        return record, self.upload_of(record, set())

    def upload_of(self, record: FileRecord, received: set[int]) -> dict[str, Any]:
        """The presigned request(s) that upload the file, leaving out the parts already `received`."""
        if not record.multipart:
            return self.storage.presign_post(record.key, record.size, record.mime_type, UPLOAD_URL_SECONDS)
        assert record.upload_id is not None
        parts = [
            {"part_number": n, "url": self.storage.presign_part(record.key, record.upload_id, n, UPLOAD_URL_SECONDS)}
            for n in range(1, part_count(record.size) + 1)
            if n not in received
        ]
        return {"part_size": PART_SIZE, "parts": parts}

    def get(self, file_id: str, principal: Principal) -> FileLinks:
        record = self._readable(file_id, principal)
        if record.status is not FileStatus.CLEAN:
            return FileLinks(record)
        download = self.storage.presign_get(record.key, DOWNLOAD_URL_SECONDS, record.filename)
        thumbnail = (
            self.storage.presign_get(thumbnail_key(record.file_id), DOWNLOAD_URL_SECONDS) if record.thumbnail else None
        )
        return FileLinks(record, download, thumbnail)

    def parts(self, file_id: str, principal: Principal) -> dict[str, Any]:
        """What arrived of a multipart upload, and fresh URLs for the parts still missing (to resume)."""
        record = self._readable(file_id, principal)
        if not record.multipart or record.upload_id is None or record.status is not FileStatus.UPLOADING:
            received: list[dict[str, Any]] = []
            return {"file_id": record.file_id, "status": record.status, "parts": received, "upload": None}
        parts = self.storage.list_parts(record.key, record.upload_id)
        done = {p.part_number for p in parts if self._part_complete(record, p.part_number, p.size)}
        return {
            "file_id": record.file_id,
            "status": record.status,
            "parts": [{"part_number": p.part_number, "size": p.size, "etag": p.etag} for p in parts],
            "upload": self.upload_of(record, done),
        }

    def complete(self, file_id: str, principal: Principal) -> FileRecord:
        """Complete a multipart upload from the parts S3 lists (a single upload completes itself when it lands).

        Parts that do not add up to the declared size, or do not fit the plan: the upload is aborted and the
        file REJECTED. The object lands SCANNING; the checks run when S3 announces it.
        """
        record = self._readable(file_id, principal)
        if not record.multipart or record.upload_id is None:
            if record.status is FileStatus.UPLOADING and self.storage.size_of(record.key) is None:
                raise ConflictError("nothing was uploaded yet: POST the file to its upload URL first")
            return record
        if record.status is not FileStatus.UPLOADING:
            return record
        parts = sorted(self.storage.list_parts(record.key, record.upload_id), key=lambda p: p.part_number)
        expected = part_count(record.size)
        missing = sorted(set(range(1, expected + 1)) - {p.part_number for p in parts})
        if missing:
            raise ConflictError(f"parts missing: {missing[:20]}; GET /v1/files/{file_id}/parts gives their URLs")
        total = sum(p.size for p in parts)
        fits = all(self._part_complete(record, p.part_number, p.size) for p in parts) and len(parts) == expected
        if total != record.size or not fits:
            self.storage.abort_multipart(record.key, record.upload_id)
            reason = f"{total} bytes arrived in {len(parts)} parts; {record.size} were declared"
            self._reject(record, reason)
            return self._get(file_id)
        self.storage.complete_multipart(record.key, record.upload_id, parts)
        moved = self.files.move(record.file_id, [FileStatus.UPLOADING], FileStatus.SCANNING)
        return moved or self._get(file_id)

    def delete(self, file_id: str, principal: Principal) -> None:
        record = self._readable(file_id, principal)
        if not principal.is_admin and record.owner_id != principal.user_id:
            raise ForbiddenError("only the uploader or an admin may delete a file")
        if record.multipart and record.upload_id is not None and record.status is FileStatus.UPLOADING:
            self.storage.abort_multipart(record.key, record.upload_id)
        self.storage.delete(record.key)
        self.storage.delete(thumbnail_key(record.file_id))
        self.files.delete(record.file_id)

    def usable(self, file_id: str) -> FileRecord:
        """A file a message may carry: CLEAN, else 422."""
        record = self.files.get(file_id)
        if record is None or record.status is not FileStatus.CLEAN:
            state = "does not exist" if record is None else f"is {record.status}"
            raise ValidationFailedError(
                f"file {file_id} {state}; only CLEAN files can be sent",
                errors=[FieldError("file_id", "not CLEAN")],
            )
        return record

    # ------------------------------------------------------------------ the object-created consumer

    def object_created(self, key: str) -> FileStatus | None:
        """Check, scan and thumbnail the object S3 announced; the file's status after (None: not a file's key).

        Safe to run again for the same object (a redelivered notification): a file already final is left as it is.
        """
        file_id = file_id_of(key)
        record = self.files.get(file_id) if file_id else None
        if record is None:
            logger.warning("object created for no file", extra={"key": key})
            return None
        if record.status in FINAL_STATUSES:
            return record.status
        moved = self.files.move(record.file_id, [FileStatus.UPLOADING, FileStatus.SCANNING], FileStatus.SCANNING)
        if moved is None:
            return self._get(record.file_id).status
        record = moved
        size = self.storage.size_of(record.key)
        if size is None:
            logger.warning("announced object is gone", extra={"file_id": record.file_id})
            return record.status
        if size != record.size:
            return self._reject(record, f"{size} bytes were stored; {record.size} were declared")
        return self._check_bytes(record, size)

    def _check_bytes(self, record: FileRecord, size: int) -> FileStatus:
        """What the bytes are, then the scan, then the thumbnail: SCANNING to REJECTED, INFECTED or CLEAN."""
        head = self.storage.read_range(record.key, 0, min(HEAD_BYTES, size)) if size else b""
        kind = sniff(head, size, lambda start, length: self.storage.read_range(record.key, start, length))
        declared = KIND_BY_MIME.get(record.mime_type)
        if kind is None or kind is not declared:
            what = kind.value if kind is not None else "not an allowed type"
            return self._reject(record, f"the bytes are {what}; {record.mime_type} was declared")
        if self.scanner is None:
            raise DependencyUnavailableError("no malware scanner is configured")
        verdict = self.scanner.scan(self.storage.stream(record.key, STREAM_CHUNK_BYTES))
        if not verdict.clean:
            self.storage.delete(record.key)
            logger.warning("file infected", extra={"file_id": record.file_id, "signature": verdict.signature})
            final = self.files.move(
                record.file_id, [FileStatus.SCANNING], FileStatus.INFECTED, reason=f"malware: {verdict.signature}"
            )
            return final.status if final else self._get(record.file_id).status
        thumbnail = False
        if kind in THUMBNAILED and size <= THUMBNAIL_MAX_BYTES:
            thumbnail = self._make_thumbnail(record)
        final = self.files.move(
            record.file_id, [FileStatus.SCANNING], FileStatus.CLEAN, kind=kind, thumbnail=thumbnail, reason=None
        )
        return final.status if final else self._get(record.file_id).status

    def _make_thumbnail(self, record: FileRecord) -> bool:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # a decompression bomb's warning is an error
                data = self.thumbnailer.thumbnail(self.storage.stream(record.key, STREAM_CHUNK_BYTES))
        except (ValueError, Warning) as exc:
            logger.warning("no thumbnail", extra={"file_id": record.file_id, "error": repr(exc)[:300]})
            return False
        self.storage.put(thumbnail_key(record.file_id), data, "image/jpeg")
        return True

    # ------------------------------------------------------------------ helpers

    def _reject(self, record: FileRecord, reason: str) -> FileStatus:
        self.storage.delete(record.key)
        logger.info("file rejected", extra={"file_id": record.file_id, "reason": reason})
        final = self.files.move(
            record.file_id, [FileStatus.UPLOADING, FileStatus.SCANNING], FileStatus.REJECTED, reason=reason
        )
        return final.status if final else self._get(record.file_id).status

    @staticmethod
    def _part_complete(record: FileRecord, part_number: int, size: int) -> bool:
        """A part that is what the plan says: PART_SIZE bytes, the last one the rest."""
        last = part_count(record.size)
        if part_number < last:
            return size == PART_SIZE and size >= MIN_PART_SIZE
        return part_number == last and size == record.size - PART_SIZE * (last - 1)

    def _get(self, file_id: str) -> FileRecord:
        record = self.files.get(file_id)
        if record is None:
            raise NotFoundError(f"file {file_id} not found")
        return record

    def _readable(self, file_id: str, principal: Principal) -> FileRecord:
        record = self._get(file_id)
        if readable(record, principal, self.conversations):
            return record
        raise ForbiddenError("only participants of the file's conversations can read it")

    def _check_conversation(self, conversation_id: str, principal: Principal) -> None:
        conversation = self.conversations.get_conversation(conversation_id)
        if conversation is None:
            raise NotFoundError(f"conversation {conversation_id} not found")
        if not principal.is_admin and conversation.participant(principal.user_id or "") is None:
            raise ForbiddenError("an agent can only upload files to conversations it takes part in")


def readable(record: FileRecord, principal: Principal, conversations: ConversationStore) -> bool:
    """Admins; the uploader; a participant of a conversation the file belongs to."""
    if principal.is_admin or (principal.user_id is not None and record.owner_id == principal.user_id):
        return True
    for conversation_id in record.conversation_ids:
        conversation = conversations.get_conversation(conversation_id)
        if conversation is not None and conversation.participant(principal.user_id or "") is not None:
            return True
    return False


@dataclass
class FileAttachments:
    """What a send checks of its `file_id` (CLEAN and readable by the caller, else 422), and the file joining the
    conversation it was sent in (its participants may read it from then on)."""

    files: FileStore
    conversations: ConversationStore

    def attachable(self, file_id: str, principal: Principal) -> FileRecord:
        record = self.files.get(file_id)
        if record is None or not readable(record, principal, self.conversations):
            raise ValidationFailedError(
                f"file {file_id} does not exist or is not yours to send",
                errors=[FieldError("file_id", "unknown file")],
            )
        if record.status is not FileStatus.CLEAN:
            raise ValidationFailedError(
                f"file {file_id} is {record.status}; only CLEAN files can be sent",
                errors=[FieldError("file_id", f"is {record.status}, not CLEAN")],
            )
        return record

    def join(self, file_id: str, conversation_id: str) -> None:
        self.files.add_conversation(file_id, conversation_id)


@dataclass
class MediaLinks:
    """A file message's file as the platforms take it: its kind of media and a fresh download URL (24 hours)."""

    files: FileStore
    presign_get: Callable[[str, int, str | None], str]

    def __call__(self, file_id: str) -> OutboundMedia:
        record = self.files.get(file_id)
        if record is None or record.status is not FileStatus.CLEAN:
            raise UndeliverableError(f"file {file_id} is {'gone' if record is None else record.status}, not CLEAN")
        kind = record.kind or KIND_BY_MIME[record.mime_type]
        url = self.presign_get(record.key, DOWNLOAD_URL_SECONDS, record.filename)
        return OutboundMedia(kind.media, url, record.filename, kind.mime_type)
