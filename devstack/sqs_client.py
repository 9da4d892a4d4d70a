"""The three SQS calls an event source mapping makes, on the runtime's asyncio loop.

SQS's JSON protocol (`X-Amz-Target: AmazonSQS.<Operation>`) over aiohttp, each request signed by botocore's
SigV4 signer: a fraction of boto3's CPU per call (docs/BENCHMARKS.md, "LocalStack and the local runtime"). The
pollers make one receive and one delete per batch, so this is most of what the runtime itself spends per
delivered message at low batch sizes.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials


class SqsError(RuntimeError):
    """SQS answered with an error (its `__type` and message)."""


class AsyncSqsClient:
    def __init__(self, endpoint_url: str, region: str, access_key: str, secret_key: str, connections: int) -> None:
        self.endpoint_url = endpoint_url.rstrip("/") + "/"
        self.signer = SigV4Auth(Credentials(access_key, secret_key), "sqs", region)
        self.connections = connections
        self._session: aiohttp.ClientSession | None = None

    async def call(self, operation: str, params: dict[str, Any], *, timeout: float = 30.0) -> dict[str, Any]:
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self.connections))
        body = json.dumps(params).encode()
        request = AWSRequest(
            method="POST",
            url=self.endpoint_url,
            data=body,
            headers={"Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": f"AmazonSQS.{operation}"},
        )
        self.signer.add_auth(request)
        async with self._session.post(
            self.endpoint_url,
            data=body,
            headers=dict(request.headers.items()),
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as response:
            payload = await response.read()
        answer: dict[str, Any] = json.loads(payload) if payload else {}
        if response.status != 200:
            raise SqsError(f"{operation}: {answer.get('__type', response.status)}: {answer.get('message', '')}")
        return answer

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
