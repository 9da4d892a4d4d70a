"""The files bucket: presigned URLs for the clients, and the few object calls the checks make.

S3 speaks REST XML, not the JSON protocol of chat4all.adapters.aws_api, so its calls go through botocore's own S3
client (botocore is in every Lambda Python runtime; no boto3 session). `S3Api.call("Operation", {...})` names
each operation like AwsJsonApi does, so tests/infra can read from the code which S3 actions a function makes.
URLs are SigV4; with an endpoint URL (LocalStack) they are path-style (`http://host:port/bucket/key`).
"""

from __future__ import annotations

import contextlib
import urllib.parse
from typing import TYPE_CHECKING, Any

import botocore.session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from chat4all.domain.errors import DependencyUnavailableError
from chat4all.domain.files import UploadedPart
from chat4all.observability import logger
from chat4all.ports import DependencyCheck, ObjectStorage

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence

    from botocore.credentials import Credentials

MISSING_CODES = frozenset({"404", "NoSuchKey", "NotFound", "NoSuchUpload"})
# the parts of an upload the platform makes itself (an inbound file fetched from its platform): at least S3's 5 MiB
UPLOAD_PART_BYTES = 8 * 1024 * 1024


class S3Api:
    """botocore's S3 client behind a name-per-operation call (`call("GetObject", {...})`)."""

    def __init__(
        self,
        *,
        region: str,
        endpoint_url: str | None = None,
        credentials: Credentials | None = None,
        connect_timeout: float = 3.0,
        read_timeout: float = 30.0,
    ) -> None:
        session = botocore.session.get_session()
        frozen = credentials.get_frozen_credentials() if credentials is not None else None
        config = Config(
            signature_version="s3v4",
            s3={"addressing_style": "path" if endpoint_url else "auto"},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"max_attempts": 3, "mode": "standard"},
        )
        self.client: Any = session.create_client(
            "s3",
            region_name=region,
            endpoint_url=endpoint_url,
            aws_access_key_id=frozen.access_key if frozen else None,
            aws_secret_access_key=frozen.secret_key if frozen else None,
            aws_session_token=frozen.token if frozen else None,
            config=config,
        )

    def call(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        method = self.client.meta.method_to_api_mapping
        name = next(n for n, api in method.items() if api == operation)
        answer: dict[str, Any] = getattr(self.client, name)(**params)
        return answer

    def presign(self, operation: str, params: dict[str, Any], expires: int) -> str:
        """A URL that makes `operation` with the caller's grants, until `expires` seconds from now."""
        name = next(n for n, api in self.client.meta.method_to_api_mapping.items() if api == operation)
        return str(self.client.generate_presigned_url(name, Params=params, ExpiresIn=expires))

    def presign_post(self, bucket: str, key: str, fields: dict[str, str], conditions: list[Any], expires: int) -> Any:
        """A form upload of PutObject, held to `conditions` by its signed policy."""
        return self.client.generate_presigned_post(bucket, key, Fields=fields, Conditions=conditions, ExpiresIn=expires)


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except (ClientError, BotoCoreError) as exc:
        logger.warning("S3 call failed", extra={"error": repr(exc)[:500]})
        raise DependencyUnavailableError("S3 is unavailable") from exc


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class S3ObjectStorage(ObjectStorage):
    def __init__(self, s3: S3Api, bucket: str) -> None:
        self.s3 = s3
        self.bucket = bucket

    def presign_post(self, key: str, size: int, content_type: str, expires: int) -> dict[str, Any]:
        post = self.s3.presign_post(
            self.bucket,
            key,
            {"Content-Type": content_type},
            [["content-length-range", size, size], {"Content-Type": content_type}],
            expires,
        )
        return {"method": "POST", "url": post["url"], "fields": post["fields"]}

    def start_multipart(self, key: str, content_type: str) -> str:
        with _translated():
            answer = self.s3.call(
                "CreateMultipartUpload", {"Bucket": self.bucket, "Key": key, "ContentType": content_type}
            )
        return str(answer["UploadId"])

    def presign_part(self, key: str, upload_id: str, part_number: int, expires: int) -> str:
        params = {"Bucket": self.bucket, "Key": key, "UploadId": upload_id, "PartNumber": part_number}
        return self.s3.presign("UploadPart", params, expires)

    def list_parts(self, key: str, upload_id: str) -> list[UploadedPart]:
        parts: list[UploadedPart] = []
        marker = 0
        with _translated():
            while True:
                answer = self.s3.call(
                    "ListParts",
                    {"Bucket": self.bucket, "Key": key, "UploadId": upload_id, "PartNumberMarker": marker},
                )
                parts += [
                    UploadedPart(int(p["PartNumber"]), int(p["Size"]), str(p["ETag"])) for p in answer.get("Parts", [])
                ]
                if not answer.get("IsTruncated"):
                    return parts
                marker = int(answer["NextPartNumberMarker"])

    def complete_multipart(self, key: str, upload_id: str, parts: Sequence[UploadedPart]) -> None:
        upload = {"Parts": [{"PartNumber": p.part_number, "ETag": p.etag} for p in parts]}
        with _translated():
            self.s3.call(
                "CompleteMultipartUpload",
                {"Bucket": self.bucket, "Key": key, "UploadId": upload_id, "MultipartUpload": upload},
            )

    def abort_multipart(self, key: str, upload_id: str) -> None:
        try:
            self.s3.call("AbortMultipartUpload", {"Bucket": self.bucket, "Key": key, "UploadId": upload_id})
        except ClientError as exc:
            if _code(exc) not in MISSING_CODES:
                raise DependencyUnavailableError("S3 is unavailable") from exc

    def size_of(self, key: str) -> int | None:
        try:
            answer = self.s3.call("HeadObject", {"Bucket": self.bucket, "Key": key})
        except ClientError as exc:
            if _code(exc) in MISSING_CODES:
                return None
            raise DependencyUnavailableError("S3 is unavailable") from exc
        except BotoCoreError as exc:
            raise DependencyUnavailableError("S3 is unavailable") from exc
        return int(answer["ContentLength"])

    def read_range(self, key: str, start: int, length: int) -> bytes:
        if length <= 0:
            return b""
        with _translated():
            answer = self.s3.call(
                "GetObject", {"Bucket": self.bucket, "Key": key, "Range": f"bytes={start}-{start + length - 1}"}
            )
            return bytes(answer["Body"].read())

    def stream(self, key: str, chunk_size: int) -> Iterator[bytes]:
        with _translated():
            answer = self.s3.call("GetObject", {"Bucket": self.bucket, "Key": key})
            body = answer["Body"]
            try:
                yield from body.iter_chunks(chunk_size)
            finally:
                body.close()

    def put(self, key: str, data: bytes, content_type: str) -> None:
        with _translated():
            self.s3.call("PutObject", {"Bucket": self.bucket, "Key": key, "Body": data, "ContentType": content_type})

    def upload(
        self, key: str, chunks: Iterable[bytes], content_type: str, before_complete: Callable[[int], None]
    ) -> int:
        """One PutObject when the bytes fit in one part, else a multipart upload of UPLOAD_PART_BYTES parts:
        never more than one part in memory. Anything raised on the way aborts the multipart upload."""
        buffer = bytearray()
        upload_id: str | None = None
        parts: list[UploadedPart] = []
        total = 0
        try:
            for chunk in chunks:
                total += len(chunk)
                buffer += chunk
                while len(buffer) >= UPLOAD_PART_BYTES:
                    if upload_id is None:
                        upload_id = self.start_multipart(key, content_type)
                    parts.append(self._upload_part(key, upload_id, len(parts) + 1, bytes(buffer[:UPLOAD_PART_BYTES])))
                    del buffer[:UPLOAD_PART_BYTES]
            if upload_id is None:
                before_complete(total)
                self.put(key, bytes(buffer), content_type)
                return total
            if buffer:
                parts.append(self._upload_part(key, upload_id, len(parts) + 1, bytes(buffer)))
            before_complete(total)
            self.complete_multipart(key, upload_id, parts)
            return total
        except BaseException:
            if upload_id is not None:
                self.abort_multipart(key, upload_id)
            raise

    def _upload_part(self, key: str, upload_id: str, part_number: int, data: bytes) -> UploadedPart:
        with _translated():
            answer = self.s3.call(
                "UploadPart",
                {"Bucket": self.bucket, "Key": key, "UploadId": upload_id, "PartNumber": part_number, "Body": data},
            )
        return UploadedPart(part_number, len(data), str(answer["ETag"]))

    def delete(self, key: str) -> None:
        with _translated():
            self.s3.call("DeleteObject", {"Bucket": self.bucket, "Key": key})

    def presign_get(self, key: str, expires: int, filename: str | None = None) -> str:
        return S3DownloadLinks(self.s3, self.bucket).presign_get(key, expires, filename)


class S3DownloadLinks:
    """Download URLs only (GetObject): what a send needs to hand a CLEAN file to a platform by link."""

    def __init__(self, s3: S3Api, bucket: str) -> None:
        self.s3 = s3
        self.bucket = bucket

    def presign_get(self, key: str, expires: int, filename: str | None = None) -> str:
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if filename:
            quoted = urllib.parse.quote(filename, safe="")
            params["ResponseContentDisposition"] = f"attachment; filename*=UTF-8''{quoted}"
        return self.s3.presign("GetObject", params, expires)


class S3BucketCheck(DependencyCheck):
    """/health's S3: the files bucket answers HeadBucket (s3:ListBucket on the bucket)."""

    name = "s3"
    iam_actions = ("s3:ListBucket",)

    def __init__(self, s3: S3Api, bucket: str) -> None:
        self.s3 = s3
        self.bucket = bucket

    def check(self) -> None:
        self.s3.call("HeadBucket", {"Bucket": self.bucket})
