"""Authentication (API keys and OAuth2 JWTs) and the scoped rules of the contract's role table.

Which role may call which operation at all is the table in chat4all.api.access; what an agent may touch
within an operation it may call (itself, its conversations) is decided here, by the services.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from chat4all.domain.errors import ForbiddenError, TooManyRequestsError, UnauthorizedError
from chat4all.domain.models import Principal, Role

if TYPE_CHECKING:
    from collections.abc import Callable

    from chat4all.ports import ApiKeyRepository, RequestLimiter, TokenVerifier, UserRepository

API_KEY_PREFIX = "c4a_"
JWT_ROLE_CLAIM = "chat4all_role"


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(raw_key: str) -> str:
    # Keys carry 256 random bits, so a fast hash is enough; nothing is gained by a password KDF here.
    return hashlib.sha256(raw_key.encode()).hexdigest()


def _looks_like_jwt(token: str) -> bool:
    return not token.startswith(API_KEY_PREFIX) and token.count(".") == 2


@dataclass
class Authenticator:
    """Turns an Authorization header into a Principal, or refuses with 401.

    Revocation and deactivation are read from the database on every call, so they take effect at once;
    only what cannot change (a JWT's signature, the issuer's keys) is cached, by the token verifier.
    """

    keys: ApiKeyRepository
    users: UserRepository
    tokens: TokenVerifier | None = None

    def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise UnauthorizedError("missing Authorization header")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise UnauthorizedError("Authorization must be 'Bearer <API key or token>'")
        if self.tokens is not None and _looks_like_jwt(token):
            return self._from_jwt(token)
        key = self.keys.find_active(hash_api_key(token))
        if key is None:
            raise UnauthorizedError("unknown or revoked API key, or its user is deactivated")
        return Principal(key_id=key.key_id, role=key.role, user_id=key.user_id, rate_limit=key.rate_limit)

    def _from_jwt(self, token: str) -> Principal:
        assert self.tokens is not None
        claims = self.tokens.verify(token)
        try:
            user_id = str(uuid.UUID(claims.subject))
        except ValueError:
            raise UnauthorizedError("the token's sub is not a Chat4All user id") from None
        try:
            role = Role(claims.role or Role.AGENT.value)
        except ValueError:
            raise UnauthorizedError(f"the token's {JWT_ROLE_CLAIM} is neither admin nor agent") from None
        user = self.users.get_user(user_id)
        if user is None or not user.active:
            raise UnauthorizedError("the token's user is unknown or deactivated")
        return Principal(key_id=f"jwt:{user_id}", role=role, user_id=user_id)


@dataclass
class RequestLimits:
    """Each API key and each JWT subject has a request rate: its own (`rate_limit`) or the platform's default."""

    limiter: RequestLimiter
    default_per_second: int

    def admit(self, principal: Principal) -> None:
        """Raise TooManyRequestsError (429, Retry-After) when the caller's credential is past its rate."""
        per_second = principal.rate_limit or self.default_per_second
        wait = self.limiter.wait_seconds(f"requests:{principal.key_id}", per_second)
        if wait > 0:
            retry_after = max(1, math.ceil(wait))
            raise TooManyRequestsError(
                f"this credential may make {per_second} requests per second; retry in {retry_after} s",
                retry_after_seconds=retry_after,
            )


def require_admin(principal: Principal) -> None:
    if not principal.is_admin:
        raise ForbiddenError("this operation needs an admin")


def require_self_or_admin(principal: Principal, user_id: str) -> None:
    if not principal.is_admin and principal.user_id != user_id:
        raise ForbiddenError("an agent acts only as its own user")


def require_can_read_user(principal: Principal, user_id: str, share_conversation: Callable[[str, str], bool]) -> None:
    """Admins read anyone; an agent reads itself and the users it shares a conversation with."""
    if principal.is_admin or principal.user_id == user_id:
        return
    if principal.user_id is None or not share_conversation(principal.user_id, user_id):
        raise ForbiddenError("an agent reads only itself and the people in its conversations")
