"""Sleeps as long as it is told (its Timeout is 1 s)."""

import os
import time


def lambda_handler(event, context):
    query = event.get("queryStringParameters") or {}
    seconds = float(event.get("sleep", query.get("sleep", 0)))
    time.sleep(seconds)
    answer = {"pid": os.getpid(), "slept": seconds}
    if "routeKey" in event:
        return {"statusCode": 200, "body": str(answer)}
    return answer
