"""Asking each platform whether a channel's credentials work, before they are stored.

WhatsApp `GET {base}/{phone_number_id}` (bearer token), Telegram `GET {base}/bot{token}/getMe`, Instagram
`GET {base}/me` (bearer token). A refusal is the caller's mistake (422, naming the field); a platform that
cannot be asked is a dependency that is down (503). Tokens never appear in an error or a log line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx

from chat4all.channels.http import http_client
from chat4all.domain.errors import DependencyUnavailableError, FieldError, ValidationFailedError
from chat4all.domain.models import Platform
from chat4all.observability import logger
from chat4all.ports import CredentialVerifier

if TYPE_CHECKING:
    from collections.abc import Mapping


class PlatformCredentialVerifier(CredentialVerifier):
    def __init__(self, api_bases: Mapping[Platform, str], http: httpx.Client | None = None) -> None:
        self.api_bases = {platform: base.rstrip("/") for platform, base in api_bases.items()}
        self.http = http or http_client()

    def verify(self, platform: Platform, credentials: dict[str, str]) -> None:
        base = self.api_bases[platform]
        if platform is Platform.WHATSAPP:
            number_id = credentials["phone_number_id"]
            body = self._get(platform, f"{base}/{number_id}", credentials["access_token"], "credentials.access_token")
            if str(body.get("id")) != number_id:
                raise _refused(platform, "credentials.phone_number_id", "is not the number this access token manages")
        elif platform is Platform.TELEGRAM:
            body = self._get(platform, f"{base}/bot{credentials['bot_token']}/getMe", None, "credentials.bot_token")
            result = body.get("result")
            if body.get("ok") is not True or not isinstance(result, dict) or result.get("is_bot") is not True:
                raise _refused(platform, "credentials.bot_token", "getMe did not describe a bot")
        else:
            body = self._get(platform, f"{base}/me", credentials["access_token"], "credentials.access_token")
            if credentials["ig_user_id"] not in {str(body.get("user_id")), str(body.get("id"))}:
                raise _refused(platform, "credentials.ig_user_id", "is not the account this access token belongs to")

    def _get(self, platform: Platform, url: str, bearer: str | None, token_field: str) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        params = {"fields": "user_id,username"} if platform is Platform.INSTAGRAM else None
        try:
            response = self.http.get(url, headers=headers, params=params)
        except (ValueError, httpx.InvalidURL) as exc:  # not sendable at all (the models allow only visible ASCII)
            raise _refused(platform, token_field, "cannot be sent to the platform") from exc
        except httpx.HTTPError as exc:
            logger.warning(
                "credential check failed to connect", extra={"platform": platform, "error": type(exc).__name__}
            )
            raise DependencyUnavailableError(f"{platform} could not be reached to check the credentials") from None
        if response.status_code == 429 or response.status_code >= 500:
            logger.warning("credential check failed", extra={"platform": platform, "status": response.status_code})
            raise DependencyUnavailableError(
                f"{platform} could not check the credentials (HTTP {response.status_code})"
            )
        if response.status_code >= 400:
            raise _refused(platform, token_field, f"{platform} refused it (HTTP {response.status_code})")
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise DependencyUnavailableError(f"{platform} answered the credential check with something not JSON")
        return body


def _refused(platform: Platform, field: str, message: str) -> ValidationFailedError:
    return ValidationFailedError(f"{platform} did not accept these credentials", errors=[FieldError(field, message)])
