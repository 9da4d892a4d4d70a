"""The local runtime builds the events API Gateway and SQS would, and reads responses as API Gateway does."""

from __future__ import annotations

import asyncio
import base64
import json

from devstack.apigateway import HttpApi, Problem, api_gateway_event, lambda_http_result
from devstack.lambda_service import InvocationResult
from devstack.sqs_source import sqs_record
from devstack.template import DEFAULT_ROUTE, HttpRoute, LambdaAuthorizer

ROUTES = [
    HttpRoute("StatusFunction", "GET", "/v1/messages/{message_id}"),
    HttpRoute("StatusFunction", "GET", "/v1/messages/{message_id}/status"),
    HttpRoute("IngestFunction", "POST", "/v1/messages"),
]


def test_routes_match_by_method_and_the_most_specific_path() -> None:
    api = HttpApi(ROUTES)
    assert api.match("GET", "/v1/messages/abc/status") == (ROUTES[1], {"message_id": "abc"})
    assert api.match("GET", "/v1/messages/a%20b") == (ROUTES[0], {"message_id": "a b"})
    assert api.match("POST", "/v1/messages") == (ROUTES[2], {})
    assert api.match("DELETE", "/v1/messages") is None
    assert api.match("GET", "/v1/messages/abc/status/extra") is None


def test_unknown_route_is_a_problem_404() -> None:
    status, headers, body = asyncio.run(HttpApi(ROUTES).handle("GET", "/nope", "", [], b"", "127.0.0.1"))
    assert status == 404
    assert ("content-type", "application/problem+json") in headers
    assert json.loads(body)["status"] == 404


def test_a_known_path_with_another_method_is_a_problem_405_naming_the_allowed_ones() -> None:
    resolved = HttpApi(ROUTES).resolve("DELETE", "/v1/messages/abc")
    assert resolved == Problem(405, "DELETE is not allowed here", (("allow", "GET"),))
    status, headers, body = resolved.response()
    assert (status, json.loads(body)["title"]) == (405, "Method Not Allowed")
    assert ("allow", "GET") in headers


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


class ScriptedFunctions:
    """Stands in for Lambda: records each function's events and answers (or fails) as scripted."""

    def __init__(self, answers: dict[str, object]) -> None:
        self.answers = answers
        self.events: dict[str, list[dict[str, object]]] = {name: [] for name in answers}

    async def invoke(self, function: str, payload: bytes) -> InvocationResult:
        self.events[function].append(json.loads(payload))
        answer = self.answers[function]
        if isinstance(answer, Exception):
            return InvocationResult.error(type(answer).__name__, str(answer))
        return InvocationResult(json.dumps(answer).encode())


def guarded(authorizer_answer: object, identity_headers: tuple[str, ...] = ()) -> tuple[HttpApi, ScriptedFunctions]:
    route = HttpRoute("IdentityFunction", "GET", "/v1/users/{user_id}", "Bearer")
    functions = ScriptedFunctions(
        {"AuthorizerFunction": authorizer_answer, "IdentityFunction": {"statusCode": 200, "body": "ok"}}
    )
    authorizer = LambdaAuthorizer(
        "Bearer", "AuthorizerFunction", identity_headers=identity_headers, simple_responses=True
    )
    return HttpApi([route], functions.invoke, {"Bearer": authorizer}), functions


def handle(api: HttpApi, path: str, headers: list[tuple[str, str]] | None = None) -> tuple[int, bytes]:
    raw_path, _, query = path.partition("?")
    status, _, body = asyncio.run(api.handle("GET", raw_path, query, headers or [], b"", "10.1.1.1"))
    return status, body


def test_the_authorizer_runs_first_and_its_context_reaches_the_function() -> None:
    api, functions = guarded({"isAuthorized": True, "context": {"key_id": "k1", "role": "admin"}})
    assert handle(api, "/v1/users/u1?x=1", [("Authorization", "Bearer t")]) == (200, b"ok")
    (request,) = functions.events["AuthorizerFunction"]
    assert request["type"] == "REQUEST" and request["version"] == "2.0"
    assert request["routeKey"] == "GET /v1/users/{user_id}"
    assert request["headers"] == {"authorization": "Bearer t"}
    assert request["pathParameters"] == {"user_id": "u1"}
    assert "body" not in request
    (event,) = functions.events["IdentityFunction"]
    assert event["requestContext"]["authorizer"] == {"lambda": {"key_id": "k1", "role": "admin"}}  # type: ignore[index]


def test_api_gateways_own_refusals_when_an_authorizer_says_no() -> None:
    api, functions = guarded({"isAuthorized": False})
    assert handle(api, "/v1/users/u1") == (403, b'{"message": "Forbidden"}')
    api, functions = guarded({"isAuthorized": True}, identity_headers=("Authorization",))
    assert handle(api, "/v1/users/u1") == (401, b'{"message": "Unauthorized"}')
    assert functions.events["AuthorizerFunction"] == []  # a missing identity source never reaches the authorizer
    api, functions = guarded(RuntimeError("boom"))
    assert handle(api, "/v1/users/u1") == (500, b'{"message": "Internal Server Error"}')
    assert functions.events["IdentityFunction"] == []
    api, functions = guarded({"isAuthorized": "yes"})  # not a boolean: API Gateway fails the request
    assert handle(api, "/v1/users/u1")[0] == 500


def test_routes_without_an_authorizer_skip_it() -> None:
    functions = ScriptedFunctions({"IngestFunction": {"statusCode": 202, "body": ""}})
    api = HttpApi(ROUTES, functions.invoke)
    status, _, _ = asyncio.run(api.handle("POST", "/v1/messages", "", [], b"", "10.1.1.1"))
    assert status == 202


def test_the_default_route_takes_what_no_other_route_does() -> None:
    fallback = HttpRoute("IngestFunction", "ANY", DEFAULT_ROUTE)
    api = HttpApi([*ROUTES, fallback])
    assert api.match("GET", "/v1/messages/abc") == (ROUTES[0], {"message_id": "abc"})
    assert api.match("DELETE", "/v1/messages") == (fallback, {})
    assert api.match("GET", "/") == (fallback, {})
    event = api_gateway_event("DELETE", "/v1/messages", "", [], b"", "10.0.0.1", fallback, {})
    assert event["routeKey"] == event["requestContext"]["routeKey"] == "$default"
