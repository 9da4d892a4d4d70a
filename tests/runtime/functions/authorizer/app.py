"""A Lambda authorizer for tests: the token says what to answer; every invocation leaves a line in a file.

`allow-<name>` authorizes with context {"user": <name>}; `deny` refuses; `fail` raises. With an IAM policy
(the PolicyAuth authorizer, token in the query string), `allow-...` allows GET /policy/* and denies the rest.
"""

import json
import os
from pathlib import Path


def lambda_handler(event, context):
    token = event["identitySource"][0] if event.get("identitySource") else ""
    with (Path(os.environ["RECORD_DIR"]) / "authorizer.log").open("a") as log:
        log.write(json.dumps({"token": token, "routeArn": event["routeArn"], "type": event["type"]}) + "\n")
    if token == "fail":
        raise RuntimeError("the authorizer broke")
    allowed = token.startswith("allow-")
    user = token.removeprefix("allow-")
    if "token" in (event.get("queryStringParameters") or {}):  # PolicyAuth: answer with an IAM policy
        api = event["routeArn"].split("/", 1)[0]
        return {
            "principalId": user,
            "policyDocument": {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Action": "execute-api:Invoke",
                        "Effect": "Allow" if allowed else "Deny",
                        "Resource": f"{api}/*/GET/policy/*",
                    },
                    {"Action": "execute-api:Invoke", "Effect": "Deny", "Resource": f"{api}/*/GET/policy/forbidden"},
                ],
            },
            "context": {"user": user},
        }
    return {"isAuthorized": allowed, "context": {"user": user, "route": event["routeKey"]}}
