"""Consumes SQS batches and writes down each one: its messages, its process, when it started and ended.

A message body {"fail_first": true} is reported as a batch item failure on its first receive; one with
{"hang_first": true} makes its first invocation run past the function's Timeout.
"""

import json
import os
import time
import uuid
from pathlib import Path


def lambda_handler(event, context):
    started = time.time()
    records = event["Records"]
    folder = Path(os.environ["RECORD_DIR"]) / context.function_name
    folder.mkdir(exist_ok=True)
    first_receive = [r for r in records if r["attributes"]["ApproximateReceiveCount"] == "1"]
    bodies = [json.loads(r["body"]) for r in records]
    if any(b.get("hang_first") for b in bodies) and first_receive:
        (folder / f"hung-{uuid.uuid4().hex}.json").write_text(json.dumps({"pid": os.getpid()}))
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
    (folder / f"batch-{uuid.uuid4().hex}.json").write_text(json.dumps(batch))
    return {"batchItemFailures": failures}
