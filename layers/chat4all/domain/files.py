"""Files: their record, the upload plan, and what a file is, read from its own bytes (never its name or declared type).

The sniffer is an allowlist of its own (no libmagic): a file is one of the kinds below or it is refused. A docx is a
zip whose central directory names `word/document.xml` (whatever the order of its entries); an MP4 and a MOV are
both ISO base media files, told apart by the `ftyp` box's brands (`qt  ` is QuickTime).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

MIB = 1024 * 1024
# the contract's limits: one presigned request up to 100 MB, a multipart upload above it, nothing over 2 GB
SINGLE_UPLOAD_MAX = 100 * MIB
MAX_FILE_SIZE = 2 * 1024 * MIB
# S3 wants every part but the last at least 5 MiB and at most 10,000 parts; 16 MiB gives a 2 GiB file 128 parts
PART_SIZE = 16 * MIB
MIN_PART_SIZE = 5 * MIB
# how long an upload's URLs stay good, and a download's (the contract: 24 hours)
UPLOAD_URL_SECONDS = 6 * 3600
DOWNLOAD_URL_SECONDS = 24 * 3600
# how many bytes the sniffer reads from the start of an object
HEAD_BYTES = 4096
# a zip's end of central directory record is in its last 22 + 65,535 bytes
ZIP_TAIL_BYTES = 22 + 65_535


class FileStatus(StrEnum):
    UPLOADING = "UPLOADING"
    SCANNING = "SCANNING"
    CLEAN = "CLEAN"
    INFECTED = "INFECTED"
    REJECTED = "REJECTED"


FINAL_STATUSES = frozenset({FileStatus.CLEAN, FileStatus.INFECTED, FileStatus.REJECTED})


class FileKind(StrEnum):
    """What the bytes are; each allowed kind has one MIME type and one way to go out to a platform."""

    JPEG = "jpeg"
    PNG = "png"
    GIF = "gif"
    PDF = "pdf"
    DOCX = "docx"
    MP4 = "mp4"
    MOV = "mov"

    @property
    def mime_type(self) -> str:
        return MIME_TYPES[self]

    @property
    def media(self) -> str:
        """How the platforms send it: `image`, `video` or `document`."""
        if self in (FileKind.JPEG, FileKind.PNG, FileKind.GIF):
            return "image"
        if self in (FileKind.MP4, FileKind.MOV):
            return "video"
        return "document"


MIME_TYPES = {
    FileKind.JPEG: "image/jpeg",
    FileKind.PNG: "image/png",
    FileKind.GIF: "image/gif",
    FileKind.PDF: "application/pdf",
    FileKind.DOCX: "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    FileKind.MP4: "video/mp4",
    FileKind.MOV: "video/quicktime",
}
KIND_BY_MIME = {mime: kind for kind, mime in MIME_TYPES.items()}
# the declared types a client may give besides the canonical ones
KIND_BY_MIME |= {"image/jpg": FileKind.JPEG, "image/pjpeg": FileKind.JPEG}
THUMBNAILED = frozenset({FileKind.JPEG, FileKind.PNG, FileKind.GIF})

QUICKTIME_BRAND = b"qt  "
MP4_BRANDS = frozenset(
    {b"isom", b"iso2", b"iso3", b"iso4", b"iso5", b"iso6", b"mp41", b"mp42", b"avc1", b"M4V ", b"dash", b"mmp4"}
)


def sniff_head(head: bytes) -> FileKind | str | None:  # noqa: PLR0911 - one return per kind
    """The kind the first bytes show: a FileKind, "zip" (a docx only if its directory says so), or None."""
    if head.startswith(b"\xff\xd8\xff"):
        return FileKind.JPEG
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return FileKind.PNG
    if head.startswith((b"GIF87a", b"GIF89a")):
        return FileKind.GIF
    if head.startswith(b"%PDF-"):
        return FileKind.PDF
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if len(head) >= 12 and head[4:8] == b"ftyp":
        return _iso_media_kind(head)
    return None


def _iso_media_kind(head: bytes) -> FileKind | None:
    box_size = struct.unpack(">I", head[:4])[0]
    major = head[8:12]
    # compatible brands follow the major brand and its minor version, up to the end of the ftyp box
    end = min(box_size, len(head)) if box_size >= 16 else 16
    compatible = {head[i : i + 4] for i in range(16, end - 3, 4)}
    if major == QUICKTIME_BRAND:
        return FileKind.MOV
    if major in MP4_BRANDS or compatible & MP4_BRANDS:
        return FileKind.MP4
    if QUICKTIME_BRAND in compatible:
        return FileKind.MOV
    return None


def zip_entry_names(size: int, read: Callable[[int, int], bytes]) -> list[str] | None:
    """The names in a zip's central directory, read with `read(offset, length)`; None when it is not a readable
    zip (no end of central directory record, or a directory outside the object)."""
    tail_start = max(0, size - ZIP_TAIL_BYTES)
    tail = read(tail_start, size - tail_start)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < 22:
        return None
    entries, directory_size, directory_offset = struct.unpack("<xxxxxxxxxxHII", tail[at : at + 20])
    if directory_offset + directory_size > size or directory_size > 16 * MIB:
        return None
    directory = read(directory_offset, directory_size) if directory_size else b""
    names: list[str] = []
    offset = 0
    for _ in range(entries):
        if directory[offset : offset + 4] != b"PK\x01\x02" or offset + 46 > len(directory):
            return None
        name_length, extra_length, comment_length = struct.unpack("<HHH", directory[offset + 28 : offset + 34])
        start = offset + 46
        names.append(directory[start : start + name_length].decode("utf-8", "replace"))
        offset = start + name_length + extra_length + comment_length
    return names


def sniff(head: bytes, size: int, read: Callable[[int, int], bytes]) -> FileKind | None:
    """The allowed kind an object's bytes are, or None (not allowed, whatever its name says)."""
    kind = sniff_head(head)
    if kind == "zip":
        names = zip_entry_names(size, read)
        return FileKind.DOCX if names is not None and "word/document.xml" in names else None
    return kind if isinstance(kind, FileKind) else None


