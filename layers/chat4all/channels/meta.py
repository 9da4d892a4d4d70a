"""What Meta's webhooks (WhatsApp, Instagram) share: `X-Hub-Signature-256` with the app secret, hub
subscription checks, and account ids read from an untrusted body."""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING, Any

from chat4all.channels.http import HttpConnector

if TYPE_CHECKING:
    from collections.abc import Mapping


class MetaWebhookConnector(HttpConnector):
    """Meta's webhooks: `X-Hub-Signature-256` with the app secret, hub subscription checks."""

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
