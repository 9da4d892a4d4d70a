"""A local MongoDB-wire server for the stack: SecantusDB, run from this interpreter's environment."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from pymongo import MongoClient

from devstack.processes import ManagedProcess, start_until_ready

if TYPE_CHECKING:
    from pathlib import Path

    from devstack.processes import ProcessGroup

PREFERRED_PORT = 57017


def start_mongo(state_dir: Path, group: ProcessGroup, port: int | None = None) -> tuple[str, ManagedProcess]:
    """Start SecantusDB on 127.0.0.1 with its data in state_dir/mongo; return its URI and process."""
    data_dir = state_dir / "mongo"
    data_dir.mkdir(parents=True, exist_ok=True)
    # an explicit (empty) config file turns off the daemon's search of ./, ~/.secantus and /etc/secantus
    config = state_dir / "secantusd.toml"
    if not config.exists():
        config.write_text("# settings come from the command line (devstack/mongo.py)\n")
    port = port or group.port_for(PREFERRED_PORT)
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
    process = ManagedProcess("mongo", argv, cwd=state_dir, log_path=state_dir / "logs" / "mongo.log")
    # journaled writes: an acknowledged write survives the server being killed (without, SecantusDB loses the
    # last ones, as mongod with j:false does); "stored before 202" depends on it
    # retryWrites=false: SecantusDB 0.7.0b3 keeps every retryable write's reply for 30 minutes (up to 10,000) and
    # scans them all, and sorts them once full, on each write: the bookkeeping cost grew with the server's
    # age until it was the largest single item of its CPU (docs/MONGODB.md). The functions' writes are
    # conditional, and a failed one is retried by the code that made it (e.g. a receipt, 0.2 to 2 s apart).
    uri = f"mongodb://127.0.0.1:{port}/?directConnection=true&journal=true&retryWrites=false"
    start_until_ready(process, lambda: _ping(uri), timeout=60.0, group=group, port=port)
    return uri, process


def _ping(uri: str) -> None:
    client: MongoClient[dict[str, object]] = MongoClient(uri, serverSelectionTimeoutMS=500, connectTimeoutMS=500)
    try:
        client.admin.command("ping")
    finally:
        client.close()