def part_count(size: int, part_size: int = PART_SIZE) -> int:
    return max(1, -(-size // part_size))


def object_key(file_id: str) -> str:
    """Where a file's bytes are (the bucket notifies only under files/)."""
    return f"files/{file_id}"


def thumbnail_key(file_id: str) -> str:
    return f"thumbnails/{file_id}.jpg"


def file_id_of(key: str) -> str | None:
    prefix, _, file_id = key.partition("/")
    return file_id if prefix == "files" and file_id and "/" not in file_id else None


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class FileRecord:
    """A file's metadata (MongoDB `files`); its bytes are only ever in the object store."""

    file_id: str
    filename: str
    mime_type: str
    size: int
    status: FileStatus
    owner_id: str | None  # who uploaded it (None: inbound media, or an admin key without a user)
    # the conversations it belongs to: the one named at upload, and every conversation a message carried it in
    conversation_ids: list[str] = field(default_factory=list)
    upload_id: str | None = None  # the multipart upload's, when above SINGLE_UPLOAD_MAX
    kind: FileKind | None = None  # what its bytes turned out to be
    thumbnail: bool = False
    reason: str | None = None  # why REJECTED or INFECTED
    created_at: datetime = field(default_factory=utcnow)
    updated_at: datetime = field(default_factory=utcnow)

    @property
    def multipart(self) -> bool:
        return self.size > SINGLE_UPLOAD_MAX

    @property
    def key(self) -> str:
        return object_key(self.file_id)


@dataclass(frozen=True)
class UploadedPart:
    part_number: int
    size: int
    etag: str


@dataclass(frozen=True)
class ScanVerdict:
    clean: bool
    signature: str | None = None
