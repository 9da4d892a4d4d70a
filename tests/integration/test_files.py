"""Files against the real stack (issue 18): LocalStack S3 checking SigV4 signatures, its ObjectCreated notifications
to the file-events queue consumed by FilesFunction through the local runtime, the real clamd, MongoDB.

Every upload and download is made as a client makes it: httpx to the presigned URLs, never through boto3."""

from __future__ import annotations

import hashlib
import io
import os
import random
import time
import uuid
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import httpx
import pytest
from botocore.credentials import Credentials
from PIL import Image

from chat4all.adapters.s3 import S3Api, S3ObjectStorage
from tests.support.waiting import wait_until

if TYPE_CHECKING:
    from devstack.stack import LocalPlatform
    from tests.integration.conftest import Api, WhatsAppSetup
    from tests.support.fake_instagram import FakeInstagram
    from tests.support.fake_telegram import FakeTelegram
    from tests.support.fake_whatsapp import FakeWhatsApp

MIB = 1024 * 1024
EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
FINAL = ("CLEAN", "INFECTED", "REJECTED")


# ------------------------------------------------------------------ helpers


def png_bytes(width: int = 640, height: int = 480) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (12, 140, 200)).save(out, format="PNG")
    return out.getvalue()


def pdf_bytes(extra: int = 0) -> bytes:
    body = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n" + b"%" + os.urandom(extra).hex().encode() + b"\n"
    return body + b"trailer << /Root 1 0 R >>\n%%EOF\n"


def create(api: Api, filename: str, mime_type: str, size: int, **extra: Any) -> dict[str, Any]:
    return api.created("/v1/files", {"filename": filename, "mime_type": mime_type, "size": size, **extra})


def post_form(upload: dict[str, Any], data: bytes, filename: str = "upload.bin") -> httpx.Response:
    """The presigned POST as a browser or client sends it: the policy's fields, then the file as `file`."""
    assert upload["method"] == "POST", upload
    files = {"file": (filename, data)}
    return httpx.post(upload["url"], data=upload["fields"], files=files, timeout=60)


def upload(api: Api, filename: str, mime_type: str, data: bytes) -> dict[str, Any]:
    created = create(api, filename, mime_type, len(data))
    response = post_form(created["upload"], data, filename)
    assert response.status_code in (200, 201, 204), response.text
    return created


def settled(api: Api, file_id: str, timeout: float = 60.0) -> dict[str, Any]:
    """The file once its object was announced, checked and scanned (CLEAN, INFECTED or REJECTED)."""
    seen: dict[str, Any] = {}

    def final() -> bool:
        response = api.call("GET", f"/v1/files/{file_id}")
        assert response.status_code == 200, response.text
        seen.update(response.json())
        return seen["status"] in FINAL

    wait_until(final, timeout, f"file {file_id} checked")
    return seen


def download(url: str) -> bytes:
    response = httpx.get(url, timeout=60)
    assert response.status_code == 200, response.text
    return response.content


@pytest.fixture(scope="module")
def s3(platform: LocalPlatform) -> Any:
    return boto3.client("s3", endpoint_url=platform.urls["aws"], region_name="us-east-1")


@pytest.fixture(scope="module")
def bucket(platform: LocalPlatform) -> str:
    assert platform.stack is not None
    return str(platform.stack.resolve({"Ref": "FilesBucket"}))


def object_exists(s3: Any, bucket: str, key: str) -> bool:
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=key)
    return any(item["Key"] == key for item in listed.get("Contents", []))


def never_downloadable(s3: Any, bucket: str, view: dict[str, Any]) -> None:
    assert "download_url" not in view and "thumbnail" not in view, view
    assert not object_exists(s3, bucket, f"files/{view['file_id']}")


# ------------------------------------------------------------------ one request


def test_a_png_uploaded_by_form_becomes_clean_with_a_thumbnail_and_downloads_the_same_bytes(api: Api) -> None:
    data = png_bytes()
    created = upload(api, "photo.png", "image/png", data)
    assert created["status"] == "UPLOADING"
    view = settled(api, created["file_id"])
    assert view["status"] == "CLEAN", view
    assert hashlib.sha256(download(view["download_url"])).digest() == hashlib.sha256(data).digest()
    thumbnail = download(view["thumbnail"]["url"])
    with Image.open(io.BytesIO(thumbnail)) as image:
        assert image.format == "JPEG"
        assert max(image.size) <= 320


