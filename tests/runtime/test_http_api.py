"""The HTTP API in front of the runtime: events, concurrency, HTTP/1.1 edge cases, API Gateway's own answers."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.runtime.conftest import HTTP_TIMEOUT_SECONDS

if TYPE_CHECKING:
    from collections.abc import Iterator

    from devstack.runtime import LocalRuntime


def assert_gateway_message(status: int, headers: Any, body: bytes, expected: int, message: str) -> None:
    """API Gateway's own answer, as AWS gives it: {"message": ...}, not problem JSON."""
    assert status == expected, body
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {"message": message}


@pytest.fixture
def client(runtime: LocalRuntime) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=runtime.api_url, timeout=30) as http:
        yield http


def raw_exchange(runtime: LocalRuntime, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are; read one response (its head, then Content-Length bytes of body)."""
    address = urlsplit(runtime.api_url)
    with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
        sock.sendall(request)
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)
            assert chunk, f"the connection closed without a response: {received!r}"
            received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        while len(body) < int(headers["content-length"]):
            chunk = sock.recv(65536)
            assert chunk, "the connection closed in the middle of the body"
            body += chunk
    return int(lines[0].split()[1]), headers, body


def test_the_event_is_api_gateway_payload_2(client: httpx.Client) -> None:
    response = client.post("/echo?a=1&a=2", content=b'{"hello": "world"}', headers={"content-type": "application/json"})
    assert response.status_code == 200
    event = response.json()["event"]
    assert event["version"] == "2.0"
    assert event["routeKey"] == "POST /echo"
    assert event["body"] == '{"hello": "world"}'
    assert event["queryStringParameters"] == {"a": "1,2"}
    assert event["requestContext"]["http"]["method"] == "POST"
    item = client.get("/echo/caf%C3%A9").json()["event"]
    assert item["pathParameters"] == {"item": "café"}
    assert item["rawPath"] == "/echo/caf%C3%A9"


def test_concurrent_requests_to_different_functions_each_get_their_own_body(runtime: LocalRuntime) -> None:
    # GIVEN 48 clients that start together, half on one function and half on another
    clients = 48
    barrier = threading.Barrier(clients)
    answers: dict[int, tuple[str, int, dict[str, Any]]] = {}

    def call(n: int) -> None:
        path = "/echo" if n % 2 else "/other"
        body = json.dumps({"n": n, "token": uuid.uuid4().hex, "padding": "x" * (n * 37)})
        with httpx.Client(base_url=runtime.api_url, timeout=60) as http:
            barrier.wait()
            response = http.post(path, content=body, headers={"content-type": "application/json", "x-n": str(n)})
        answers[n] = (body, response.status_code, response.json())

    threads = [threading.Thread(target=call, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    # THEN every one got its own body back, from the function it called, with its own headers
    assert len(answers) == clients
    for n, (sent, status, report) in answers.items():
        assert status == 200
        assert report["event"]["body"] == sent
        assert report["event"]["headers"]["x-n"] == str(n)
        assert report["function"] == ("EchoFunction" if n % 2 else "OtherFunction")


def test_keep_alive_connections_are_reused_for_many_requests(runtime: LocalRuntime) -> None:
    address = urlsplit(runtime.api_url)
    connection = http.client.HTTPConnection(address.hostname or "", address.port, timeout=10)
    try:
        sockets = set()
        for n in range(20):
            body = json.dumps({"n": n}).encode()
            connection.request("POST", "/echo", body=body, headers={"content-type": "application/json"})
            response = connection.getresponse()
            assert response.status == 200
            assert json.loads(response.read())["event"]["body"] == body.decode()
            assert response.getheader("connection", "keep-alive").lower() != "close"
            sockets.add(id(connection.sock))
        assert len(sockets) == 1  # one connection served all twenty
    finally:
        connection.close()


def test_a_chunked_request_body_arrives_whole(runtime: LocalRuntime) -> None:
    address = urlsplit(runtime.api_url)
    connection = http.client.HTTPConnection(address.hostname or "", address.port, timeout=10)
    parts = [b'{"parts": [', b'"one", ', b'"two"', b"]}"]
    try:
        connection.request(
            "POST", "/echo", body=iter(parts), headers={"content-type": "application/json"}, encode_chunked=True
        )
        response = connection.getresponse()
        assert response.status == 200
        event = json.loads(response.read())["event"]
    finally:
        connection.close()
    assert event["body"] == b"".join(parts).decode()
    assert "transfer-encoding" in event["headers"]


@pytest.mark.parametrize(
    "request_head",
    [
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: twelve\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET /echo/x HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n",
        b"G(T /echo/x HTTP/1.1\r\nHost: x\r\n\r\n",
    ],
)
def test_malformed_requests_are_400_and_reach_no_function(runtime: LocalRuntime, request_head: bytes) -> None:
    status, _, _ = raw_exchange(runtime, request_head)
    assert status == 400


def test_an_oversized_body_is_413_before_it_is_read(runtime: LocalRuntime) -> None:
    head = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10485761\r\n\r\n"
    status, headers, body = raw_exchange(runtime, head)
    assert_gateway_message(status, headers, body, 413, "Request Entity Too Large")
    assert headers["connection"] == "close"


def test_a_request_no_route_takes_is_404_whatever_its_method(client: httpx.Client) -> None:
    # this API has no $default route; an HTTP API has no 405 of its own either
    for method, path in (("GET", "/nothing/here"), ("GET", "/echo"), ("DELETE", "/echo/x"), ("PURGE", "/echo")):
        response = client.request(method, path)
        assert_gateway_message(response.status_code, response.headers, response.content, 404, "Not Found")


def test_a_function_that_fails_or_times_out_is_500(client: httpx.Client) -> None:
    slow = client.get("/sleepy", params={"sleep": "5"})  # past the function's own Timeout (1 s)
    assert_gateway_message(slow.status_code, slow.headers, slow.content, 500, "Internal Server Error")
    assert client.get("/sleepy", params={"sleep": "0"}).status_code == 200
    crash = client.get("/crash", params={"crash": "1"})
    assert_gateway_message(crash.status_code, crash.headers, crash.content, 500, "Internal Server Error")
    assert client.get("/crash").status_code == 200


def test_no_answer_within_the_integration_timeout_is_503(runtime: LocalRuntime, client: httpx.Client) -> None:
    # the runtime's HTTP API waits HTTP_TIMEOUT_SECONDS (API Gateway: 30 s); the function's Timeout is 10 s
    slow = client.get("/echo/x", params={"sleep": str(HTTP_TIMEOUT_SECONDS + 1)})
    assert_gateway_message(slow.status_code, slow.headers, slow.content, 503, "Service Unavailable")
