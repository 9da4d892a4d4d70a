"""API-key authentication and the role rules of the contract."""

from __future__ import annotations

import hashlib
import secrets
from typing import TYPE_CHECKING

from chat4all.domain.errors import ForbiddenError, UnauthorizedError
from chat4all.domain.models import Principal

if TYPE_CHECKING:
    from chat4all.ports import ApiKeyRepository

API_KEY_PREFIX = "c4a_"


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(raw_key: str) -> str:
    # Keys carry 256 random bits, so a fast hash is enough; nothing is gained by a password KDF here.
    return hashlib.sha256(raw_key.encode()).hexdigest()


class Authenticator:
    """Turns an Authorization header into a Principal, or refuses with 401."""

    def __init__(self, keys: ApiKeyRepository) -> None:
        self.keys = keys

    def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise UnauthorizedError("missing Authorization header")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise UnauthorizedError("Authorization must be 'Bearer <api key>'")
        key = self.keys.find_active(hash_api_key(token))
        if key is None:
            raise UnauthorizedError("unknown or revoked API key")
        return Principal(key_id=key.key_id, role=key.role, user_id=key.user_id)


def require_admin(principal: Principal) -> None:
    if not principal.is_admin:
        raise ForbiddenError("this operation needs an admin key")


def require_self_or_admin(principal: Principal, user_id: str) -> None:
    if not principal.is_admin and principal.user_id != user_id:
        raise ForbiddenError("an agent key acts only as its own user")
