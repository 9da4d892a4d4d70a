"""The signed JSON client for SQS, EventBridge and KMS, against a local HTTP server that answers as AWS does."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import pytest

from chat4all.adapters.aws import SqsOutboundQueue
from chat4all.adapters.aws_api import AwsApiError, AwsJsonApi
from chat4all.domain.errors import DependencyUnavailableError
from tests.support.json_reply import send_json

if TYPE_CHECKING:
    from collections.abc import Iterator


class FakeAws:
    """Answers each request with the next scripted (status, body); records what it was sent."""

    def __init__(self, *, keep_alive: bool = False) -> None:
        self.script: list[tuple[int, dict[str, Any]]] = []
        self.drop_after_answer = False  # close a kept-alive connection without saying so, as an idle timeout does
        self.requests: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.client_ports: list[int] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if keep_alive else "HTTP/1.0"

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append((dict(self.headers.items()), body))
                fake.client_ports.append(self.client_address[1])
                status, answer = fake.script.pop(0) if fake.script else (200, {})
                send_json(self, status, answer, content_type="application/x-amz-json-1.0")
                if fake.drop_after_answer:
                    self.close_connection = True

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAws]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "session-token")
    fake = FakeAws()
    yield fake
    fake.server.shutdown()


def test_a_call_is_a_signed_json_post_naming_its_operation(aws: FakeAws) -> None:
    aws.script = [(200, {"MessageId": "m-1"})]
    api = AwsJsonApi("sqs", region="eu-west-1", endpoint_url=aws.url)
    assert api.call("SendMessage", {"QueueUrl": "q", "MessageBody": "b"}) == {"MessageId": "m-1"}
    headers, body = aws.requests[0]
    assert body == {"QueueUrl": "q", "MessageBody": "b"}
    assert headers["X-Amz-Target"] == "AmazonSQS.SendMessage"
    assert headers["Content-Type"] == "application/x-amz-json-1.0"
    assert headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    assert "/eu-west-1/sqs/aws4_request" in headers["Authorization"]
    assert headers["X-Amz-Security-Token"] == "session-token"


def test_throttling_and_server_errors_are_tried_again_and_a_refusal_is_not(aws: FakeAws) -> None:
    api = AwsJsonApi("events", region="us-east-1", endpoint_url=aws.url)
    aws.script = [(400, {"__type": "ThrottlingException"}), (500, {}), (200, {"FailedEntryCount": 0})]
    assert api.call("PutEvents", {"Entries": []}) == {"FailedEntryCount": 0}
    assert len(aws.requests) == 3
    aws.script = [(400, {"__type": "com.amazonaws.sqs#QueueDoesNotExist", "message": "no such queue"})]
    with pytest.raises(AwsApiError) as refused:
        api.call("PutEvents", {"Entries": []})
    assert (refused.value.code, refused.value.message, refused.value.status) == (
        "QueueDoesNotExist",
        "no such queue",
        400,
    )
    assert len(aws.requests) == 4


def test_a_dependency_that_keeps_failing_or_cannot_be_reached_is_unavailable(aws: FakeAws) -> None:
    api = AwsJsonApi("sqs", region="us-east-1", endpoint_url=aws.url, attempts=2)
    aws.script = [(503, {}), (503, {})]
    with pytest.raises(DependencyUnavailableError):
        SqsOutboundQueue(api, "q").enqueue("m", "c")
    assert len(aws.requests) == 2
    nowhere = AwsJsonApi("sqs", region="us-east-1", endpoint_url="http://127.0.0.1:9", attempts=1)
    with pytest.raises(DependencyUnavailableError) as down:
        SqsOutboundQueue(nowhere, "q").enqueue("m", "c")
    # what the caller may show names no host or port
    assert "127.0.0.1" not in str(down.value) and "9" not in str(down.value)


def test_a_kept_alive_connection_the_server_closed_is_replaced_within_the_same_try(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    aws = FakeAws(keep_alive=True)
    try:
        api = AwsJsonApi("sqs", region="us-east-1", endpoint_url=aws.url, attempts=1)
        api.call("GetQueueAttributes", {"QueueUrl": "q"})
        api.call("GetQueueAttributes", {"QueueUrl": "q"})
        assert len(set(aws.client_ports)) == 1  # kept alive
        aws.drop_after_answer = True
        api.call("GetQueueAttributes", {"QueueUrl": "q"})
        aws.drop_after_answer = False
        # the next call finds its connection closed: a new one, no error, no retry pause
        assert api.call("GetQueueAttributes", {"QueueUrl": "q"}) == {}
        assert len(aws.requests) == 4 and len(set(aws.client_ports)) == 2
    finally:
        aws.server.shutdown()
