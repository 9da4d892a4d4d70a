"""`make redrive`: dead-lettered records of the running `make dev` stack back to their queues.

Reads where the stack's queues are from its state dir (running.json, written while it runs) and runs
`python -m chat4all.redrive` with them; arguments are passed on (--route, --status).
"""

from __future__ import annotations

import json
import os
import sys

from devstack.processes import STATE_DIR
from devstack.stack import RUNNING_FILE, _ensure_layers_importable


def main(argv: list[str] | None = None) -> int:
    running = STATE_DIR / RUNNING_FILE
    if not running.is_file():
        print(f"make redrive: no running stack on {STATE_DIR} (start it with `make dev`)", file=sys.stderr)
        return 1
    environment = json.loads(running.read_text())["environment"]
    _ensure_layers_importable()
    from chat4all.redrive import main as redrive

    return redrive(sys.argv[1:] if argv is None else argv, {**os.environ, **environment})


if __name__ == "__main__":
    sys.exit(main())