def test_the_eicar_file_named_pdf_is_never_downloadable(api: Api, s3: Any, bucket: str) -> None:
    created = upload(api, "invoice.pdf", "application/pdf", EICAR)
    view = settled(api, created["file_id"])
    assert view["status"] in ("INFECTED", "REJECTED"), view
    never_downloadable(s3, bucket, view)


def test_a_pdf_carrying_eicar_is_infected(api: Api, s3: Any, bucket: str) -> None:
    """A real PDF whose body holds the project's body signature: past the sniffer, found by clamd."""
    data = pdf_bytes(1000).replace(b"trailer", b"CHAT4ALL-MALWARE-TEST-BODY-SIGNATURE\ntrailer")
    created = upload(api, "report.pdf", "application/pdf", data)
    view = settled(api, created["file_id"])
    assert view["status"] == "INFECTED", view
    never_downloadable(s3, bucket, view)


def test_a_renamed_executable_is_rejected(api: Api, s3: Any, bucket: str) -> None:
    data = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff" + os.urandom(4000)
    created = upload(api, "holiday.jpg", "image/jpeg", data)
    view = settled(api, created["file_id"])
    assert view["status"] == "REJECTED", view
    never_downloadable(s3, bucket, view)


def test_a_zip_named_docx_without_its_document_is_rejected(api: Api, s3: Any, bucket: str) -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr("word/styles.xml", "<styles/>")
    docx = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
    created = upload(api, "contract.docx", docx, out.getvalue())
    view = settled(api, created["file_id"])
    assert view["status"] == "REJECTED", view
    never_downloadable(s3, bucket, view)


def test_an_upload_of_another_size_than_declared_is_refused(api: Api, s3: Any, bucket: str) -> None:
    data = pdf_bytes(2000)
    created = create(api, "short.pdf", "application/pdf", len(data) + 10)
    response = post_form(created["upload"], data, "short.pdf")
    assert response.status_code == 400, response.text  # S3's policy: EntityTooSmall
    assert not object_exists(s3, bucket, f"files/{created['file_id']}")
    bigger = create(api, "long.pdf", "application/pdf", len(data) - 10)
    assert post_form(bigger["upload"], data, "long.pdf").status_code == 400


def test_tampered_and_expired_download_urls_are_refused(api: Api, platform: LocalPlatform, bucket: str) -> None:
    data = pdf_bytes(500)
    view = settled(api, upload(api, "signed.pdf", "application/pdf", data)["file_id"])
    assert view["status"] == "CLEAN", view
    url = view["download_url"]
    assert download(url) == data
    signature = url.split("X-Amz-Signature=")[1][:64]
    flipped = signature[:10] + ("0" if signature[10] != "0" else "1") + signature[11:]
    assert httpx.get(url.replace(signature, flipped), timeout=30).status_code == 403
    s3api = S3Api(region="us-east-1", endpoint_url=platform.urls["aws"], credentials=Credentials("test", "test"))
    # valid for 5 s (1 s failed once on a loaded machine: expired before its first use), then refused
    short = S3ObjectStorage(s3api, bucket).presign_get(f"files/{view['file_id']}", 5)
    assert download(short) == data
    deadline = time.monotonic() + 30
    while (status := httpx.get(short, timeout=30).status_code) == 200:
        assert time.monotonic() < deadline, "the URL still works 30 s after it expired"
        time.sleep(0.5)
    assert status == 403


# ------------------------------------------------------------------ in parts


def put_part(url: str, data: bytes) -> str:
    response = httpx.put(url, content=data, timeout=120)
    assert response.status_code == 200, response.text
    return response.headers["ETag"]


