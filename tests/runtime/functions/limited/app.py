"""Holds each invocation until the test releases it, leaving a mark when one starts."""

import os
import time
from pathlib import Path


def lambda_handler(event, context):
    folder = Path(event["folder"])
    (folder / f"{context.aws_request_id}.entered").write_text(str(os.getpid()))
    deadline = time.monotonic() + 50
    while not (folder / "release").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return {"pid": os.getpid()}
