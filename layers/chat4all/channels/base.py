"""What every channel connector implements, and the HTTP error policy they share."""

from __future__ import annotations

import hashlib
import hmac
from abc import ABC, abstractmethod
from functools import lru_cache
from typing import TYPE_CHECKING, Any, ClassVar

import httpx

from chat4all.domain.errors import ChannelOutcomeUnknownError, ChannelRejectedError, ChannelRetryableError

if TYPE_CHECKING:
    import ssl
    from collections.abc import Mapping

    from chat4all.domain.credentials import ChannelCredentials
    from chat4all.domain.models import InboundMessage, OutboundMessage, Platform, ProviderReceipt, StatusReport

DEFAULT_TIMEOUT = httpx.Timeout(10.0, connect=3.0)


@lru_cache(maxsize=1)
def tls_context() -> ssl.SSLContext:
    """One per container: each client made without it loads the CA bundle again (25-55 ms of CPU here)."""
    return httpx.create_ssl_context()


def http_client() -> httpx.Client:
    return httpx.Client(timeout=DEFAULT_TIMEOUT, verify=tls_context())


class ChannelConnector(ABC):
    """One platform: webhook verification and parsing, and sending."""

    platform: ClassVar[Platform]
    credentials_model: ClassVar[type[ChannelCredentials]]
    # the header whose value names the channel (Telegram's secret token); None where the body names the account
    webhook_secret_header: ClassVar[str | None] = None

    def __init__(self, api_base: str, http: httpx.Client | None = None) -> None:
        self.api_base = api_base.rstrip("/")
        self._http = http

    @property
    def http(self) -> httpx.Client:
        """Made on the first send: ingest only verifies and parses webhooks, and never needs one."""
        if self._http is None:
            self._http = http_client()
        return self._http

    @abstractmethod
    def verify_webhook(self, credentials: Mapping[str, str], headers: Mapping[str, str], raw_body: bytes) -> bool:
        """True when the request was signed with this channel's secret."""

    def account_ids(self, payload: dict[str, Any]) -> list[str]:
        """The installed accounts a webhook body names (before it is verified: the body is untrusted).

        Platforms that name the account in the body (WhatsApp phone_number_id, Instagram entry id) override it;
        Telegram names the bot by the secret token header instead. Never raises: a body whose shape is wrong
        names what it names, and is refused as unattributable (401) before its shape is judged (400).
        """
        return []

    @abstractmethod
    def parse_webhook(
        self, payload: dict[str, Any], account_id: str | None = None
    ) -> list[InboundMessage | StatusReport]:
        """Normalise a verified webhook body into inbound messages and status reports, each with the
        account it named (`account_id`). `account_id` is the account of the channel the webhook was
        attributed to, for platforms whose bodies do not name it (Telegram)."""

    @abstractmethod
    def send(self, credentials: Mapping[str, str], message: OutboundMessage) -> ProviderReceipt:
        """Put one message on the platform; raises ChannelRetryableError or ChannelRejectedError."""

    def subscription_challenge(self, credentials: Mapping[str, str], params: Mapping[str, str]) -> str | None:
        """The challenge to echo for a subscription check, or None when it is not for this channel."""
        return None

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


class MetaWebhookConnector(ChannelConnector):
    """Meta's webhooks (WhatsApp, Instagram): `X-Hub-Signature-256` with the app secret, hub subscription checks."""

    def verify_webhook(self, credentials: Mapping[str, str], headers: Mapping[str, str], raw_body: bytes) -> bool:
        return hmac_sha256_matches(credentials["app_secret"], raw_body, headers.get("x-hub-signature-256"))

    def subscription_challenge(self, credentials: Mapping[str, str], params: Mapping[str, str]) -> str | None:
        if params.get("hub.mode") != "subscribe":
            return None
        token = params.get("hub.verify_token", "")
        if not hmac.compare_digest(token.encode(), credentials["verify_token"].encode()):
            return None
        return params.get("hub.challenge", "")


def hmac_sha256_matches(secret: str, raw_body: bytes, signature_header: str | None, prefix: str = "sha256=") -> bool:
    """Constant-time check of a Meta-style `sha256=<hex>` signature over the raw body."""
    if not signature_header or not signature_header.startswith(prefix):
        return False
    expected = hmac.new(secret.encode(), raw_body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature_header[len(prefix) :].strip().lower())


def strings_at(payload: Any, *path: str) -> list[str]:
    """Every string at `path` in untrusted JSON, where a path step into a list means each item of it."""
    found: list[Any] = [payload]
    for step in path:
        found = [item.get(step) for item in found if isinstance(item, dict)]
        found = [x for item in found for x in (item if isinstance(item, list) else [item])]
    return [item for item in found if isinstance(item, str) and item]
