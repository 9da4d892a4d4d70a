"""The HTTP client the connectors share, and the error policy of their platform calls (the only httpx user
among them: the interface, `chat4all.ports.ChannelConnector`, knows no HTTP library).

A refused call becomes one of the platform's error classes (chat4all.domain.errors): unwell (5xx, no
connection: retryable, counted by the channel's breaker), rate-limited (the platform's 429 or its own codes: the
channel slows down and the message waits), permanent for this message, permanent for this recipient, or
credentials rejected. Each connector names its platform's codes in `classify`; the default reads the HTTP status
only. The detail keeps the platform's own code and message, with every credential value of the channel taken out:
a Telegram bot token sits in the URL, and no exception text, URL or echoed body may carry it into a status
history, a log line or a problem.
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import httpx

from chat4all.domain.errors import (
    ChannelCredentialsRejectedError,
    ChannelError,
    ChannelOutcomeUnknownError,
    ChannelRateLimitedError,
    ChannelRejectedError,
    ChannelRetryableError,
)
from chat4all.domain.models import FetchedMedia
from chat4all.observability import tracer
from chat4all.ports import ChannelConnector

if TYPE_CHECKING:
    import ssl
    from collections.abc import Iterable, Iterator, Mapping

DEFAULT_TIMEOUT = httpx.Timeout(10.0, connect=3.0)
# a platform's JSON answer to a GET (WhatsApp's media URL, Telegram's getFile) is small; more is refused unread
MAX_JSON_BYTES = 1024 * 1024
# an inbound file's bytes are read in chunks of this size as they arrive
MEDIA_CHUNK_BYTES = 1024 * 1024
# a rate-limit answer without a retry-after of its own: the channel is held this long
DEFAULT_RETRY_AFTER_SECONDS = 1.0
# httpx logs every request's URL at INFO, and a Telegram URL holds the bot's token
logging.getLogger("httpx").setLevel(logging.WARNING)
logging.getLogger("httpcore").setLevel(logging.WARNING)


@lru_cache(maxsize=1)
def tls_context() -> ssl.SSLContext:
    """One per container: each client made without it loads the CA bundle again (what that costs: see
    docs/BENCHMARKS.md, "A container's clients")."""
    return httpx.create_ssl_context()


def http_client() -> httpx.Client:
    return httpx.Client(timeout=DEFAULT_TIMEOUT, verify=tls_context())


def scrub(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret of at least 4 characters replaced (a token, and a bot token's secret half)."""
    for secret in sorted({s for s in secrets if isinstance(s, str) and len(s) >= 4}, key=len, reverse=True):
        text = text.replace(secret, "[redacted]")
    return text


