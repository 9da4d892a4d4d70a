"""Asking each platform whether a channel's credentials work, before they are stored: the call its definition's
`credential_check` describes (WhatsApp `GET {base}/{phone_number_id}` with the bearer token, Telegram
`GET {base}/bot{token}/getMe`, Instagram `GET {base}/me`). A refusal is the caller's mistake (422, naming the
field); a platform that cannot be asked is a dependency that is down (503). Tokens never appear in an error or a
log line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx

from chat4all.channels.http import http_client
from chat4all.domain.errors import DependencyUnavailableError, FieldError, ValidationFailedError
from chat4all.domain.platforms import definition
from chat4all.observability import logger
from chat4all.ports import CredentialVerifier

if TYPE_CHECKING:
    from collections.abc import Mapping

    from chat4all.domain.models import Platform


class PlatformCredentialVerifier(CredentialVerifier):
    def __init__(self, api_bases: Mapping[Platform, str], http: httpx.Client | None = None) -> None:
        self.api_bases = {platform: base.rstrip("/") for platform, base in api_bases.items()}
        self.http = http or http_client()

    def verify(self, platform: Platform, credentials: dict[str, str]) -> None:
        check = definition(platform).credential_check
        bearer = credentials[check.bearer_field] if check.bearer_field else None
        url = f"{self.api_bases[platform]}{check.path(credentials)}"
        body = self._get(platform, url, bearer, check.refused_field, dict(check.params) or None)
        if (refused := check.refusal(body, credentials)) is not None:
            raise _refused(platform, *refused)

    def _get(
        self, platform: Platform, url: str, bearer: str | None, refused_field: str, params: dict[str, str] | None
    ) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        try:
            response = self.http.get(url, headers=headers, params=params)
        except (ValueError, httpx.InvalidURL) as exc:  # not sendable at all (the models allow only visible ASCII)
            raise _refused(platform, refused_field, "cannot be sent to the platform") from exc
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
            raise _refused(platform, refused_field, f"{platform} refused it (HTTP {response.status_code})")
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise DependencyUnavailableError(f"{platform} answered the credential check with something not JSON")
        return body


def _refused(platform: Platform, field: str, message: str) -> ValidationFailedError:
    return ValidationFailedError(f"{platform} did not accept these credentials", errors=[FieldError(field, message)])
