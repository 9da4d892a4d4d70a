"""Child processes that the local stack starts, and always stops again."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

STATE_DIR = Path(os.environ.get("CHAT4ALL_STATE_DIR", Path(__file__).resolve().parent.parent / ".devstack"))


class ProcessFailedError(RuntimeError):
    """A server did not come up; the message carries the tail of its log."""


class ManagedProcess:
    """A server process in its own process group, logged to a file, stopped with its children."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self.log_path = log_path or STATE_DIR / "logs" / f"{name}.log"
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen else None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self._popen = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=self.cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()

    def is_running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> None:
        if self._popen is None or self._popen.poll() is not None:
            return
        pgid = os.getpgid(self._popen.pid)
        os.killpg(pgid, signal.SIGTERM)
        try:
            self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self._popen.wait(5)
        # children that outlived the leader still belong to the group
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def free_port(preferred: int | None = None) -> int:
    """Return `preferred` if nothing listens there, else a free ephemeral port."""
    if preferred is not None and not port_in_use(preferred):
        return preferred
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def start_until_ready(
    process: ManagedProcess, probe: Callable[[], None], *, timeout: float, interval: float = 0.1
) -> None:
    """Start `process` and return once `probe()` returns without raising.

    If the process exits or `probe` keeps raising past `timeout`, the process is stopped and
    ProcessFailedError carries the last probe error and the tail of the process's log.
    """
    process.start()
    try:
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if not process.is_running():
                raise ProcessFailedError(f"{process.name} exited during start-up:\n{process.log_tail()}")
            try:
                probe()
            except Exception as exc:  # any failure of the probe means "not ready yet"
                last_error = exc
            else:
                return
            time.sleep(interval)
        raise ProcessFailedError(
            f"{process.name} was not ready after {timeout:.0f}s: {last_error}\n{process.log_tail()}"
        )
    except BaseException:
        process.stop()
        raise
