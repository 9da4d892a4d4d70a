"""The servers a local stack runs besides LocalStack and PostgreSQL: SecantusDB (MongoDB's wire protocol),
redis-server and clamd, each on 127.0.0.1 with its files in the state dir, ready once it answers."""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import redis
from pymongo import MongoClient

from devstack.processes import ManagedProcess, ProcessFailedError, start_until_ready

if TYPE_CHECKING:
    from collections.abc import Callable

    from devstack.processes import ProcessGroup

# devstack/clamav/ holds the EICAR test file's MD5 as an `.hdb` signature and one body signature (`.ndb`): these
# machines cannot download ClamAV's databases (freshclam is never run), and this is enough to prove the scan path
# end to end. A deployment points the template's `ClamdAddress` at a clamd of its own, kept current by freshclam.
SIGNATURES = Path(__file__).resolve().parent / "clamav"
CLAMD_SETTINGS = {
    "Foreground": "yes",
    "TCPAddr": "127.0.0.1",
    "LogTime": "yes",
    # no self-check reloading signatures in the middle of a test, no bytecode (none is shipped)
    "SelfCheck": "0",
    "Bytecode": "no",
    # as large as the biggest file the platform takes (2 GiB); a file past them is reported
    # (Heuristics.Limits.Exceeded) rather than passed as clean
    "StreamMaxLength": "2048M",
    "MaxScanSize": "2048M",
    "MaxFileSize": "2048M",
    "AlertExceedsMax": "yes",
}


def _run(
    name: str, argv: list[str], state_dir: Path, group: ProcessGroup, port: int, probe: Callable[[], object]
) -> ManagedProcess:
    process = ManagedProcess(name, argv, cwd=state_dir, log_path=state_dir / "logs" / f"{name}.log")
    start_until_ready(process, probe, timeout=60.0, interval=0.2, group=group, port=port)
    return process


def _binary(name: str, package: str, variable: str) -> str:
    found = shutil.which(name, path=f"{os.environ.get('PATH', '')}{os.pathsep}/usr/sbin")
    if found is None:
        raise ProcessFailedError(f"{name} is not installed (Debian's {package}); install it or set {variable}")
    return found


def start_mongo(state_dir: Path, group: ProcessGroup, port: int | None = None) -> tuple[str, ManagedProcess]:
    """SecantusDB from this interpreter's environment, its data in state_dir/mongo; its URI and process."""
    data_dir = state_dir / "mongo"
    data_dir.mkdir(parents=True, exist_ok=True)
    # an explicit (empty) config file turns off the daemon's search of ./, ~/.secantus and /etc/secantus
    config = state_dir / "secantusd.toml"
    if not config.exists():
        config.write_text("# settings come from the command line (devstack/servers.py)\n")
    port = port or group.port_for(57017)
    argv = [
        sys.executable, "-m", "secantus",
        "--config", str(config),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--storage-path", str(data_dir),
        "--log-level", "INFO",
        # a journaled (j:true) transaction commit survives SIGKILL only with this: without it SecantusDB lost
        # 5 of 820 acknowledged w:majority,j:true transactions to a SIGKILL (0 of 1,819 with it)
        "--sync-on-commit",
    ]  # fmt: skip
    # journaled writes: an acknowledged write survives the server being killed (without, SecantusDB loses the
    # last ones, as mongod with j:false does); "stored before 202" depends on it
    # retryWrites=false: SecantusDB 0.7.0b3 keeps every retryable write's reply for 30 minutes (up to 10,000) and
    # scans them all, and sorts them once full, on each write: the bookkeeping cost grew with the server's
    # age until it was the largest single item of its CPU (docs/MONGODB.md). The functions' writes are
    # conditional, and a failed one is retried by the code that made it (e.g. a receipt, 0.2 to 2 s apart).
    uri = f"mongodb://127.0.0.1:{port}/?directConnection=true&journal=true&retryWrites=false"

    def ping() -> None:
        with MongoClient[dict[str, object]](uri, serverSelectionTimeoutMS=500, connectTimeoutMS=500) as client:
            client.admin.command("ping")

    return uri, _run("mongo", argv, state_dir, group, port, ping)


def start_redis(state_dir: Path, group: ProcessGroup, port: int | None = None) -> tuple[str, ManagedProcess]:
    """redis-server with persistence off; its URL and process."""
    binary = _binary("redis-server", "redis-server", "REDIS_URL")
    (state_dir / "redis").mkdir(parents=True, exist_ok=True)
    port = port or group.port_for(56379)
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    url = f"redis://127.0.0.1:{port}/0"
    with redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5) as client:
        return url, _run("redis", [*argv, "--dir", str(state_dir / "redis")], state_dir, group, port, client.ping)


def start_clamd(state_dir: Path, group: ProcessGroup, port: int | None = None) -> tuple[str, ManagedProcess]:
    """clamd with the signatures the project ships; its address (host:port) and process."""
    binary = _binary("clamd", "clamav-daemon", "CLAMD_ADDRESS")
    home = state_dir / "clamd"
    database_dir, temp_dir = home / "db", home / "tmp"
    shutil.rmtree(database_dir, ignore_errors=True)
    for directory in (database_dir, temp_dir):
        directory.mkdir(parents=True, exist_ok=True)
    for signature in [*SIGNATURES.glob("*.hdb"), *SIGNATURES.glob("*.ndb")]:
        shutil.copyfile(signature, database_dir / signature.name)
    port = port or group.port_for(53310)
    settings = CLAMD_SETTINGS | {"TCPSocket": port, "DatabaseDirectory": database_dir, "TemporaryDirectory": temp_dir}
    config = home / "clamd.conf"
    config.write_text("".join(f"{key} {value}\n" for key, value in settings.items()))

    def ping() -> None:  # clamd's zPING, answered PONG
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as conn:
            conn.sendall(b"zPING\0")
            if (answer := conn.recv(64)).rstrip(b"\0\n") != b"PONG":
                raise ProcessFailedError(f"clamd answered {answer!r} to PING")

    return f"127.0.0.1:{port}", _run("clamd", [binary, "--config-file", str(config)], state_dir, group, port, ping)
