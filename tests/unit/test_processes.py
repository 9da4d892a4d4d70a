"""Starting a server: it must become ready, or be stopped with its log in the error."""

from __future__ import annotations

import socket
import sys
import time
from typing import TYPE_CHECKING

import pytest

from devstack.processes import (
    ManagedProcess,
    ProcessFailedError,
    free_port,
    process_tree_owns_port,
    start_until_ready,
)

if TYPE_CHECKING:
    from pathlib import Path


def test_a_server_that_exits_fails_with_its_log(tmp_path: Path) -> None:
    process = ManagedProcess("broken", ["sh", "-c", "echo cannot bind; exit 3"], log_path=tmp_path / "broken.log")

    def probe() -> None:
        raise ConnectionRefusedError("nothing listens")

    with pytest.raises(ProcessFailedError, match="cannot bind"):
        start_until_ready(process, probe, timeout=5)
    assert not process.is_running()


def test_a_server_that_never_answers_is_stopped(tmp_path: Path) -> None:
    process = ManagedProcess("silent", ["sleep", "30"], log_path=tmp_path / "silent.log")

    def probe() -> None:
        raise ConnectionRefusedError("nothing listens")

    with pytest.raises(ProcessFailedError, match="nothing listens"):
        start_until_ready(process, probe, timeout=0.5)
    assert not process.is_running()


def test_a_ready_server_keeps_running(tmp_path: Path) -> None:
    process = ManagedProcess("fine", ["sleep", "30"], log_path=tmp_path / "fine.log")
    attempts: list[int] = []

    def probe() -> None:
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionRefusedError("starting")

    try:
        start_until_ready(process, probe, timeout=5, interval=0.01)
        assert process.is_running()
        assert len(attempts) == 3
    finally:
        process.stop()
    assert not process.is_running()


def _listener(tmp_path: Path, port: int = 0) -> tuple[ManagedProcess, int]:
    """A child process listening (SO_REUSEPORT, as LocalStack does) on `port`; it and the port it got."""
    log = tmp_path / f"listener-{port}.log"
    listener = ManagedProcess("listener", [sys.executable, "-c", LISTEN_AND_WAIT, str(port)], log_path=log)
    listener.start()
    deadline = time.monotonic() + 10
    while not log.read_text().strip():
        assert time.monotonic() < deadline, "the listener never printed its port"
        time.sleep(0.05)
    return listener, int(log.read_text().split()[0])


def test_a_port_counts_as_ours_only_when_our_process_listens_on_it(tmp_path: Path) -> None:
    with socket.socket() as someone_else:
        someone_else.bind(("127.0.0.1", 0))
        someone_else.listen()
        taken = someone_else.getsockname()[1]
        listener, own = _listener(tmp_path)
        try:
            assert listener.pid is not None
            assert process_tree_owns_port(listener.pid, own)
            assert not process_tree_owns_port(listener.pid, taken)
        finally:
            listener.stop()


def test_a_port_shared_through_so_reuseport_is_not_ours(tmp_path: Path) -> None:
    with socket.socket() as other_stack:
        other_stack.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other_stack.bind(("127.0.0.1", 0))
        other_stack.listen()
        shared = other_stack.getsockname()[1]
        listener, port = _listener(tmp_path, shared)
        try:
            assert port == shared
            assert listener.pid is not None
            assert not process_tree_owns_port(listener.pid, shared)
        finally:
            listener.stop()


def test_a_preferred_port_held_by_an_outgoing_connection_is_not_handed_out() -> None:
    # CI saw PostgreSQL fail three times on its preferred port: nothing listened there, but the local end of
    # a client connection held it (the preferred ports lie in the ephemeral range)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with socket.socket() as client:
            client.connect(server.getsockname())
            held = client.getsockname()[1]
            with socket.socket() as would_be_server:
                with pytest.raises(OSError):
                    would_be_server.bind(("127.0.0.1", held))
            assert free_port(held) != held
        assert free_port(server.getsockname()[1]) != server.getsockname()[1]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        unused = probe.getsockname()[1]
    assert free_port(unused) == unused


LISTEN_AND_WAIT = """
import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen()
print(s.getsockname()[1], flush=True)
time.sleep(30)
"""
