"""Exits in the middle of an invocation when told to, as a process that crashes would."""

import os


def lambda_handler(event, context):
    query = event.get("queryStringParameters") or {}
    if event.get("crash") or query.get("crash"):
        os._exit(7)
    answer = {"pid": os.getpid()}
    if "routeKey" in event:
        return {"statusCode": 200, "body": str(answer)}
    return answer
