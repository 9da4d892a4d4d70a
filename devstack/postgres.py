"""A throwaway PostgreSQL cluster for the local stack, initialised on first use."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg

from devstack.processes import ManagedProcess, ProcessFailedError, start_until_ready
from devstack.state import server_home

if TYPE_CHECKING:
    from devstack.processes import ProcessGroup

PREFERRED_PORT = 55432
SUPERUSER = "postgres"
# sun_path is 108 bytes including the NUL; the socket file is ".s.PGSQL.<port>"
_MAX_SOCKET_DIR_LEN = 107 - len("/.s.PGSQL.65535")


def start_postgres(state_dir: Path, group: ProcessGroup, port: int | None = None) -> tuple[str, ManagedProcess]:
    """Start a PostgreSQL server on 127.0.0.1 with trust auth; return its URL and process.

    Its files live where its OS account can reach them: see devstack.state.server_home.
    """
    bindir = _find_bindir()
    owner = _server_owner()
    home = server_home(state_dir, owner)
    data_dir = home / "postgres"
    socket_dir = home / "postgres-run"
    if not (data_dir / "PG_VERSION").exists():
        # into a scratch dir first: a start-up stopped half way through initdb must not leave a broken cluster
        scratch = home / "postgres.initdb"
        shutil.rmtree(scratch, ignore_errors=True)
        _owned_dir(scratch, owner)
        _initdb(bindir, scratch, owner, group)
        shutil.rmtree(data_dir, ignore_errors=True)
        scratch.rename(data_dir)
    _owned_dir(socket_dir, owner)

    port = port or group.port_for(PREFERRED_PORT)
    # a socket path too long for sun_path makes the server refuse to start; TCP is all we use anyway
    sockets = str(socket_dir) if len(str(socket_dir)) <= _MAX_SOCKET_DIR_LEN else ""
    settings = {
        "listen_addresses": "127.0.0.1",
        "port": str(port),
        "unix_socket_directories": sockets,
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
    }
    argv = [str(bindir / "postgres"), "-D", str(data_dir)]
    for name, value in settings.items():
        argv += ["-c", f"{name}={value}"]
    process = _PostgresProcess(
        "postgres", _as_owner(argv, owner), cwd=data_dir, log_path=state_dir / "logs" / "postgres.log"
    )
    url = f"postgresql://{SUPERUSER}@127.0.0.1:{port}/postgres"
    start_until_ready(process, lambda: _select_one(url), timeout=60.0, interval=0.2, group=group, port=port)
    return url, process


class _PostgresProcess(ManagedProcess):
    """The postmaster, stopped with a fast shutdown rather than SIGTERM's smart one.

    A smart shutdown waits for every client to disconnect, so an open pool would run out the stop timeout and
    end in SIGKILL; the backends sit in their own sessions, so the group signal does not reach them either.
    """

    def stop(self, timeout: float = 15.0) -> None:
        if self.pid is not None and self.is_running():
            try:
                os.kill(self.pid, signal.SIGINT)
            except ProcessLookupError:
                pass
        super().stop(timeout)


def _find_bindir() -> Path:
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        result = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        if result.returncode == 0:
            candidates.append(Path(result.stdout.strip()))
    versioned = Path("/usr/lib/postgresql").glob("*/bin")
    candidates += sorted(versioned, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0, reverse=True)
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "postgres").is_file():
            return bindir
    raise ProcessFailedError("no PostgreSQL server binaries (initdb, postgres) found; install them or pass a URL")


def _server_owner() -> pwd.struct_passwd | None:
    """The account the server must run as: `postgres` when we are root (it refuses root), else ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SUPERUSER)
    except KeyError:
        raise ProcessFailedError("running as root needs a 'postgres' OS user to run the server as") from None


def _owned_dir(directory: Path, owner: pwd.struct_passwd | None) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    if owner is not None:
        os.chown(directory, owner.pw_uid, owner.pw_gid)
    directory.chmod(0o700)


def _as_owner(argv: list[str], owner: pwd.struct_passwd | None) -> list[str]:
    if owner is None:
        return argv
    # setpriv execs in place, so the server stays the process-group leader that ManagedProcess signals
    return ["setpriv", f"--reuid={owner.pw_uid}", f"--regid={owner.pw_gid}", "--init-groups", "--", *argv]


def _initdb(bindir: Path, data_dir: Path, owner: pwd.struct_passwd | None, group: ProcessGroup) -> None:
    argv = [
        str(bindir / "initdb"),
        "-D", str(data_dir),
        "-U", SUPERUSER,
        "--auth=trust",
        "--encoding=UTF8",
        "--no-locale",
        "--no-sync",
    ]  # fmt: skip
    returncode, output = group.run(_as_owner(argv, owner), cwd=data_dir)
    if returncode != 0:
        raise ProcessFailedError(f"initdb failed ({returncode}):\n{output}")


def _select_one(url: str) -> None:
    with psycopg.connect(url, connect_timeout=2) as conn:
        conn.execute("SELECT 1")
