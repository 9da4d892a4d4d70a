"""`make redrive`, `make backup`, `make restore BACKUP=<dir> [FORCE=1]`: chat4all's operations tools run
against the running `make dev` stack.

Where its queues, databases and LocalStack are comes from its state dir (running.json, written while it runs);
without a running stack, backup and restore take DATABASE_URL (the owner) and MONGODB_URI. The backup carries
the state dir's kms-keys.json (the local KMS key material); the restore creates those keys in LocalStack again
and re-encrypts the channels' credentials under the running stack's own key (chat4all.ops.backup/restore).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from devstack.localstack import KMS_KEYS_FILE
from devstack.processes import STATE_DIR
from devstack.stack import REPO_ROOT, RUNNING_FILE, _ensure_layers_importable


def main(argv: list[str] | None = None) -> int:
    tool, *args = sys.argv[1:] if argv is None else argv
    running = STATE_DIR / RUNNING_FILE
    stack = json.loads(running.read_text()) if running.is_file() else {}
    # the databases a user names win over the stack's
    env = stack.get("databases", {}) | {**os.environ, **stack.get("environment", {})}
    if not stack and (tool == "redrive" or not env.get("DATABASE_URL") or not env.get("MONGODB_URI")):
        print(f"make {tool}: no running stack on {STATE_DIR} (start it with `make dev`)", file=sys.stderr)
        return 1
    _ensure_layers_importable()
    if tool == "redrive":  # --route / --status
        from chat4all.redrive import main as redrive

        return redrive(args, env)
    if tool == "restore":
        from chat4all.ops.restore import main as restore

        if stack:
            alias = f"alias/{stack['stack_name']}-credentials"
            args += ["--aws-endpoint-url", env["AWS_ENDPOINT_URL"], "--key-alias", alias]
        return restore(args, env)
    from chat4all.ops.backup import main as backup

    keys = STATE_DIR / KMS_KEYS_FILE
    out = Path(env.get("CHAT4ALL_BACKUP_DIR") or REPO_ROOT / "backups")
    return backup([*args, "--out", str(out), *(["--kms-keys", str(keys)] if keys.is_file() else [])], env)


if __name__ == "__main__":
    sys.exit(main())
