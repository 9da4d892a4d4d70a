"""Writes each scheduled event it gets to a file of its own."""

import json
import os
import uuid
from pathlib import Path


def lambda_handler(event, context):
    # whole or not at all: the test polls the folder while events are written
    partial = Path(os.environ["RECORD_DIR"]) / f"scheduled-{uuid.uuid4().hex}.partial"
    partial.write_text(json.dumps(event))
    partial.replace(partial.with_suffix(".json"))
    return {"ok": True}
