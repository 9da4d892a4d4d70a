"""Child processes that the local stack starts, and always stops again."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

STATE_DIR = Path(os.environ.get("CHAT4ALL_STATE_DIR", Path(__file__).resolve().parent.parent / ".devstack"))


class ProcessFailedError(RuntimeError):
    """A server did not come up; the message carries the tail of its log."""


class StartCancelledError(ProcessFailedError):
    """The stack is stopping: no new process may start."""


class ProcessGroup:
    """Every process one stack starts, so that stopping the stack reaches them all, also mid-start.

    Start-up runs launchers in threads; a stop (Ctrl-C) can come while one of them is between starting a
    server and seeing it ready. Once closed, the group stops what it holds and refuses anything new.
    """

    def __init__(self, *, preferred_ports: bool = True) -> None:
        self._lock = threading.Lock()
        self._processes: list[ManagedProcess] = []
        self._closed = False
        self.preferred_ports = preferred_ports

    def port_for(self, preferred: int) -> int:
        """A port for one of the group's servers: its usual one when free and wanted, else any free one.

        Throwaway stacks (tests) take any port: two of them starting at once would both see the usual port free.
        """
        return free_port(preferred if self.preferred_ports else None)

    @property
    def closed(self) -> bool:
        return self._closed

    def add(self, process: ManagedProcess) -> None:
        with self._lock:
            if self._closed:
                raise StartCancelledError(f"not starting {process.name}: the stack is stopping")
            self._processes.append(process)

    @property
    def processes(self) -> list[ManagedProcess]:
        with self._lock:
            return list(self._processes)

    def run(self, argv: list[str], *, cwd: Path | str | None = None, timeout: float = 600.0) -> tuple[int, str]:
        """Run a short-lived command (initdb, pip) to its end, killed with the group; its exit code and output."""
        process = ManagedProcess(argv[0].rsplit("/", 1)[-1], argv, cwd=Path(cwd) if cwd else None, capture=True)
        process.start(self)
        try:
            return process.wait_output(timeout)
        finally:
            process.stop()

    def stop_all(self, grace: float = 15.0) -> None:
        """Close the group and stop its processes, each given `grace` seconds after SIGTERM before SIGKILL."""
        with self._lock:
            self._closed = True
            processes = list(self._processes)
            self._processes.clear()
        # in parallel: each may take its whole grace, and a stop should not wait for them one after another
        stoppers = [threading.Thread(target=process.stop, args=(grace,)) for process in processes]
        for stopper in stoppers:
            stopper.start()
        for stopper in stoppers:
            stopper.join()


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
        capture: bool = False,
    ) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self.log_path = log_path or STATE_DIR / "logs" / f"{name}.log"
        self.capture = capture
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen else None

    def start(self, group: ProcessGroup | None = None) -> None:
        """Start the process; with a group, only while the group is open, and stopped when it closes."""
        if group is not None:
            group.add(self)
        log = None
        if not self.capture:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            log = self.log_path.open("ab")
        try:
            self._popen = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdout=subprocess.PIPE if self.capture else log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            if log is not None:
                log.close()
        if group is not None and group.closed:  # closed between add() and Popen: stop_all() missed it
            self.stop()
            raise StartCancelledError(f"not starting {self.name}: the stack is stopping")

    def wait_output(self, timeout: float) -> tuple[int, str]:
        """For a captured process: wait for its end; its exit code and output."""
        assert self._popen is not None
        output, _ = self._popen.communicate(timeout=timeout)
        return self._popen.returncode, output.decode(errors="replace") if output else ""

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
    """Return `preferred` if a server could listen there, else a free ephemeral port."""
    if preferred is not None and not port_in_use(preferred) and _bindable(preferred):
        return preferred
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PortInUseError(RuntimeError):
    """A port the user asked for is taken by another program."""


def require_free_port(port: int, variable: str) -> None:
    """PortInUseError, naming `port` and the variable that chooses it, if another program holds it."""
    if port_in_use(port) or not _bindable(port):
        raise PortInUseError(f"port {port} is already in use by another program; stop it or set {variable}")


def _bindable(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could bind `port` now.

    Nothing listening is not enough: the preferred ports lie in Linux's ephemeral range, so the local end of
    an outgoing connection can hold one, and a server's bind then fails with "Address already in use".
    SO_REUSEADDR as servers set it, so a connection lingering in TIME_WAIT does not count.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def listening_inodes(port: int) -> set[str]:
    """Socket inodes listening on `port` (any address, IPv4 or IPv6), from /proc/net."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(inode)
    return inodes


def process_tree_owns_port(pid: int, port: int) -> bool:
    """Whether `pid` and its descendants hold every socket listening on `port` (and there is one).

    Every one: servers that set SO_REUSEPORT (LocalStack does) can share a port with another stack's server,
    and the kernel would then hand our connections to either.
    """
    wanted = {f"socket:[{inode}]" for inode in listening_inodes(port)}
    if not wanted:
        return False
    children: dict[int, list[int]] = {}
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat_file.parent.name))
    held: set[str] = set()
    pending = [pid]
    while pending:
        current = pending.pop()
        pending.extend(children.get(current, []))
        try:
            held.update(os.readlink(fd) for fd in Path(f"/proc/{current}/fd").iterdir())
        except OSError:
            continue
    return wanted <= held


def start_until_ready(
    process: ManagedProcess,
    probe: Callable[[], object],
    *,
    timeout: float,
    interval: float = 0.1,
    group: ProcessGroup | None = None,
    port: int | None = None,
) -> None:
    """Start `process` (in `group`) and return once `probe()` returns without raising.

    With `port`, ready also means the process itself listens there: another stack's server that took the port
    first answers the probe just as well, and must not be taken for ours.
    If the process exits or `probe` keeps raising past `timeout`, the process is stopped and
    ProcessFailedError carries the last probe error and the tail of the process's log.
    """
    process.start(group)
    try:
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if group is not None and group.closed:
                raise StartCancelledError(f"{process.name}: start-up cancelled")
            if not process.is_running():
                raise ProcessFailedError(f"{process.name} exited during start-up:\n{process.log_tail()}")
            try:
                probe()
            except Exception as exc:  # any failure of the probe means "not ready yet"
                last_error = exc
            else:
                if port is None or (process.pid is not None and process_tree_owns_port(process.pid, port)):
                    return
                last_error = ProcessFailedError(f"port {port} answers, but not from {process.name}")
            time.sleep(interval)
        raise ProcessFailedError(
            f"{process.name} was not ready after {timeout:.0f}s: {last_error}\n{process.log_tail()}"
        )
    except BaseException:
        process.stop()
        raise
