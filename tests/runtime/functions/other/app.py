"""The same as echo, as another function: a request must never reach the wrong one."""

import json
import os
import time

import testlayer

STATE = {"invocations": 0}  # module state: one container's, never another's


def lambda_handler(event, context):
    STATE["invocations"] += 1
    if event.get("large"):
        return {"filler": "x" * int(event["large"]), "end": "the last field"}
    if event.get("raise"):
        raise ValueError(event["raise"])
    sleep = event.get("sleep") or (event.get("queryStringParameters") or {}).get("sleep")
    if sleep:
        time.sleep(float(sleep))
    report = {
        "function": context.function_name,
        "pid": os.getpid(),
        "invocations": STATE["invocations"],
        "request_id": context.aws_request_id,
        "remaining_ms": context.get_remaining_time_in_millis(),
        "memory_mb": context.memory_limit_in_mb,
        "layer": testlayer.GREETING,
        "env": {k: v for k, v in os.environ.items() if k in ("WHO_AM_I", "ONLY_OTHER", "SHARED_SETTING", "RECORD_DIR")}
        | {k: v for k, v in os.environ.items() if k.startswith(("AWS_LAMBDA_", "_HANDLER", "AWS_REGION"))},
        "cwd": os.getcwd(),
        "event": event,
    }
    if "version" in event and "routeKey" in event:  # an API Gateway event: answer over HTTP
        return {"statusCode": 200, "headers": {"content-type": "application/json"}, "body": json.dumps(report)}
    return report
