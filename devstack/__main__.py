"""`make dev`: the whole platform in the foreground until Ctrl-C, then nothing left running."""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

from devstack.stack import LocalPlatform, PlatformOptions


def main() -> int:
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    options = PlatformOptions(port=int(os.environ.get("CHAT4ALL_PORT", "3000")))
    platform = LocalPlatform(options)
    try:
        platform.start()
    except Exception as exc:
        print(f"make dev: {exc}", file=sys.stderr)
        return 1
    runtime = platform.runtime
    assert runtime is not None
    try:
        print(
            "\nChat4All is running\n"
            f"  API:            {platform.api_url}\n"
            f"  admin API key:  {platform.admin_api_key}\n"
            f"  PostgreSQL:     {platform.urls['postgres']}\n"
            f"  MongoDB:        {platform.urls['mongo']}\n"
            f"  Redis:          {platform.urls['redis']}\n"
            f"  AWS endpoint:   {platform.urls['aws']}\n"
            f"  consumers:      {', '.join(source.function for source in runtime.sqs_sources)}\n"
            f"  schedules:      {', '.join(f'{s.function} {s.subscription.expression}' for s in runtime.schedules)}\n"
            f"  function logs:  {runtime.log_dir}\n"
            "Ctrl-C stops everything.",
            flush=True,
        )
        stop.wait()
    finally:
        print("stopping ...", file=sys.stderr, flush=True)
        platform.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
