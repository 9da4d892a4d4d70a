"""Files through the local stack: `python -m bench.files [--big-mib 1024] [--small 100] [--small-kib 1024]`.

Starts the whole platform as `make test` does (own servers, LocalStack's S3 with signatures checked, clamd)
and measures, as a client would do it (the bytes go to S3's presigned URLs, never through a function):

1. one multipart upload of `--big-mib` MiB (an MP4 by its `ftyp` box, so it ends CLEAN): the parts PUT one after
   another to their presigned URLs, upload throughput; then `complete` and the time until the file is CLEAN (S3's
   ObjectCreated notification, the files function's sniffing and clamd's scan of every byte);
2. `--small` uploads of `--small-kib` KiB (PDFs) at once through their presigned POSTs: the wall time and
   throughput of the lot, and each file's time from its upload's answer to CLEAN (p50/p95).

It prints Markdown for docs/BENCHMARKS.md. All traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from bench.load import percentile
from devstack.stack import throwaway_platform

MIB = 1024 * 1024
CLEAN_TIMEOUT_SECONDS = 900.0


def mp4_part(size: int, first: bool) -> bytes:
    """A part of an MP4: the first starts with an `ftyp` box (brand isom); random bytes (compressed media is
    close to random, and the scanner gets no run of zeros to skip through)."""
    head = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" if first else b""
    return head + os.urandom(size - len(head))


def pdf_bytes(size: int) -> bytes:
    body = b"%PDF-1.4\n%" + os.urandom(16) + b"\n"
    return body + os.urandom(size - len(body) - 6) + b"\n%%EOF"


def wait_clean(api: httpx.Client, file_id: str, timeout: float = CLEAN_TIMEOUT_SECONDS) -> float:
    """When (monotonic) the file became CLEAN; raises if it ends otherwise or takes longer than `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = api.get(f"/v1/files/{file_id}").json()["status"]
        if status == "CLEAN":
            return time.monotonic()
        if status in ("INFECTED", "REJECTED"):
            raise RuntimeError(f"file {file_id} ended {status}")
        time.sleep(0.1)
    raise TimeoutError(f"file {file_id} not CLEAN within {timeout} s")


def big_upload(api: httpx.Client, size_mib: int) -> dict[str, float]:
    size = size_mib * MIB
    created = api.post("/v1/files", json={"filename": "big.mp4", "mime_type": "video/mp4", "size": size})
    created.raise_for_status()
    file = created.json()
    part_size = int(file["upload"]["part_size"])
    started = time.monotonic()
    with httpx.Client(timeout=300) as s3:
        for part in file["upload"]["parts"]:
            n = int(part["part_number"])
            length = min(part_size, size - (n - 1) * part_size)
            body = mp4_part(length, first=n == 1)
            s3.put(part["url"], content=body).raise_for_status()
    uploaded = time.monotonic()
    api.post(f"/v1/files/{file['file_id']}/complete").raise_for_status()
    completed = time.monotonic()
    clean = wait_clean(api, file["file_id"])
    return {
        "mib": size_mib,
        "parts": len(file["upload"]["parts"]),
        "upload_seconds": uploaded - started,
        "mib_per_second": size_mib / (uploaded - started),
        "complete_seconds": completed - uploaded,
        "complete_to_clean_seconds": clean - completed,
    }


def small_uploads(api: httpx.Client, count: int, size_kib: int) -> dict[str, Any]:
    size = size_kib * 1024
    body = pdf_bytes(size)
    files = []
    for n in range(count):
        created = api.post("/v1/files", json={"filename": f"doc{n}.pdf", "mime_type": "application/pdf", "size": size})
        created.raise_for_status()
        files.append(created.json())

    def upload(file: dict[str, Any]) -> float:
        with httpx.Client(timeout=120) as s3:
            post = file["upload"]
            s3.post(post["url"], data=post["fields"], files={"file": ("doc.pdf", body)}).raise_for_status()
        return time.monotonic()

    started = time.monotonic()
    with ThreadPoolExecutor(count) as pool:
        answered = list(pool.map(upload, files))
    uploaded = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        clean = list(pool.map(lambda f: wait_clean(api, f["file_id"]), files))
    to_clean = [c - a for c, a in zip(clean, answered, strict=True)]
    return {
        "count": count,
        "kib": size_kib,
        "wall_seconds": uploaded - started,
        "mib_per_second": count * size / MIB / (uploaded - started),
        "to_clean_p50": percentile(to_clean, 0.5),
        "to_clean_p95": percentile(to_clean, 0.95),
        "all_clean_seconds": max(clean) - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--big-mib", type=int, default=1024)
    parser.add_argument("--small", type=int, default=100)
    parser.add_argument("--small-kib", type=int, default=1024)
    arguments = parser.parse_args()
    with throwaway_platform("files-bench", {}) as platform:
        headers = {"Authorization": f"Bearer {platform.admin_api_key}"}
        with httpx.Client(base_url=platform.api_url, headers=headers, timeout=60) as api:
            small = small_uploads(api, arguments.small, arguments.small_kib)
            big = big_upload(api, arguments.big_mib)
    print("\n### Files through the local stack (`bench.files`)\n")
    print("| run | figures |\n| --- | --- |")
    print(
        f"| one {big['mib']} MiB multipart upload ({big['parts']} parts PUT one after another) | "
        f"{big['upload_seconds']:.1f} s, **{big['mib_per_second']:.1f} MiB/s**; "
        f"complete {big['complete_seconds']:.2f} s; complete to CLEAN **{big['complete_to_clean_seconds']:.1f} s** |"
    )
    print(
        f"| {small['count']} uploads of {small['kib']} KiB at once (presigned POSTs) | all answered in "
        f"{small['wall_seconds']:.1f} s ({small['mib_per_second']:.1f} MiB/s); upload to CLEAN p50 "
        f"{small['to_clean_p50'] / 1000:.2f} s, p95 {small['to_clean_p95'] / 1000:.2f} s; all CLEAN "
        f"{small['all_clean_seconds']:.1f} s after the first upload started |"
    )


if __name__ == "__main__":
    main()
