"""The local runner builds the events API Gateway and SQS would, and reads responses as API Gateway does."""

from __future__ import annotations

import base64
import json

from devstack.runner import HttpApi, api_gateway_event, lambda_http_result, sqs_record
from devstack.template import HttpRoute, LambdaAuthorizer

ROUTES = [
    HttpRoute("StatusFunction", "GET", "/v1/messages/{message_id}"),
    HttpRoute("StatusFunction", "GET", "/v1/messages/{message_id}/status"),
    HttpRoute("IngestFunction", "POST", "/v1/messages"),
]


def test_routes_match_by_method_and_the_most_specific_path() -> None:
    api = HttpApi(ROUTES, {})
    assert api.match("GET", "/v1/messages/abc/status") == (ROUTES[1], {"message_id": "abc"})
    assert api.match("GET", "/v1/messages/a%20b") == (ROUTES[0], {"message_id": "a b"})
    assert api.match("POST", "/v1/messages") == (ROUTES[2], {})
    assert api.match("DELETE", "/v1/messages") is None
    assert api.match("GET", "/v1/messages/abc/status/extra") is None


def test_unknown_route_is_a_problem_404() -> None:
    status, headers, body = HttpApi(ROUTES, {}).handle("GET", "/nope", [], b"", "127.0.0.1")
    assert status == 404
    assert ("content-type", "application/problem+json") in headers
    assert json.loads(body)["status"] == 404


def test_http_api_v2_event() -> None:
    headers = [("Content-Type", "application/json"), ("X-Multi", "a"), ("x-multi", "b"), ("Cookie", "s=1; t=2")]
    event = api_gateway_event(
        "GET", "/v1/messages/m1", "a=1&a=2&b=", headers, b"", "10.0.0.9", ROUTES[0], {"message_id": "m1"}
    )
    assert event["version"] == "2.0"
    assert event["routeKey"] == "GET /v1/messages/{message_id}"
    assert event["headers"] == {"content-type": "application/json", "x-multi": "a,b"}
    assert event["cookies"] == ["s=1", "t=2"]
    assert event["queryStringParameters"] == {"a": "1,2", "b": ""}
    assert event["pathParameters"] == {"message_id": "m1"}
    assert event["requestContext"]["http"] == {
        "method": "GET",
        "path": "/v1/messages/m1",
        "protocol": "HTTP/1.1",
        "sourceIp": "10.0.0.9",
        "userAgent": "",
    }
    assert event["isBase64Encoded"] is False
    assert "body" not in event


def test_binary_bodies_are_base64_and_text_bodies_are_kept_byte_exact() -> None:
    raw = b'{"caf\xc3\xa9": 1}'
    text = api_gateway_event(
        "POST", "/v1/messages", "", [("content-type", "application/json")], raw, "1.1.1.1", ROUTES[2], {}
    )
    assert (text["body"].encode(), text["isBase64Encoded"]) == (raw, False)
    blob = api_gateway_event(
        "POST", "/v1/messages", "", [("content-type", "image/png")], b"\x89PNG", "1.1.1.1", ROUTES[2], {}
    )
    assert (base64.b64decode(blob["body"]), blob["isBase64Encoded"]) == (b"\x89PNG", True)
    invalid = api_gateway_event(
        "POST", "/v1/messages", "", [("content-type", "application/json")], b"\xff", "1.1.1.1", ROUTES[2], {}
    )
    assert invalid["isBase64Encoded"] is True


def test_payload_v2_responses() -> None:
    status, headers, body = lambda_http_result(
        {"statusCode": 201, "headers": {"Location": "/x"}, "cookies": ["a=b"], "body": '{"ok":true}'}
    )
    assert (status, body) == (201, b'{"ok":true}')
    assert ("Location", "/x") in headers and ("set-cookie", "a=b") in headers
    assert (
        lambda_http_result({"statusCode": 200, "body": base64.b64encode(b"\x00").decode(), "isBase64Encoded": True})[2]
        == b"\x00"
    )
    # a bare object is served as JSON, as HTTP APIs do for payload 2.0
    assert lambda_http_result({"message_id": "m"}) == (
        200,
        [("content-type", "application/json")],
        b'{"message_id": "m"}',
    )


