"""What Meta's webhooks (WhatsApp, Instagram) share: `X-Hub-Signature-256` with the app secret, hub
subscription checks, and account ids read from an untrusted body."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from chat4all.channels.http import HttpConnector, by_status
from chat4all.domain.errors import (
    ChannelCredentialsRejectedError,
    ChannelRateLimitedError,
    ChannelRecipientRejectedError,
    ChannelRetryableError,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from chat4all.domain.errors import ChannelError


@dataclass(frozen=True)
class GraphErrorCodes:
    """A Meta platform's Graph API error codes by class; each platform's module names its own, with its sources."""

    platform: str
    # code -> (the wait when the answer names none, whether the whole account is held or only this recipient)
    rate_limits: Mapping[int, tuple[float, bool]]
    credentials: frozenset[int]
    # (code, subcode); a subcode of None matches the code with any subcode
    recipients: frozenset[tuple[int, int | None]]
    retryable: frozenset[int]


class MetaWebhookConnector(HttpConnector):
    """Meta's webhooks: `X-Hub-Signature-256` with the app secret, hub subscription checks; Graph API errors
    classified by the platform's `codes`."""

    codes: ClassVar[GraphErrorCodes]

    def classify(
        self, status: int, payload: dict[str, Any] | None, text: str, retry_after: float | None
    ) -> ChannelError:
        """The platform's error classes by the Graph error's `code` (and subcode), then by HTTP status; any other
        refusal is permanent for this message."""
        codes = self.codes
        code, subcode, summary, transient = graph_error(payload)
        detail = f"{codes.platform} answered {status}" + (f", {summary}" if summary else f": {text}")
        limit = codes.rate_limits.get(code) if code is not None else None
        if limit is not None:
            wait, channel_wide = limit
            return ChannelRateLimitedError(
                detail, retry_after_seconds=retry_after or wait, channel_wide=channel_wide, status_code=status
            )
        if code in codes.credentials:
            return ChannelCredentialsRejectedError(detail, status_code=status)
        if code is not None and ((code, None) in codes.recipients or (code, subcode) in codes.recipients):
            return ChannelRecipientRejectedError(detail, status_code=status)
        if code in codes.retryable or transient:
            return ChannelRetryableError(detail, status_code=status)
        return by_status(status, detail, retry_after)

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


def graph_error(payload: dict[str, Any] | None) -> tuple[int | None, int | None, str, bool]:
    """A Graph API error body (`{"error": {"message", "type", "code", "error_subcode", "error_data": {"details"},
    "is_transient", "fbtrace_id"}}`, WhatsApp and Instagram alike): its code, subcode, a one-line summary with the
    platform's own code and message, and whether Meta calls it transient."""
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict):
        return None, None, "", False
    code = error.get("code")
    subcode = error.get("error_subcode")
    code = int(code) if isinstance(code, int | str) and str(code).lstrip("-").isdigit() else None
    subcode = int(subcode) if isinstance(subcode, int | str) and str(subcode).isdigit() else None
    data = error.get("error_data")
    details = data.get("details") if isinstance(data, dict) else None
    summary = f"error {code}" + (f" (subcode {subcode})" if subcode is not None else "")
    summary += f": {str(error.get('message') or '')[:300]}"
    if isinstance(details, str) and details:
        summary += f" ({details[:300]})"
    return code, subcode, summary, error.get("is_transient") is True


def strings_at(payload: Any, *path: str) -> list[str]:
    """Every string at `path` in untrusted JSON, where a path step into a list means each item of it."""
    found: list[Any] = [payload]
    for step in path:
        found = [item.get(step) for item in found if isinstance(item, dict)]
        found = [x for item in found for x in (item if isinstance(item, list) else [item])]
    return [item for item in found if isinstance(item, str) and item]
