"""A local OAuth2 issuer for the tests: keys it generates itself, a JWKS endpoint, and tokens it signs."""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from tests.support.json_reply import send_json


@dataclass(frozen=True)
class SigningKey:
    kid: str
    algorithm: str  # RS256 or ES256
    private_key: Any

    def public_jwk(self) -> dict[str, Any]:
        public = self.private_key.public_key()
        exported = RSAAlgorithm.to_jwk(public) if self.algorithm == "RS256" else ECAlgorithm.to_jwk(public)
        jwk: dict[str, Any] = json.loads(exported)
        return {**jwk, "kid": self.kid, "alg": self.algorithm, "use": "sig"}


def new_key(algorithm: str = "RS256") -> SigningKey:
    if algorithm == "RS256":
        private: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        private = ec.generate_private_key(ec.SECP256R1())
    return SigningKey(f"{algorithm.lower()}-{uuid.uuid4().hex[:12]}", algorithm, private)


class LocalIssuer:
    """Serves `{issuer}/.well-known/jwks.json` with the published keys; `token()` signs with any key."""

    def __init__(self, *keys: SigningKey, audience: str = "chat4all") -> None:
        self.published: list[SigningKey] = list(keys) or [new_key("RS256")]
        self.audience = audience
        self.fetches = 0
        self._lock = threading.Lock()
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != "/.well-known/jwks.json":
                    self.send_error(404)
                    return
                with issuer._lock:
                    issuer.fetches += 1
                    keys = [k.public_jwk() for k in issuer.published]
                send_json(self, 200, {"keys": keys})

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.issuer = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def publish(self, *keys: SigningKey) -> None:
        """Replace the published keys (a rotation adds the new key, and later drops the old one)."""
        with self._lock:
            self.published = list(keys)

    def token(
        self,
        subject: str,
        *,
        role: str | None = None,
        key: SigningKey | None = None,
        issuer: str | None = None,
        audience: str | None = None,
        expires_in: int = 600,
        extra: dict[str, Any] | None = None,
    ) -> str:
        signing = key or self.published[0]
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": issuer or self.issuer,
            "aud": audience or self.audience,
            "sub": subject,
            "iat": now,
            "exp": now + expires_in,
            **(extra or {}),
        }
        if role is not None:
            claims["chat4all_role"] = role
        return jwt.encode(claims, signing.private_key, algorithm=signing.algorithm, headers={"kid": signing.kid})

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
