"""Writes each scheduled event it gets to a file of its own."""

import json
import os
import uuid
from pathlib import Path


def lambda_handler(event, context):
    (Path(os.environ["RECORD_DIR"]) / f"scheduled-{uuid.uuid4().hex}.json").write_text(json.dumps(event))
    return {"ok": True}
