"""The HTTP client the connectors share, and the error policy of their platform calls (the only httpx user
among them: the interface, `chat4all.ports.ChannelConnector`, knows no HTTP library)."""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any

import httpx

from chat4all.domain.errors import ChannelOutcomeUnknownError, ChannelRejectedError, ChannelRetryableError
from chat4all.ports import ChannelConnector

if TYPE_CHECKING:
    import ssl
    from collections.abc import Mapping

DEFAULT_TIMEOUT = httpx.Timeout(10.0, connect=3.0)


@lru_cache(maxsize=1)
def tls_context() -> ssl.SSLContext:
    """One per container: each client made without it loads the CA bundle again (what that costs: see
    docs/BENCHMARKS.md, "A container's clients")."""
    return httpx.create_ssl_context()


def http_client() -> httpx.Client:
    return httpx.Client(timeout=DEFAULT_TIMEOUT, verify=tls_context())


class HttpConnector(ChannelConnector):
    """A connector that calls its platform's HTTP API at `api_base`."""

    def __init__(self, api_base: str, http: httpx.Client | None = None) -> None:
        self.api_base = api_base.rstrip("/")
        self._http = http

    @property
    def http(self) -> httpx.Client:
        """Made on the first send: ingest only verifies and parses webhooks, and never needs one."""
        if self._http is None:
            self._http = http_client()
        return self._http

    def post_json(self, url: str, body: dict[str, Any], headers: Mapping[str, str] | None = None) -> dict[str, Any]:
        """POST JSON and classify failures: 429/5xx and no connection are retryable, any other 4xx is final, a
        request that left without a usable answer has an unknown outcome."""
        try:
            response = self.http.post(url, json=body, headers=dict(headers or {}))
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            # no connection, so the request never left: safe to send again
            raise ChannelRetryableError(f"{self.platform} unreachable: {exc}") from exc
        except httpx.TransportError as exc:
            # the request left and no answer came back: the platform may have taken it
            raise ChannelOutcomeUnknownError(f"{self.platform} gave no answer: {exc!r}") from exc
        if response.status_code == 429 or response.status_code >= 500:
            raise ChannelRetryableError(
                f"{self.platform} answered {response.status_code}: {response.text[:500]}",
                status_code=response.status_code,
            )
        if response.status_code >= 400:
            raise ChannelRejectedError(
                f"{self.platform} answered {response.status_code}: {response.text[:500]}",
                status_code=response.status_code,
            )
        try:
            payload = response.json()
        except ValueError as exc:
            raise ChannelOutcomeUnknownError(f"{self.platform} answered {response.status_code} without JSON") from exc
        if not isinstance(payload, dict):
            raise ChannelOutcomeUnknownError(
                f"{self.platform} answered {response.status_code} with JSON that is not an object"
            )
        return payload
