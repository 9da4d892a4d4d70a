"""Consumes SQS batches and writes down each one: its messages, its process, when it started and ended.

A message body {"fail_first": true} is reported as a batch item failure on its first receive; one with
{"hang_first": true} makes its first invocation run past the function's Timeout.
"""

import json
import os
import time
import uuid
from pathlib import Path


def record(path, data):
    """Whole or not at all: the test polls the folder while batches are written (it once read an empty file)."""
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(data))
    partial.replace(path)


def lambda_handler(event, context):
    started = time.time()
    records = event["Records"]
    folder = Path(os.environ["RECORD_DIR"]) / context.function_name
    folder.mkdir(exist_ok=True)
    first_receive = [r for r in records if r["attributes"]["ApproximateReceiveCount"] == "1"]
    bodies = [json.loads(r["body"]) for r in records]
    if any(b.get("hang_first") for b in bodies) and first_receive:
        record(folder / f"hung-{uuid.uuid4().hex}.json", {"pid": os.getpid()})
        time.sleep(60)
    time.sleep(float(os.environ["BATCH_SECONDS"]))
    failures = [{"itemIdentifier": r["messageId"]} for r in first_receive if json.loads(r["body"]).get("fail_first")]
    batch = {
        "pid": os.getpid(),
        "started": started,
        "ended": time.time(),
        "messages": [
            {
                "body": json.loads(r["body"]),
                "group": r["attributes"].get("MessageGroupId"),
                "receive_count": int(r["attributes"]["ApproximateReceiveCount"]),
                "failed": {"itemIdentifier": r["messageId"]} in failures,
                "source": r["eventSourceARN"],
            }
            for r in records
        ],
    }
    record(folder / f"batch-{uuid.uuid4().hex}.json", batch)
    return {"batchItemFailures": failures}
