"""AWS's JSON-protocol APIs (SQS, EventBridge, KMS) called directly: botocore's SigV4 signer over http.client.

boto3 runs every call through its event hooks, parameter validation, endpoint rules and response parsing, a
large share of the message path's CPU. These APIs speak plain JSON (`X-Amz-Target: <prefix>.<Operation>`), so
one signed POST on a kept-alive connection does the same work. The standard library's HTTP client, not httpx:
it costs the caller the least CPU per call (`python -m bench.aws_calls`; the figures: docs/BENCHMARKS.md,
"AWS API calls").
Credentials come from botocore's chain (the Lambda environment's role credentials, refreshed as they expire).
"""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
import urllib.parse
from typing import TYPE_CHECKING, Any

import botocore.session
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest

if TYPE_CHECKING:
    from botocore.credentials import Credentials

# service name -> (X-Amz-Target prefix, JSON protocol version)
PROTOCOLS = {
    "sqs": ("AmazonSQS", "1.0"),
    "events": ("AWSEvents", "1.1"),
    "kms": ("TrentService", "1.1"),
}
# errors worth another try (boto3's "standard" retry mode retries the same ones)
RETRYABLE_CODES = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "RequestThrottled",
        "ServiceUnavailable",
        "InternalFailure",
        "InternalError",
        "KMSInternalException",
    }
)
RETRY_PAUSE_SECONDS = 0.05


class AwsApiError(Exception):
    """A call that did not succeed: AWS's error code (or the transport's failure) and its message."""

    def __init__(self, code: str, message: str, *, status: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status

    @property
    def retryable(self) -> bool:
        return self.status is None or self.status >= 500 or self.code in RETRYABLE_CODES


def resolve_credentials(service: str = "AWS") -> Credentials:
    """botocore's credential chain (environment, role credentials refreshed as they expire), as boto3 would."""
    credentials = botocore.session.get_session().get_credentials()
    if credentials is None:
        raise AwsApiError("NoCredentials", f"no AWS credentials for {service}")
    return credentials


class AwsJsonApi:
    """One AWS JSON API: `call("SendMessage", {...})` returns the parsed answer or raises AwsApiError."""

    def __init__(
        self,
        service: str,
        *,
        region: str,
        endpoint_url: str | None = None,
        connect_timeout: float = 3.0,
        read_timeout: float = 10.0,
        attempts: int = 3,
        credentials: Credentials | None = None,
    ) -> None:
        self.service = service
        self.target_prefix, version = PROTOCOLS[service]
        self.content_type = f"application/x-amz-json-{version}"
        self.url = (endpoint_url or f"https://{service}.{region}.amazonaws.com").rstrip("/") + "/"
        # a container's clients share one resolution (bootstrap passes it): each costs cold start (docs/BENCHMARKS.md,
        # "A container's clients")
        self.credentials = credentials or resolve_credentials(service)
        self.region = region
        self.attempts = attempts
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        parts = urllib.parse.urlsplit(self.url)
        self._connection_type = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        self._host = parts.netloc
        self._path = parts.path or "/"
        self._connection: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()  # one kept-alive connection, one request on it at a time

    def call(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        body = json.dumps(params).encode()
        for attempt in range(1, self.attempts + 1):
            try:
                return self._call_once(operation, body)
            except AwsApiError as exc:
                if attempt == self.attempts or not exc.retryable:
                    raise
            time.sleep(random.uniform(0, RETRY_PAUSE_SECONDS * 2**attempt))  # noqa: S311 - jitter
        raise AssertionError("unreachable")

    def _call_once(self, operation: str, body: bytes) -> dict[str, Any]:
        headers = {"Content-Type": self.content_type, "X-Amz-Target": f"{self.target_prefix}.{operation}"}
        request = AWSRequest(method="POST", url=self.url, data=body, headers=headers)
        # frozen per call: role credentials are refreshed as they near expiry, never mid-signature
        SigV4Auth(self.credentials.get_frozen_credentials(), self.service, self.region).add_auth(request)
        try:
            status, payload = self._post(body, dict(request.headers.items()))
        except (OSError, http.client.HTTPException) as exc:
            raise AwsApiError(type(exc).__name__, f"{self.service} could not be reached") from exc
        try:
            answer: dict[str, Any] = json.loads(payload) if payload else {}
        except ValueError:
            answer = {}
        if status != 200:
            code = str(answer.get("__type") or answer.get("code") or f"HTTP{status}")
            message = str(answer.get("message") or answer.get("Message") or "")
            raise AwsApiError(code.rsplit("#", 1)[-1], message, status=status)
        return answer

    def _post(self, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        with self._lock:
            if self._connection is not None:
                try:
                    return self._exchange(self._connection, body, headers)
                except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                    pass  # the server closed the kept-alive connection while it was idle: once more on a new one
            return self._exchange(self._connect(), body, headers)

    def _connect(self) -> http.client.HTTPConnection:
        connection = self._connection_type(self._host, timeout=self.connect_timeout)
        connection.connect()
        if connection.sock is not None:
            connection.sock.settimeout(self.read_timeout)
        self._connection = connection
        return connection

    def _exchange(
        self, connection: http.client.HTTPConnection, body: bytes, headers: dict[str, str]
    ) -> tuple[int, bytes]:
        try:
            connection.request("POST", self._path, body=body, headers=headers)
            response = connection.getresponse()
            payload = response.read()
        except BaseException:
            connection.close()
            self._connection = None
            raise
        if response.will_close:
            connection.close()
            self._connection = None
        return response.status, payload