def retry_after_header(headers: Mapping[str, str]) -> float | None:
    raw = headers.get("retry-after")
    try:
        return max(0.0, float(raw)) if raw is not None else None
    except ValueError:
        return None


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

    def post_json(
        self,
        url: str,
        body: dict[str, Any],
        headers: Mapping[str, str] | None = None,
        *,
        secrets: Iterable[str] = (),
    ) -> dict[str, Any]:
        """POST JSON and classify failures (`classify`); no connection is retryable, a request that left without a
        usable answer has an unknown outcome. `secrets` never appear in an error's detail."""
        # what a header carries (a bearer token) is as secret as what the caller names (a token in the URL)
        secrets = [*secrets, *(value.rsplit(" ", 1)[-1] for value in (headers or {}).values())]
        try:
            # an X-Ray subsegment per platform call where tracing is on (a no-op without X-Ray: locally, in tests)
            with tracer.provider.in_subsegment(f"## {self.platform} POST") as subsegment:
                subsegment.put_annotation("platform", str(self.platform))
                response = self.http.post(url, json=body, headers=dict(headers or {}))
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            # no connection, so the request never left: safe to send again
            raise _scrubbed(ChannelRetryableError(f"{self.platform} unreachable: {exc!r}"), secrets) from None
        except httpx.TransportError as exc:
            # the request left and no answer came back: the platform may have taken it
            raise _scrubbed(ChannelOutcomeUnknownError(f"{self.platform} gave no answer: {exc!r}"), secrets) from None
        if response.status_code >= 400:
            try:
                payload = response.json()
            except ValueError:
                payload = None
            error = self.classify(
                response.status_code,
                payload if isinstance(payload, dict) else None,
                response.text[:500],
                retry_after_header(response.headers),
            )
            raise _scrubbed(error, secrets)
        try:
            payload = response.json()
        except ValueError as exc:
            raise ChannelOutcomeUnknownError(f"{self.platform} answered {response.status_code} without JSON") from exc
        if not isinstance(payload, dict):
            raise ChannelOutcomeUnknownError(
                f"{self.platform} answered {response.status_code} with JSON that is not an object"
            )
        return payload

    def get_json(
        self, url: str, headers: Mapping[str, str] | None = None, *, secrets: Iterable[str] = ()
    ) -> dict[str, Any]:
        """GET a JSON object; failures classified as `post_json`'s, except that a GET is always safe to repeat."""
        response = self.get_stream(url, headers, secrets=secrets)
        try:
            payload = json.loads(b"".join(_bounded(response, MAX_JSON_BYTES)))
        except (ValueError, httpx.TransportError, httpx.StreamError):
            raise ChannelRetryableError(f"{self.platform} answered {response.status_code} without JSON") from None
        finally:
            response.close()
        if not isinstance(payload, dict):
            raise ChannelRejectedError(f"{self.platform} answered {response.status_code} with JSON that is no object")
        return payload

    def get_stream(
        self, url: str, headers: Mapping[str, str] | None = None, *, secrets: Iterable[str] = ()
    ) -> httpx.Response:
        """GET with the body left to read (`iter_bytes`; the caller closes the response), following redirects
        (httpx drops the Authorization header when one leads to another host). A refusal is classified by
        `classify`; no connection, or no answer, is retryable. `secrets` never appear in an error's detail."""
        secrets = [*secrets, *(value.rsplit(" ", 1)[-1] for value in (headers or {}).values())]
        try:
            with tracer.provider.in_subsegment(f"## {self.platform} GET") as subsegment:
                subsegment.put_annotation("platform", str(self.platform))
                request = self.http.build_request("GET", url, headers=dict(headers or {}))
                response = self.http.send(request, stream=True, follow_redirects=True)
        except httpx.HTTPError as exc:
            raise _scrubbed(ChannelRetryableError(f"{self.platform} gave no answer: {exc!r}"), secrets) from None
        if response.status_code < 400:
            return response
        try:
            text = b"".join(_bounded(response, 2000, truncate=True)).decode("utf-8", "replace")
        except (httpx.TransportError, httpx.StreamError):
            text = ""
        finally:
            response.close()
        try:
            payload = json.loads(text)
        except ValueError:
            payload = None
        error = self.classify(
            response.status_code,
            payload if isinstance(payload, dict) else None,
            text[:500],
            retry_after_header(response.headers),
        )
        raise _scrubbed(error, secrets)

    def fetched(
        self, response: httpx.Response, secrets: Iterable[str] = (), *, mime_type: str | None, filename: str | None
    ) -> FetchedMedia:
        """A `get_stream` response as the connector's `fetch_media` answer: read in chunks, closed by the caller."""
        return FetchedMedia(
            chunks=self.media_chunks(response, secrets),
            mime_type=mime_type,
            filename=filename,
            size=content_length(response),
            close=response.close,
        )

    def media_chunks(self, response: httpx.Response, secrets: Iterable[str] = ()) -> Iterator[bytes]:
        """The body of a `get_stream` response in chunks; a connection lost on the way is retryable."""
        try:
            yield from response.iter_bytes(MEDIA_CHUNK_BYTES)
        except (httpx.TransportError, httpx.StreamError) as exc:
            detail = f"{self.platform} media download broke off: {exc!r}"
            raise _scrubbed(ChannelRetryableError(detail), list(secrets)) from None

    def classify(
        self, status: int, payload: dict[str, Any] | None, text: str, retry_after: float | None
    ) -> ChannelError:
        """The error class of a refused call by its HTTP status alone: 429 rate-limited, 401 credentials rejected,
        5xx retryable, any other 4xx permanent for this message. Connectors refine it with their platform's codes."""
        return by_status(status, f"{self.platform} answered {status}: {text}", retry_after)


def by_status(status: int, detail: str, retry_after: float | None) -> ChannelError:
    """The error class of an HTTP status alone (HttpConnector.classify)."""
    if status == 429:
        return ChannelRateLimitedError(
            detail, retry_after_seconds=retry_after or DEFAULT_RETRY_AFTER_SECONDS, status_code=status
        )
    if status == 401:
        return ChannelCredentialsRejectedError(detail, status_code=status)
    if status >= 500:
        return ChannelRetryableError(detail, status_code=status)
    return ChannelRejectedError(detail, status_code=status)


def content_length(response: httpx.Response) -> int | None:
    raw = response.headers.get("content-length")
    return int(raw) if raw is not None and raw.isdigit() else None


def _bounded(response: httpx.Response, limit: int, *, truncate: bool = False) -> Iterator[bytes]:
    """At most `limit` bytes of the body: the rest is not read (truncate), or the answer is refused."""
    taken = 0
    for chunk in response.iter_bytes():
        taken += len(chunk)
        if taken > limit:
            if truncate:
                yield chunk[: limit - (taken - len(chunk))]
                return
            raise ValueError(f"more than {limit} bytes")
        yield chunk


def _scrubbed(error: ChannelError, secrets: list[str]) -> ChannelError:
    error.detail = scrub(error.detail, secrets)
    error.args = (error.detail,)
    return error
