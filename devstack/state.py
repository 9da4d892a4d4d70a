"""Where the local stack keeps its state, who may use it, and how to wipe it.

Everything lives in one state dir (CHAT4ALL_STATE_DIR, default `.devstack/` in the checkout), with one
exception: PostgreSQL refuses to run as root, so as root it runs as the `postgres` OS user, which cannot
enter a private checkout (`mktemp -d` and root's home are 0700). Its files then live in a directory of
their own under SHARED_ROOT, named after the state dir, so each checkout keeps its own data across runs.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import stat
import sys
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    import pwd

# world-searchable and kept across reboots (unlike /tmp on many systems)
SHARED_ROOT = Path("/var/tmp/chat4all")  # noqa: S108 - ownership checked before use (_owned_by_us)
LOCK_FILE = ".lock"


class StateInUseError(RuntimeError):
    """Another stack is running on this state dir."""


def external_home(state_dir: Path) -> Path:
    """The per-state-dir directory under SHARED_ROOT for servers that cannot reach the state dir itself."""
    digest = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:16]
    return SHARED_ROOT / digest


def can_reach(directory: Path, account: pwd.struct_passwd) -> bool:
    """Whether `account` may traverse every directory from / down to and including `directory`."""
    groups = set(os.getgrouplist(account.pw_name, account.pw_gid))
    for each in (directory, *directory.parents):
        info = each.stat()
        if info.st_uid == account.pw_uid:
            bit = stat.S_IXUSR
        elif info.st_gid in groups:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not info.st_mode & bit:
            return False
    return True


def server_home(state_dir: Path, account: pwd.struct_passwd | None) -> Path:
    """Where a server running as `account` (None: as ourselves) keeps its files for this state dir.

    The state dir itself when the account can get there (opening the state dir itself for search if that
    is all it takes); else external_home(state_dir), which the caller then owns through the server's account.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    state_dir = state_dir.resolve()
    if account is None:
        return state_dir
    if can_reach(state_dir.parent, account):
        if not can_reach(state_dir, account):
            state_dir.chmod(state_dir.stat().st_mode | stat.S_IXOTH)
        return state_dir
    home = external_home(state_dir)
    for directory in (SHARED_ROOT, home):
        directory.mkdir(exist_ok=True)
        _owned_by_us(directory)
        directory.chmod(0o711)  # searchable, not listable
    (state_dir / "external-state").write_text(f"{home}\n")  # for people looking for the data
    return home


def _owned_by_us(directory: Path) -> None:
    """Refuse a directory in a world-writable place that someone else made (or a link planted there)."""
    info = directory.lstat()
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise PermissionError(f"{directory} is not a directory of this user; remove it or set CHAT4ALL_STATE_DIR")


class StateLock:
    """An exclusive lock on a state dir for as long as a stack runs on it."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_FILE
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise StateInUseError(
                f"another Chat4All stack ({holder}) is running on {self.path.parent}; stop it first"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def wipe_state(state_dir: Path) -> list[Path]:
    """Remove the state dir and its external home; what was removed. Refuses while a stack runs on it."""
    removed = []
    if state_dir.exists():
        lock = StateLock(state_dir)
        lock.acquire()
        lock.release()
    for path in (external_home(state_dir), state_dir):
        if path.exists():
            shutil.rmtree(path)
            removed.append(path)
    return removed


def main() -> int:
    """`make clean`: wipe the local state (the same dir `make dev` uses)."""
    from devstack.processes import STATE_DIR

    try:
        removed = wipe_state(STATE_DIR)
    except StateInUseError as exc:
        print(f"make clean: {exc}", file=sys.stderr)
        return 1
    for path in removed:
        print(f"removed {path}")
    if not removed:
        print(f"nothing to remove ({STATE_DIR} does not exist)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
