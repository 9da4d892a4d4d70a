"""The local runtime builds the events API Gateway and SQS would, and reads responses as API Gateway does."""

from __future__ import annotations

import asyncio
import base64
import json

from devstack.apigateway import HttpApi, Problem, api_gateway_event, lambda_http_result
from devstack.sqs_source import sqs_record
from devstack.template import HttpRoute

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