def test_a_150_mb_upload_in_parts_resumes_and_downloads_the_same_bytes_with_flat_function_memory(
    api: Api, platform: LocalPlatform, tmp_path: Path
) -> None:
    size = 150 * MIB + 12345
    source = tmp_path / "big.mp4"
    digest = hashlib.sha256()
    with source.open("wb") as out:
        head = b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41" + b"\x00\x00\x00\x08free"
        out.write(head)
        digest.update(head)
        left = size - len(head)
        while left:
            chunk = os.urandom(min(left, 4 * MIB))
            out.write(chunk)
            digest.update(chunk)
            left -= len(chunk)
    # warm FilesFunction's containers (the API's and the checker's, Pillow imported) before the baseline
    warm = upload(api, "warm.png", "image/png", png_bytes(64, 64))
    assert settled(api, warm["file_id"])["status"] == "CLEAN"
    baseline = container_peaks(platform, "FilesFunction")
    created = create(api, "big.mp4", "video/mp4", size)
    plan = created["upload"]
    part_size = plan["part_size"]
    parts = {p["part_number"]: p["url"] for p in plan["parts"]}
    assert len(parts) == -(-size // part_size)

    def part(number: int) -> bytes:
        with source.open("rb") as f:
            f.seek((number - 1) * part_size)
            return f.read(part_size)

    first = sorted(parts)[:3]
    for number in first:
        put_part(parts[number], part(number))
    # the connection dropped: what arrived, and fresh URLs for the rest
    listed = api.call("GET", f"/v1/files/{created['file_id']}/parts")
    assert listed.status_code == 200, listed.text
    body = listed.json()
    assert [p["part_number"] for p in body["parts"]] == first
    rest = {p["part_number"]: p["url"] for p in body["upload"]["parts"]}
    assert sorted(rest) == sorted(set(parts) - set(first))
    early = api.call("POST", f"/v1/files/{created['file_id']}/complete")
    assert early.status_code == 409, early.text
    for number in sorted(rest):
        put_part(rest[number], part(number))
    completed = api.call("POST", f"/v1/files/{created['file_id']}/complete")
    assert completed.status_code == 200, completed.text
    view = settled(api, created["file_id"], timeout=300)
    assert view["status"] == "CLEAN", view
    fetched = hashlib.sha256()
    with httpx.stream("GET", view["download_url"], timeout=120) as response:
        assert response.status_code == 200
        for chunk in response.iter_bytes(MIB):
            fetched.update(chunk)
    assert fetched.hexdigest() == digest.hexdigest()
    # the bytes never went through the function: no container's peak RSS moved by anything near the file's size,
    # and none ever held it (a container started after the baseline counts its whole peak as growth)
    after = container_peaks(platform, "FilesFunction")
    growth = max(peak - baseline.get(pid, 0) for pid, peak in after.items())
    print(
        f"FilesFunction containers' peak RSS (VmHWM) during a {size} byte upload: "
        f"{max(after.values()) / MIB:.1f} MiB at most, growth {growth / MIB:.1f} MiB at most "
        f"(before: {max(baseline.values()) / MIB:.1f} MiB)"
    )
    assert growth < 50 * MIB, (baseline, after)
    assert max(after.values()) < 150 * MIB, after


def container_peaks(platform: LocalPlatform, logical_id: str) -> dict[int, int]:
    """pid -> peak RSS (VmHWM, bytes) of each live container of the function."""
    assert platform.runtime is not None
    peaks: dict[int, int] = {}
    for pid in platform.runtime.container_pids().get(logical_id, []):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                peaks[pid] = int(line.split()[1]) * 1024
    return peaks


def test_a_file_of_another_conversation_is_forbidden_to_an_agent(api: Api) -> None:
    agent = api.created("/v1/users", {"display_name": "Fay Files", "user_type": "AGENT"})
    key = api.created(
        "/v1/api-keys", {"name": f"files-{uuid.uuid4().hex[:6]}", "role": "agent", "user_id": agent["user_id"]}
    )
    created = upload(api, "private.png", "image/png", png_bytes(32, 32))
    response = api.call("GET", f"/v1/files/{created['file_id']}", key=key["api_key"])
    assert response.status_code == 403, response.text


def test_health_names_s3_and_the_scanner(api: Api) -> None:
    response = api.client.get("/health")
    assert response.status_code == 200, response.text
    assert {"s3": "UP", "scanner": "UP"}.items() <= response.json()["dependencies"].items()


# ------------------------------------------------------------------ media out (a file message by link)


def clean_pdf(api: Api) -> tuple[str, bytes]:
    data = pdf_bytes(3000)
    created = upload(api, "quote.pdf", "application/pdf", data)
    assert settled(api, created["file_id"])["status"] == "CLEAN"
    return str(created["file_id"]), data


def send_file(api: Api, conversation_id: str, sender_id: str, file_id: str, caption: str | None) -> httpx.Response:
    body: dict[str, Any] = {"conversation_id": conversation_id, "sender_id": sender_id, "file_id": file_id}
    if caption is not None:
        body["content"] = caption
    return api.call("POST", "/v1/messages", json=body)


def sent(api: Api, message_id: str) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def done() -> bool:
        seen.update(api.call("GET", f"/v1/messages/{message_id}").json())
        return seen["status"] in ("SENT", "FAILED")

    wait_until(done, 60, f"message {message_id} sent")
    assert seen["status"] == "SENT", seen
    return seen


def user(api: Api, name: str, user_type: str = "CUSTOMER", **extra: Any) -> str:
    return str(api.created("/v1/users", {"display_name": name, "user_type": user_type, **extra})["user_id"])


def identity(api: Api, user_id: str, platform: str, platform_user_id: str) -> None:
    api.created(f"/v1/users/{user_id}/identities", {"platform": platform, "platform_user_id": platform_user_id})


def conversation(api: Api, participants: list[str], platform: str, channel_id: str) -> str:
    kind = "ONE_TO_ONE" if len(participants) == 2 else "GROUP"
    body = {
        "conversation_type": kind,
        "participants": participants,
        "primary_channel": platform,
        "channel_id": channel_id,
    }
    return str(api.created("/v1/conversations", body)["conversation_id"])


def only_channel(api: Api, platform: str, credentials: dict[str, str]) -> str:
    """A new channel of `platform`, the only enabled one (a GROUP reaches a platform through its only channel)."""
    for channel in api.call("GET", "/v1/channels").json()["items"]:
        if channel["platform"] == platform and channel["enabled"]:
            assert api.call("PATCH", f"/v1/channels/{channel['channel_id']}", json={"enabled": False}).is_success
    body = {"platform": platform, "name": f"files {platform.lower()}", "credentials": credentials}
    return str(api.created("/v1/channels", body)["channel_id"])


def telegram_credentials() -> dict[str, str]:
    bot_id = str(random.randrange(10**9, 10**10))
    return {"bot_token": f"{bot_id}:AAH{uuid.uuid4().hex}", "secret_token": f"tg_{uuid.uuid4().hex}"}


def instagram_credentials(fake: FakeInstagram) -> dict[str, str]:
    credentials = {
        "access_token": f"IGAA{uuid.uuid4().hex}",
        "ig_user_id": str(random.randrange(10**16, 10**17)),
        "app_secret": uuid.uuid4().hex,
        "verify_token": uuid.uuid4().hex,
    }
    fake.add_account(credentials["access_token"], credentials["ig_user_id"])
    return credentials


def test_a_file_not_clean_unknown_or_not_the_senders_is_422(api: Api, whatsapp_conversation: WhatsAppSetup) -> None:
    setup = whatsapp_conversation
    pending = create(api, "later.pdf", "application/pdf", 1000)  # UPLOADING: never uploaded
    rejected = upload(api, "fake.pdf", "application/pdf", b"MZ" + os.urandom(2000))
    assert settled(api, rejected["file_id"])["status"] == "REJECTED"
    for file_id in (pending["file_id"], rejected["file_id"], str(uuid.uuid4())):
        response = send_file(api, setup.conversation_id, setup.agent_id, file_id, "see attached")
        assert response.status_code == 422, response.text
    # an agent sending a file it cannot read (an admin's upload for no conversation of its own)
    file_id, _ = clean_pdf(api)
    key = api.created("/v1/api-keys", {"name": "files-agent", "role": "agent", "user_id": setup.agent_id})
    body = {"conversation_id": setup.conversation_id, "sender_id": setup.agent_id, "file_id": file_id}
    response = api.call("POST", "/v1/messages", json=body, key=key["api_key"])
    assert response.status_code == 422, response.text


def test_a_pdf_goes_out_on_whatsapp_as_a_document_whose_link_downloads_it(
    api: Api, whatsapp_conversation: WhatsAppSetup, fake_whatsapp: FakeWhatsApp
) -> None:
    setup = whatsapp_conversation
    file_id, data = clean_pdf(api)
    key = api.created("/v1/api-keys", {"name": "files-a", "role": "agent", "user_id": setup.agent_id})["api_key"]
    assert api.call("GET", f"/v1/files/{file_id}", key=key).status_code == 403  # an admin's, of no conversation
    response = send_file(api, setup.conversation_id, setup.agent_id, file_id, "your quote")
    assert response.status_code == 202, response.text
    sent(api, response.json()["message_id"])
    [request] = fake_whatsapp.wait_for(setup.customer_phone, 1)
    assert request.body["type"] == "document", request.body
    assert request.body["document"]["caption"] == "your quote"
    assert request.body["document"]["filename"] == "quote.pdf"
    assert download(request.body["document"]["link"]) == data
    # the file joined the conversation it was sent in: its participants may read it now
    assert api.call("GET", f"/v1/files/{file_id}", key=key).status_code == 200


def test_a_pdf_goes_out_on_telegram_by_send_document(api: Api, fake_telegram: FakeTelegram) -> None:
    credentials = telegram_credentials()
    channel_id = only_channel(api, "TELEGRAM", credentials)
    agent, customer = user(api, "Tina Agent", "AGENT"), user(api, "Tom")
    chat_id = str(random.randrange(10**8, 10**9))
    identity(api, customer, "TELEGRAM", chat_id)
    conversation_id = conversation(api, [agent, customer], "TELEGRAM", channel_id)
    file_id, data = clean_pdf(api)
    response = send_file(api, conversation_id, agent, file_id, None)
    assert response.status_code == 202, response.text
    sent(api, response.json()["message_id"])
    [body] = [b for token, b in fake_telegram.called("sendDocument") if token == credentials["bot_token"]]
    assert body["chat_id"] == int(chat_id) and "caption" not in body
    assert download(body["document"]) == data


def test_a_pdf_goes_out_on_instagram_as_a_file_attachment(api: Api, fake_instagram: FakeInstagram) -> None:
    credentials = instagram_credentials(fake_instagram)
    channel_id = only_channel(api, "INSTAGRAM", credentials)
    agent, customer = user(api, "Ines Agent", "AGENT"), user(api, "Ivo")
    igsid = str(random.randrange(10**15, 10**16))
    identity(api, customer, "INSTAGRAM", igsid)
    conversation_id = conversation(api, [agent, customer], "INSTAGRAM", channel_id)
    file_id, data = clean_pdf(api)
    response = send_file(api, conversation_id, agent, file_id, "the catalogue")
    assert response.status_code == 202, response.text
    sent(api, response.json()["message_id"])
    [(_, attachment, _)] = [a for a in fake_instagram.attachments if a[0] == igsid]
    assert attachment["type"] == "file"
    assert download(attachment["payload"]["url"]) == data


def test_a_group_gets_an_image_on_each_recipients_platform(
    api: Api, fake_whatsapp: FakeWhatsApp, fake_telegram: FakeTelegram, whatsapp_conversation: WhatsAppSetup
) -> None:
    setup = whatsapp_conversation
    credentials = telegram_credentials()
    only_channel(api, "TELEGRAM", credentials)
    on_telegram = user(api, "Gil")
    chat_id = str(random.randrange(10**8, 10**9))
    identity(api, on_telegram, "TELEGRAM", chat_id)
    group = conversation(api, [setup.agent_id, setup.customer_id, on_telegram], "WHATSAPP", setup.channel["channel_id"])
    data = png_bytes(200, 100)
    created = upload(api, "map.png", "image/png", data)
    assert settled(api, created["file_id"])["status"] == "CLEAN"
    response = send_file(api, group, setup.agent_id, created["file_id"], "here")
    assert response.status_code == 202, response.text
    sent(api, response.json()["message_id"])
    [request] = fake_whatsapp.wait_for(setup.customer_phone, 1)
    assert request.body["type"] == "image" and request.body["image"]["caption"] == "here"
    assert download(request.body["image"]["link"]) == data
    [body] = [b for token, b in fake_telegram.called("sendPhoto") if token == credentials["bot_token"]]
    assert body["caption"] == "here" and download(body["photo"]) == data
