"""OAuth2 bearer JWTs verified with PyJWT against the configured issuer's JWKS."""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

import jwt

from chat4all.domain.errors import DependencyUnavailableError, UnauthorizedError
from chat4all.observability import logger
from chat4all.ports import TokenClaims, TokenVerifier

ALGORITHMS = ["RS256", "ES256"]
ROLE_CLAIM = "chat4all_role"


class JwksTokenVerifier(TokenVerifier):
    """Signature (RS256 or ES256 only), issuer, audience and expiry, with the issuer's keys from its JWKS.

    Keys are cached for `jwks_lifespan_seconds`; a token signed with a key id not seen yet makes PyJWT fetch
    the JWKS again (at most once per `refresh_cooldown_seconds`), which is how a rotated key is picked up.
    Verified tokens are remembered until they expire: that depends only on the token and the issuer's keys,
    never on revocation or deactivation, which the authenticator reads from the database on every request.
    """

    def __init__(
        self,
        issuer: str,
        audience: str,
        jwks_url: str,
        *,
        leeway_seconds: int = 30,
        jwks_lifespan_seconds: float = 300,
        refresh_cooldown_seconds: float = 5,
        max_remembered: int = 1024,
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.leeway_seconds = leeway_seconds
        self.keys = jwt.PyJWKClient(
            jwks_url, lifespan=jwks_lifespan_seconds, timeout=3, cooldown_duration=refresh_cooldown_seconds
        )
        self.max_remembered = max_remembered
        self._verified: OrderedDict[str, tuple[TokenClaims, float]] = OrderedDict()

    def verify(self, token: str) -> TokenClaims:
        remembered = self._verified.get(token)
        if remembered is not None and time.time() < remembered[1]:
            return remembered[0]
        try:
            signing_key = self.keys.get_signing_key_from_jwt(token)
        except jwt.PyJWKClientConnectionError as exc:
            logger.warning("the JWT issuer's keys cannot be fetched", extra={"error": type(exc).__name__})
            raise DependencyUnavailableError("the token issuer's keys cannot be fetched") from exc
        except (jwt.PyJWKClientError, jwt.InvalidTokenError) as exc:
            raise UnauthorizedError("the token is not signed by a key of the configured issuer") from exc
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                signing_key.key,
                algorithms=ALGORITHMS,
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_seconds,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise UnauthorizedError("the token has expired") from exc
        except jwt.InvalidTokenError as exc:
            raise UnauthorizedError(f"the token is not valid here: {type(exc).__name__}") from exc
        role = claims.get(ROLE_CLAIM)
        verified = TokenClaims(subject=str(claims["sub"]), role=None if role is None else str(role))
        self._remember(token, verified, float(claims["exp"]) + self.leeway_seconds)
        return verified

    def _remember(self, token: str, claims: TokenClaims, until: float) -> None:
        self._verified[token] = (claims, until)
        self._verified.move_to_end(token)
        while len(self._verified) > self.max_remembered:
            self._verified.popitem(last=False)
