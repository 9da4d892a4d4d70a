"""The local runtime builds the events API Gateway and SQS would, and reads responses as API Gateway does."""

from __future__ import annotations

import asyncio
import base64
import json

from devstack.apigateway import HttpApi, api_gateway_event, lambda_http_result
from devstack.lambda_service import InvocationResult
from devstack.sqs_source import sqs_record
from devstack.template import DEFAULT_ROUTE, HttpRoute

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


def test_a_request_no_route_takes_is_api_gateways_own_404() -> None:
    for method, path in (("GET", "/nope"), ("DELETE", "/v1/messages/abc")):
        status, headers, body = asyncio.run(HttpApi(ROUTES).handle(method, path, "", [], b"", "127.0.0.1"))
        assert (status, json.loads(body)) == (404, {"message": "Not Found"})
        assert ("content-type", "application/json") in headers


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


# ------------------------------------------------------------------ integration


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


def answer(function_answer: object) -> tuple[int, bytes]:
    functions = ScriptedFunctions({"IngestFunction": function_answer})
    api = HttpApi(ROUTES, functions.invoke)
    status, _, body = asyncio.run(api.handle("POST", "/v1/messages", "", [], b"{}", "10.1.1.1"))
    assert len(functions.events["IngestFunction"]) == 1
    return status, body


def test_the_functions_answer_is_the_response() -> None:
    assert answer({"statusCode": 202, "body": "accepted"}) == (202, b"accepted")


def test_a_failed_function_or_one_that_answers_no_http_response_is_api_gateways_500() -> None:
    internal_error = (500, b'{"message": "Internal Server Error"}')
    assert answer(RuntimeError("boom")) == internal_error
    assert answer({"statusCode": "not a number"}) == internal_error


def test_no_answer_within_the_integration_timeout_is_api_gateways_503_and_the_function_runs_on() -> None:
    finished = []

    async def slow(function: str, payload: bytes) -> InvocationResult:
        await asyncio.sleep(0.3)
        finished.append(function)
        return InvocationResult(b"{}")

    async def scenario() -> tuple[int, bytes]:
        api = HttpApi(ROUTES, slow, timeout=0.05)
        status, _, body = await api.handle("POST", "/v1/messages", "", [], b"{}", "10.1.1.1")
        assert finished == []
        while not finished:  # the invocation is not cancelled with the request
            await asyncio.sleep(0.01)
        return status, body

    assert asyncio.run(scenario()) == (503, b'{"message": "Service Unavailable"}')


def test_the_default_route_takes_what_no_other_route_does() -> None:
    fallback = HttpRoute("IngestFunction", "ANY", DEFAULT_ROUTE)
    api = HttpApi([*ROUTES, fallback])
    assert api.match("GET", "/v1/messages/abc") == (ROUTES[0], {"message_id": "abc"})
    assert api.match("DELETE", "/v1/messages") == (fallback, {})
    assert api.match("GET", "/") == (fallback, {})
    event = api_gateway_event("DELETE", "/v1/messages", "", [], b"", "10.0.0.1", fallback, {})
    assert event["routeKey"] == event["requestContext"]["routeKey"] == "$default"
