"""`make dev`: the whole platform in the foreground until Ctrl-C, then nothing left running."""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from devstack.stack import LocalPlatform, PlatformOptions, say

DEFAULT_PORT = 3000
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main() -> int:
    # SIGTERM, and SIGHUP (its terminal closed), like Ctrl-C: an interrupt wherever the main thread is, start-up
    # included
    for signum in STOP_SIGNALS:
        signal.signal(signum, _interrupt)
    try:
        port = int(os.environ.get("CHAT4ALL_PORT") or DEFAULT_PORT)
    except ValueError:
        print(f"make dev: CHAT4ALL_PORT must be a port number, not {os.environ['CHAT4ALL_PORT']!r}", file=sys.stderr)
        return 2
    platform = LocalPlatform(PlatformOptions(port=port))
    try:
        try:
            platform.start()  # stops what it started before re-raising, an interrupt included
        except KeyboardInterrupt:
            print("make dev: interrupted during start-up; everything it started is stopped", file=sys.stderr)
            return 130
        except Exception as exc:
            print(f"make dev: {exc}", file=sys.stderr)
            return 1
        runtime = platform.runtime
        assert runtime is not None
        print(
            "\nChat4All is running\n"
            f"  API:            {platform.api_url}\n"
            f"  admin API key:  {platform.admin_api_key}\n"
            f"  PostgreSQL:     {platform.urls['postgres']}\n"
            f"  MongoDB:        {platform.urls['mongo']}\n"
            f"  Redis:          {platform.urls['redis']}\n"
            f"  AWS endpoint:   {platform.urls['aws']}\n"
            f"  state:          {platform.options.state_dir.resolve()}\n"
            f"  consumers:      {', '.join(source.function for source in runtime.sqs_sources)}\n"
            f"  schedules:      {', '.join(f'{s.function} every {s.period_seconds} s' for s in runtime.schedules)}\n"
            f"  function logs:  {runtime.log_dir}\n"
            "Ctrl-C stops everything.",
            flush=True,
        )
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
        return 0
    finally:
        # a second Ctrl-C must not cut the stop short and leave servers behind
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        say("stopping ...")
        platform.stop()


if __name__ == "__main__":
    sys.exit(main())
