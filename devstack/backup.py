"""`make backup` / `make restore BACKUP=<dir> [FORCE=1]`: both databases of the running `make dev` stack.

Reads where the stack's databases and LocalStack are from its state dir (running.json, written while it runs);
without a running stack, DATABASE_URL (the owner) and MONGODB_URI name them. The backup carries the state
dir's kms-keys.json (the local KMS key material); the restore creates those keys in LocalStack again and
re-encrypts the channels' credentials under the running stack's own key. See chat4all.ops.backup/restore.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from devstack.localstack import KMS_KEYS_FILE
from devstack.processes import STATE_DIR
from devstack.stack import REPO_ROOT, RUNNING_FILE, _ensure_layers_importable


def _stack(environ: dict[str, str]) -> dict[str, str]:
    """The running stack's settings (databases, AWS endpoint, key alias), else the environment's."""
    running = STATE_DIR / RUNNING_FILE
    found: dict[str, str] = {}
    if running.is_file():
        info = json.loads(running.read_text())
        found |= info.get("databases", {})
        if endpoint := info.get("environment", {}).get("AWS_ENDPOINT_URL"):
            found["AWS_ENDPOINT_URL"] = endpoint
        if stack_name := info.get("stack_name"):
            found["KEY_ALIAS"] = f"alias/{stack_name}-credentials"
    for name in ("DATABASE_URL", "MONGODB_URI"):
        if environ.get(name):
            found[name] = environ[name]
    return found


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    environ = dict(os.environ)
    stack = _stack(environ)
    if not stack.get("DATABASE_URL") or not stack.get("MONGODB_URI"):
        print(
            f"no running stack on {STATE_DIR} (start it with `make dev`) and no DATABASE_URL/MONGODB_URI given",
            file=sys.stderr,
        )
        return 1
    _ensure_layers_importable()
    env = {**environ, **stack}
    if args[:1] == ["restore"]:
        from chat4all.ops.restore import main as restore

        extra = []
        if stack.get("AWS_ENDPOINT_URL") and stack.get("KEY_ALIAS"):
            extra = ["--aws-endpoint-url", stack["AWS_ENDPOINT_URL"], "--key-alias", stack["KEY_ALIAS"]]
        return restore([*args[1:], *extra], env)
    from chat4all.ops.backup import main as backup

    keys = STATE_DIR / KMS_KEYS_FILE
    out = Path(environ.get("CHAT4ALL_BACKUP_DIR") or REPO_ROOT / "backups")
    return backup([*args, "--out", str(out), *(["--kms-keys", str(keys)] if keys.is_file() else [])], env)


if __name__ == "__main__":
    sys.exit(main())
