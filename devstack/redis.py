"""A throwaway redis-server for the local stack."""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING

import redis

from devstack.processes import ManagedProcess, ProcessFailedError, start_until_ready

if TYPE_CHECKING:
    from pathlib import Path

    from devstack.processes import ProcessGroup

PREFERRED_PORT = 56379


def start_redis(state_dir: Path, group: ProcessGroup, port: int | None = None) -> tuple[str, ManagedProcess]:
    """Start redis-server on 127.0.0.1 with persistence off; return its URL and process."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise ProcessFailedError("redis-server is not on PATH; install it or pass a Redis URL")
    data_dir = state_dir / "redis"
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or group.port_for(PREFERRED_PORT)
    argv = [
        binary,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--save", "",
        "--appendonly", "no",
        "--daemonize", "no",
        "--dir", str(data_dir),
    ]  # fmt: skip
    process = ManagedProcess("redis", argv, cwd=data_dir, log_path=state_dir / "logs" / "redis.log")
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        start_until_ready(process, client.ping, timeout=30.0, group=group, port=port)
    finally:
        client.close()
    return url, process