def test_sqs_records_carry_fifo_attributes() -> None:
    message = {
        "MessageId": "id-1",
        "ReceiptHandle": "rh",
        "Body": '{"message_id": "m"}',
        "Attributes": {"MessageGroupId": "conv-1", "ApproximateReceiveCount": "2", "SequenceNumber": "18"},
        "MessageAttributes": {"reason": {"StringValue": "x", "DataType": "String"}},
    }
    record = sqs_record(message, "arn:aws:sqs:us-east-1:000000000000:chat4all-route.fifo")
    assert record["attributes"]["MessageGroupId"] == "conv-1"
    assert record["eventSource"] == "aws:sqs"
    assert record["messageAttributes"]["reason"]["stringValue"] == "x"
    assert len(record["md5OfBody"]) == 32


# ------------------------------------------------------------------ Lambda authorizer


class ScriptedFunction:
    """Stands in for a LocalFunction: records the events and answers (or raises) as scripted."""

    def __init__(self, answer: object) -> None:
        self.answer = answer
        self.events: list[dict[str, object]] = []

    def invoke(self, event: dict[str, object]) -> object:
        self.events.append(event)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def guarded(
    authorizer_answer: object, identity_headers: tuple[str, ...] = ()
) -> tuple[HttpApi, ScriptedFunction, ScriptedFunction]:
    route = HttpRoute("IdentityFunction", "GET", "/v1/users/{user_id}", "Bearer")
    authorizer = ScriptedFunction(authorizer_answer)
    target = ScriptedFunction({"statusCode": 200, "body": "ok"})
    api = HttpApi(
        [route],
        {"AuthorizerFunction": authorizer, "IdentityFunction": target},  # type: ignore[dict-item]
        {"Bearer": LambdaAuthorizer("Bearer", "AuthorizerFunction", identity_headers, simple_responses=True)},
    )
    return api, authorizer, target


def test_the_authorizer_runs_first_and_its_context_reaches_the_function() -> None:
    api, authorizer, target = guarded({"isAuthorized": True, "context": {"key_id": "k1", "role": "admin"}})
    status, _, body = api.handle("GET", "/v1/users/u1?x=1", [("Authorization", "Bearer t")], b"", "10.1.1.1")
    assert (status, body) == (200, b"ok")
    (request,) = authorizer.events
    assert request["type"] == "REQUEST" and request["version"] == "2.0"
    assert request["routeKey"] == "GET /v1/users/{user_id}"
    assert request["headers"] == {"authorization": "Bearer t"}
    assert request["pathParameters"] == {"user_id": "u1"}
    assert target.events[0]["requestContext"]["authorizer"] == {"lambda": {"key_id": "k1", "role": "admin"}}  # type: ignore[index]


def test_api_gateways_own_refusals_when_an_authorizer_says_no() -> None:
    api, _, target = guarded({"isAuthorized": False})
    assert api.handle("GET", "/v1/users/u1", [], b"", "10.1.1.1")[:1] == (403,)
    api, authorizer, _ = guarded({"isAuthorized": True}, identity_headers=("authorization",))
    status, _, body = api.handle("GET", "/v1/users/u1", [], b"", "10.1.1.1")
    assert (status, json.loads(body)) == (401, {"message": "Unauthorized"})
    assert authorizer.events == []  # a missing identity source never reaches the authorizer
    api, _, _ = guarded(RuntimeError("boom"))
    assert api.handle("GET", "/v1/users/u1", [], b"", "10.1.1.1")[0] == 500
    assert target.events == []


def test_routes_without_an_authorizer_skip_it() -> None:
    api = HttpApi(ROUTES, {"IngestFunction": ScriptedFunction({"statusCode": 202, "body": ""})})  # type: ignore[dict-item]
    assert api.handle("POST", "/v1/messages", [], b"", "10.1.1.1")[0] == 202
