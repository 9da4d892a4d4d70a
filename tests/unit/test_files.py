"""Files over fakes: the sniffer (allowlist, docx in both entry orders, MP4 vs MOV), clamd's answers, and the
service's upload plan, size checks, scan and thumbnail outcomes, and who may read a file."""

from __future__ import annotations

import io
import struct
import zipfile
from typing import TYPE_CHECKING, Any

import pytest
from PIL import Image

from chat4all.adapters.scanner import parse_answer
from chat4all.adapters.thumbnails import PillowThumbnailer
from chat4all.domain.errors import ConflictError, DependencyUnavailableError, ForbiddenError, ValidationFailedError
from chat4all.domain.files import (
    MIB,
    PART_SIZE,
    FileKind,
    FileRecord,
    FileStatus,
    ScanVerdict,
    UploadedPart,
    sniff,
    thumbnail_key,
)
from chat4all.domain.models import Conversation, Principal, Role
from chat4all.ports import FileStore, MalwareScanner, ObjectStorage
from chat4all.services.files import CreateFile, FileService

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence

EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


def _sniff(data: bytes) -> FileKind | None:
    return sniff(data[:4096], len(data), lambda start, length: data[start : start + length])


def docx(order: Sequence[str]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name in order:
            archive.writestr(name, "<xml/>")
    return out.getvalue()


def ftyp(major: bytes, *compatible: bytes) -> bytes:
    body = major + b"\0\0\0\0" + b"".join(compatible)
    return struct.pack(">I", 8 + len(body)) + b"ftyp" + body + b"\0" * 64


def png(size: tuple[int, int] = (640, 480)) -> bytes:
    out = io.BytesIO()
    Image.new("RGBA", size, (10, 200, 30, 128)).save(out, "PNG")
    return out.getvalue()


def jpeg(size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 10, 30)).save(out, "JPEG", quality=60)
    return out.getvalue()


# ------------------------------------------------------------------------------------------ the sniffer


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"\xff\xd8\xff\xe0" + b"\0" * 100, FileKind.JPEG),
        (png((4, 4)), FileKind.PNG),
        (b"GIF89a" + b"\0" * 20, FileKind.GIF),
        (b"%PDF-1.7\n" + b"x" * 50, FileKind.PDF),
        (docx(["[Content_Types].xml", "word/document.xml"]), FileKind.DOCX),
        (docx(["word/document.xml", "[Content_Types].xml"]), FileKind.DOCX),
        (ftyp(b"isom", b"isom", b"avc1"), FileKind.MP4),
        (ftyp(b"mp42", b"mp42", b"isom"), FileKind.MP4),
        (ftyp(b"qt  ", b"qt  "), FileKind.MOV),
        (docx(["a.txt", "word/other.xml"]), None),  # a zip named .docx without word/document.xml
        (b"MZ\x90\x00" + b"\0" * 200, None),  # a Windows executable
        (b"\x7fELF\x02\x01" + b"\0" * 200, None),
        (EICAR, None),
        (b"", None),
    ],
)
def test_the_sniffer_reads_the_bytes_against_the_allowlist(data: bytes, kind: FileKind | None) -> None:
    assert _sniff(data) is kind


def test_clamd_answers() -> None:
    assert parse_answer(b"stream: OK\0") == ScanVerdict(clean=True)
    assert parse_answer(b"stream: Eicar-Signature FOUND\0") == ScanVerdict(clean=False, signature="Eicar-Signature")
    with pytest.raises(DependencyUnavailableError):
        parse_answer(b"INSTREAM size limit exceeded. ERROR\0")


def test_thumbnails_are_small_jpegs_and_bombs_are_refused() -> None:
    thumb = PillowThumbnailer().thumbnail([png()])
    with Image.open(io.BytesIO(thumb)) as image:
        assert image.format == "JPEG"
        assert max(image.size) <= 320
    with pytest.raises(ValueError, match="decoded"):
        PillowThumbnailer(max_pixels=1000).thumbnail([jpeg((100, 100))])


# ------------------------------------------------------------------------------------------ fakes


class InMemoryFileStore(FileStore):
    def __init__(self) -> None:
        self.records: dict[str, FileRecord] = {}

    def insert(self, record: FileRecord) -> None:
        self.records[record.file_id] = record

    def get(self, file_id: str) -> FileRecord | None:
        return self.records.get(file_id)

    def move(
        self, file_id: str, from_statuses: Sequence[FileStatus], to: FileStatus, **fields: Any
    ) -> FileRecord | None:
        record = self.records.get(file_id)
        if record is None or record.status not in from_statuses:
            return None
        record.status = to
        for name, value in fields.items():
            setattr(record, name, value)
        return record

    def add_conversation(self, file_id: str, conversation_id: str) -> None:
        self.records[file_id].conversation_ids.append(conversation_id)

    def delete(self, file_id: str) -> None:
        self.records.pop(file_id, None)


