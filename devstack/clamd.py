"""A clamd (Debian's clamav-daemon) for the local stack, with the small signature database the project ships.

These machines cannot download ClamAV's databases (and freshclam is never run): devstack/clamav/ holds the EICAR
test file's MD5 as an `.hdb` signature and one body signature (`.ndb`), enough to prove the scan path end to end.
A deployment points the template's `ClamdAddress` at a clamd of its own, kept current by freshclam.
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from devstack.processes import ManagedProcess, ProcessFailedError, start_until_ready

if TYPE_CHECKING:
    from devstack.processes import ProcessGroup

PREFERRED_PORT = 53310
SIGNATURES = Path(__file__).resolve().parent / "clamav"
BINARY_CANDIDATES = ("/usr/sbin/clamd", "clamd")
# the scan limits: as large as the biggest file the platform takes (2 GiB), and a file past them is reported
# (Heuristics.Limits.Exceeded) rather than passed as clean
LIMITS = {
    "StreamMaxLength": "2048M",
    "MaxScanSize": "2048M",
    "MaxFileSize": "2048M",
    "AlertExceedsMax": "yes",
}


def clamd_config(port: int, database_dir: Path, temp_dir: Path) -> str:
    lines = {
        "Foreground": "yes",
        "TCPSocket": str(port),
        "TCPAddr": "127.0.0.1",
        "DatabaseDirectory": str(database_dir),
        "TemporaryDirectory": str(temp_dir),
        "LogTime": "yes",
        # no self-check reloading signatures in the middle of a test, no bytecode (none is shipped)
        "SelfCheck": "0",
        "Bytecode": "no",
        **LIMITS,
    }
    return "".join(f"{key} {value}\n" for key, value in lines.items())


def ping(address: str, timeout: float = 1.0) -> None:
    """clamd's `zPING` on host:port; raises unless it answers PONG."""
    host, _, port = address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as conn:
        conn.sendall(b"zPING\0")
        answer = conn.recv(64)
    if answer.rstrip(b"\0\n") != b"PONG":
        raise ProcessFailedError(f"clamd answered {answer!r} to PING")


def start_clamd(state_dir: Path, group: ProcessGroup, port: int | None = None) -> tuple[str, ManagedProcess]:
    """Start clamd on 127.0.0.1 with the shipped signatures; return its address (host:port) and process."""
    binary = next((found for name in BINARY_CANDIDATES if (found := shutil.which(name))), None)
    if binary is None:
        raise ProcessFailedError("clamd is not installed (Debian's clamav-daemon); install it or set CLAMD_ADDRESS")
    home = state_dir / "clamd"
    database_dir, temp_dir = home / "db", home / "tmp"
    for directory in (database_dir, temp_dir):
        directory.mkdir(parents=True, exist_ok=True)
    for stale in database_dir.iterdir():
        stale.unlink()
    for signature in SIGNATURES.iterdir():
        if signature.suffix in (".hdb", ".ndb"):
            shutil.copyfile(signature, database_dir / signature.name)
    port = port or group.port_for(PREFERRED_PORT)
    config = home / "clamd.conf"
    config.write_text(clamd_config(port, database_dir, temp_dir))
    process = ManagedProcess(
        "clamd", [binary, "--config-file", str(config)], cwd=home, log_path=state_dir / "logs" / "clamd.log"
    )
    address = f"127.0.0.1:{port}"
    start_until_ready(process, lambda: ping(address), timeout=60.0, interval=0.2, group=group, port=port)
    return address, process
