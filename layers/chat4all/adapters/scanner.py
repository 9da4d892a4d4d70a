"""The malware scanner: clamd's INSTREAM protocol over TCP, the object streamed to it in chunks."""

from __future__ import annotations

import socket
import struct
from typing import TYPE_CHECKING

from chat4all.domain.errors import DependencyUnavailableError
from chat4all.domain.files import ScanVerdict
from chat4all.ports import DependencyCheck, MalwareScanner

if TYPE_CHECKING:
    from collections.abc import Iterable

# clamd takes a stream as chunks, each after its length as 4 bytes in network order; a zero length ends it
MAX_CHUNK = 1024 * 1024


def _address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"a clamd address is host:port, not {address!r}")
    return host, int(port)


class ClamdScanner(MalwareScanner):
    """clamd at host:port. `connect_timeout` for the connection, `read_timeout` for every send and the verdict
    (clamd scans once the stream ends: a 2 GB file takes it a while)."""

    def __init__(self, address: str, *, connect_timeout: float = 3.0, read_timeout: float = 600.0) -> None:
        self.host, self.port = _address(address)
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout

    def scan(self, chunks: Iterable[bytes]) -> ScanVerdict:
        try:
            with socket.create_connection((self.host, self.port), timeout=self.connect_timeout) as conn:
                conn.settimeout(self.read_timeout)
                conn.sendall(b"zINSTREAM\0")
                try:
                    for chunk in chunks:
                        for start in range(0, len(chunk), MAX_CHUNK):
                            piece = chunk[start : start + MAX_CHUNK]
                            conn.sendall(struct.pack(">I", len(piece)) + piece)
                    conn.sendall(struct.pack(">I", 0))
                except (BrokenPipeError, ConnectionResetError):
                    pass  # clamd stopped reading (a limit): its answer says why
                answer = _read_answer(conn)
        except OSError as exc:
            raise DependencyUnavailableError("the malware scanner is unavailable") from exc
        return parse_answer(answer)


def _read_answer(conn: socket.socket) -> bytes:
    answer = b""
    while not answer.endswith(b"\0"):
        data = conn.recv(4096)
        if not data:
            break
        answer += data
    return answer


def parse_answer(answer: bytes) -> ScanVerdict:
    """clamd's verdict: `stream: OK`, `stream: <signature> FOUND`, or an error (the scan did not decide)."""
    text = answer.rstrip(b"\0\n").decode("utf-8", "replace")
    _, _, result = text.partition(": ")
    if result == "OK":
        return ScanVerdict(clean=True)
    if result.endswith(" FOUND"):
        return ScanVerdict(clean=False, signature=result.removesuffix(" FOUND"))
    # "INSTREAM size limit exceeded. ERROR" and the like: not clean, not decided
    raise DependencyUnavailableError(f"the malware scanner did not decide: {text[:200]}")


class ClamdCheck(DependencyCheck):
    name = "scanner"

    def __init__(self, address: str, timeout: float = 2.0) -> None:
        self.host, self.port = _address(address)
        self.timeout = timeout

    def check(self) -> None:
        with socket.create_connection((self.host, self.port), timeout=self.timeout) as conn:
            conn.settimeout(self.timeout)
            conn.sendall(b"zPING\0")
            if _read_answer(conn).rstrip(b"\0") != b"PONG":
                raise DependencyUnavailableError("the malware scanner did not answer PING")