class InMemoryStorage(ObjectStorage):
    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.uploads: dict[str, dict[int, bytes]] = {}
        self.largest_chunk = 0

    def presign_post(self, key: str, size: int, content_type: str, expires: int) -> dict[str, Any]:
        return {"method": "POST", "url": f"memory://{key}", "fields": {"key": key}}

    def start_multipart(self, key: str, content_type: str) -> str:
        self.uploads[key] = {}
        return key

    def presign_part(self, key: str, upload_id: str, part_number: int, expires: int) -> str:
        return f"memory://{key}?part={part_number}"

    def list_parts(self, key: str, upload_id: str) -> list[UploadedPart]:
        return [UploadedPart(n, len(d), str(n)) for n, d in sorted(self.uploads[upload_id].items())]

    def complete_multipart(self, key: str, upload_id: str, parts: Sequence[UploadedPart]) -> None:
        received = self.uploads.pop(upload_id)
        self.objects[key] = b"".join(received[p.part_number] for p in parts)

    def abort_multipart(self, key: str, upload_id: str) -> None:
        self.uploads.pop(upload_id, None)

    def size_of(self, key: str) -> int | None:
        return len(self.objects[key]) if key in self.objects else None

    def read_range(self, key: str, start: int, length: int) -> bytes:
        return self.objects[key][start : start + length]

    def stream(self, key: str, chunk_size: int) -> Iterator[bytes]:
        data = self.objects[key]
        for start in range(0, len(data), chunk_size):
            self.largest_chunk = max(self.largest_chunk, len(data[start : start + chunk_size]))
            yield data[start : start + chunk_size]

    def put(self, key: str, data: bytes, content_type: str) -> None:
        self.objects[key] = data

    def upload(
        self, key: str, chunks: Iterable[bytes], content_type: str, before_complete: Callable[[int], None]
    ) -> int:
        data = b""
        for chunk in chunks:
            self.largest_chunk = max(self.largest_chunk, len(chunk))
            data += chunk
        before_complete(len(data))
        self.objects[key] = data
        return len(data)

    def delete(self, key: str) -> None:
        self.objects.pop(key, None)

    def presign_get(self, key: str, expires: int, filename: str | None = None) -> str:
        return f"memory://{key}?expires={expires}"


class SignatureScanner(MalwareScanner):
    def scan(self, chunks: Iterable[bytes]) -> ScanVerdict:
        data = b"".join(chunks)
        return ScanVerdict(clean=False, signature="Eicar") if EICAR in data else ScanVerdict(clean=True)


class Conversations:
    def __init__(self) -> None:
        self.by_id: dict[str, Conversation] = {}

    def get_conversation(self, conversation_id: str) -> Conversation | None:
        return self.by_id.get(conversation_id)


ADMIN = Principal(key_id="k", role=Role.ADMIN)
AGENT = Principal(key_id="a", role=Role.AGENT, user_id="agent-1")
OTHER = Principal(key_id="b", role=Role.AGENT, user_id="agent-2")


@pytest.fixture
def world() -> tuple[FileService, InMemoryFileStore, InMemoryStorage]:
    files, storage = InMemoryFileStore(), InMemoryStorage()
    service = FileService(files, storage, Conversations(), SignatureScanner(), PillowThumbnailer())  # type: ignore[arg-type]
    return service, files, storage


def upload(service: FileService, storage: InMemoryStorage, name: str, mime: str, data: bytes, declared: int = 0) -> str:
    record, plan = service.create(CreateFile(f"id-{name}", name, mime, declared or len(data)), AGENT)
    assert plan["method"] == "POST"
    storage.objects[record.key] = data
    service.object_created(record.key)
    return record.file_id


# ------------------------------------------------------------------------------------------ the service


def test_a_pdf_becomes_clean_and_downloadable(world: Any) -> None:
    service, _, storage = world
    file_id = upload(service, storage, "a.pdf", "application/pdf", b"%PDF-1.4\n" + b"x" * 5000)
    links = service.get(file_id, AGENT)
    assert links.record.status is FileStatus.CLEAN
    assert links.download_url and not links.thumbnail_url
    assert service.usable(file_id).kind is FileKind.PDF


