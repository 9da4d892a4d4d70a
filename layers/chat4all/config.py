"""The one configuration object, read from the environment once per container."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping


# The least-privilege PostgreSQL role the functions connect as (created by migration 0002); the owner migrates.
APP_ROLE = "chat4all_app"


def app_database_url(owner_url: str, password: str | None) -> str:
    """The owner's connection URL with the functions' role (and its password) in place of the owner."""
    parts = urlsplit(owner_url)
    host = parts.netloc.rpartition("@")[2]
    userinfo = APP_ROLE + (":" + quote(password, safe="") if password else "")
    return urlunsplit((parts.scheme, f"{userinfo}@{host}", parts.path, parts.query, parts.fragment))


class ConfigurationError(RuntimeError):
    """The environment lacks or misstates a setting; the function cannot start."""


# The connection settings that are secrets: in AWS (and locally) they reach the functions as the ARN of a Secrets
# Manager secret, read once per container at cold start, never as a value in the function's environment
SECRET_VARIABLES = {
    "database_url": "DATABASE_SECRET_ARN",
    "mongodb_uri": "MONGODB_URI_SECRET_ARN",
    "redis_url": "REDIS_URL_SECRET_ARN",
}


def database_url_from_secret(secret: str, environ: Mapping[str, str]) -> str:
    """The PostgreSQL URL a database secret stands for.

    Either a URL itself (the secret the stack makes from `DatabaseUrl`), or RDS's JSON form `{"username",
    "password", "host"?, "port"?, "dbname"?}` (the secret RDS Proxy signs in with): then the host is
    DATABASE_HOST (the proxy's endpoint) when set, the database DATABASE_NAME, and TLS is required.
    """
    if secret.startswith(("postgresql://", "postgres://")):
        return secret
    try:
        fields = json.loads(secret)
        username, password = str(fields["username"]), str(fields["password"])
    except (ValueError, TypeError, KeyError):
        # the value is never part of the message
        raise ConfigurationError(
            "the database secret is neither a URL nor RDS's JSON with username and password"
        ) from None
    host = environ.get("DATABASE_HOST") or fields.get("host")
    if not host:
        raise ConfigurationError("the database secret names no host and DATABASE_HOST is not set")
    port = fields.get("port") or 5432
    name = environ.get("DATABASE_NAME") or fields.get("dbname") or "chat4all"
    userinfo = f"{quote(username, safe='')}:{quote(password, safe='')}"
    return f"postgresql://{userinfo}@{host}:{port}/{name}?sslmode=require"


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True)

    # secrets: kept out of the model's repr, so that no log line of a settings object shows them
    database_url: str = Field(repr=False)
    mongodb_uri: str = Field(repr=False)
    redis_url: str = Field(repr=False)
    event_bus_name: str = "chat4all"
    route_queue_url: str | None = None
    route_dead_letter_queue_url: str | None = None
    status_queue_url: str | None = None
    status_dead_letter_queue_url: str | None = None
    credentials_key_id: str | None = None
    aws_endpoint_url: str | None = None
    aws_region: str = "us-east-1"
    chat4all_jwt_issuer: str | None = None
    chat4all_jwt_audience: str = "chat4all"
    chat4all_jwt_jwks_url: str | None = None
    idempotency_ttl_seconds: int = Field(default=86_400, gt=0)
    # requests per second of an API key or JWT subject without a rate of its own (contract: request limits)
    chat4all_api_rate_limit: int = Field(default=200, gt=0)
    max_body_bytes: int = Field(default=256 * 1024, gt=0)
    # how long a message may wait on unavailable dependencies before delivery gives up on it (FAILED)
    delivery_trouble_seconds: int = Field(default=300, gt=0)
    # how long after its acceptance a message may wait for its channel (open breaker, rate limits) before it is
    # FAILED (chat4all.services.delivery.DEFAULT_DELIVERY_WINDOW says why an hour)
    chat4all_delivery_window_seconds: int = Field(default=3600, gt=0)
    # the sweeper re-enqueues outbound messages PENDING for longer than this
    sweep_pending_after_seconds: int = Field(default=120, ge=0)
    # files (issue 18): the private bucket of their bytes, and the clamd that scans them (host:port; empty - none)
    files_bucket: str | None = None
    file_events_queue_url: str | None = None
    clamd_address: str | None = None

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, read_secret: Callable[[str], str] | None = None
    ) -> Settings:
        """The settings in `environ` (os.environ); a secret setting whose variable is unset is read from the secret
        its `*_SECRET_ARN` names (SECRET_VARIABLES), with `read_secret` (Secrets Manager, where AWS_ENDPOINT_URL or
        the region says)."""
        env = os.environ if environ is None else environ
        values = {name: env[name.upper()] for name in cls.model_fields if env.get(name.upper())}
        for name, variable in SECRET_VARIABLES.items():
            if name in values or not env.get(variable):
                continue
            if read_secret is None:
                from chat4all.adapters.secrets import secrets_manager_reader

                read_secret = secrets_manager_reader(env)
            secret = read_secret(env[variable])
            values[name] = database_url_from_secret(secret, env) if name == "database_url" else secret
        if "aws_region" not in values and env.get("AWS_DEFAULT_REGION"):
            values["aws_region"] = env["AWS_DEFAULT_REGION"]
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            missing = ", ".join(str(e["loc"][0]).upper() for e in exc.errors())
            raise ConfigurationError(f"invalid or missing environment: {missing}") from exc

    @property
    def jwks_url(self) -> str | None:
        """Where the JWT issuer's keys are: CHAT4ALL_JWT_JWKS_URL, else {issuer}/.well-known/jwks.json."""
        if not self.chat4all_jwt_issuer:
            return None
        return self.chat4all_jwt_jwks_url or self.chat4all_jwt_issuer.rstrip("/") + "/.well-known/jwks.json"

    def require(self, name: str) -> str:
        value = getattr(self, name)
        if not value:
            raise ConfigurationError(f"{name.upper()} is not set")
        return str(value)