@pytest.mark.parametrize(
    ("name", "mime", "data", "status"),
    [
        ("setup.pdf", "application/pdf", b"MZ\x90\x00" + b"\0" * 500, FileStatus.REJECTED),
        ("notes.docx", MIME := "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
         docx(["a.txt"]), FileStatus.REJECTED),
        ("a.png", "image/png", b"%PDF-1.4\n" + b"x" * 50, FileStatus.REJECTED),  # bytes and declared type differ
        ("eicar.pdf", "application/pdf", b"%PDF-1.4\n" + EICAR, FileStatus.INFECTED),
    ],
)  # fmt: skip
def test_bad_bytes_are_never_downloadable(world: Any, name: str, mime: str, data: bytes, status: FileStatus) -> None:
    service, _, storage = world
    file_id = upload(service, storage, name, mime, data)
    links = service.get(file_id, AGENT)
    assert links.record.status is status
    assert links.download_url is None
    assert f"files/{file_id}" not in storage.objects
    with pytest.raises(ValidationFailedError):
        service.usable(file_id)


def test_a_declared_size_that_does_not_match_is_rejected(world: Any) -> None:
    service, _, storage = world
    file_id = upload(service, storage, "a.pdf", "application/pdf", b"%PDF-1.4\n" + b"x" * 100, declared=5000)
    assert service.get(file_id, ADMIN).record.status is FileStatus.REJECTED


def test_images_get_a_thumbnail_beside_the_original(world: Any) -> None:
    service, _, storage = world
    for name, mime, data in (("a.png", "image/png", png()), ("big.jpg", "image/jpeg", jpeg((4000, 3000)))):
        file_id = upload(service, storage, name, mime, data)
        links = service.get(file_id, AGENT)
        assert links.record.status is FileStatus.CLEAN
        assert links.thumbnail_url
        assert thumbnail_key(file_id) in storage.objects


def test_a_multipart_upload_resumes_and_completes_from_the_listed_parts(world: Any) -> None:
    service, _, storage = world
    size = 6 * PART_SIZE + 5 * MIB  # above the single-upload limit: 7 parts
    data = b"%PDF-1.5\n" + bytes(size - 9)
    record, plan = service.create(CreateFile("big", "big.pdf", "application/pdf", size), AGENT)
    assert plan["part_size"] == PART_SIZE
    assert [p["part_number"] for p in plan["parts"]] == list(range(1, 8))
    for n in (1, 2):
        storage.uploads[record.upload_id][n] = data[(n - 1) * PART_SIZE : n * PART_SIZE]
    resume = service.parts("big", AGENT)
    assert [p["part_number"] for p in resume["parts"]] == [1, 2]
    assert [p["part_number"] for p in resume["upload"]["parts"]] == [3, 4, 5, 6, 7]
    with pytest.raises(ConflictError):
        service.complete("big", AGENT)
    for n in range(3, 8):
        storage.uploads[record.upload_id][n] = data[(n - 1) * PART_SIZE : n * PART_SIZE]
    assert service.complete("big", AGENT).status is FileStatus.SCANNING
    assert service.object_created(record.key) is FileStatus.CLEAN
    assert storage.objects[record.key] == data
    assert storage.largest_chunk <= MIB  # the scan streamed it


def test_parts_that_do_not_add_up_reject_the_file(world: Any) -> None:
    service, _, storage = world
    size = 7 * PART_SIZE + 10
    record, _ = service.create(CreateFile("short", "s.pdf", "application/pdf", size), AGENT)
    for n in range(1, 8):
        storage.uploads[record.upload_id][n] = bytes(PART_SIZE)
    storage.uploads[record.upload_id][8] = bytes(5)
    assert service.complete("short", AGENT).status is FileStatus.REJECTED
    assert record.upload_id not in storage.uploads


def test_over_two_gigabytes_is_refused_before_any_url(world: Any) -> None:
    service, files, _ = world
    with pytest.raises(ValidationFailedError):
        service.create(CreateFile("huge", "h.mp4", "video/mp4", 2 * 1024 * MIB + 1), AGENT)
    assert files.records == {}


def test_an_agent_reads_only_its_own_files_or_those_of_its_conversations(world: Any) -> None:
    service, _, storage = world
    file_id = upload(service, storage, "a.pdf", "application/pdf", b"%PDF-1.4\n")
    with pytest.raises(ForbiddenError):
        service.get(file_id, OTHER)
    assert service.get(file_id, ADMIN).record.file_id == file_id
