"""Secrets Manager, read once per container at cold start (chat4all.config.Settings.from_env, through
chat4all.bootstrap.settings): the database, MongoDB and Redis connection settings reach the functions as secret
ARNs, never as values in their environment. A value is never logged, nor put in an error's message."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from chat4all.adapters.aws_api import PROTOCOLS, AwsApiError, AwsJsonApi
from chat4all.config import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

# Secrets Manager speaks the same JSON protocol as the other services AwsJsonApi calls
PROTOCOLS.setdefault("secretsmanager", ("secretsmanager", "1.1"))


class SecretsManagerReader:
    """`read(secret_id)`: the secret's current SecretString (GetSecretValue), cached for the container's life."""

    def __init__(self, api: AwsJsonApi) -> None:
        self.api = api
        self.read: Callable[[str], str] = functools.lru_cache(maxsize=16)(self._read)

    def _read(self, secret_id: str) -> str:
        try:
            answer = self.api.call("GetSecretValue", {"SecretId": secret_id})
        except AwsApiError as exc:
            # names the secret (its ARN is not secret) and AWS's error code only
            raise ConfigurationError(f"secret {secret_id} could not be read ({exc.code})") from None
        value = answer.get("SecretString")
        if not isinstance(value, str) or not value:
            raise ConfigurationError(f"secret {secret_id} has no SecretString")
        return value


@functools.lru_cache(maxsize=4)
def _reader(region: str, endpoint_url: str | None) -> SecretsManagerReader:
    return SecretsManagerReader(AwsJsonApi("secretsmanager", region=region, endpoint_url=endpoint_url))


def secrets_manager_reader(environ: Mapping[str, str]) -> Callable[[str], str]:
    """The reader for the region and endpoint (AWS_ENDPOINT_URL: LocalStack locally) that `environ` names."""
    region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return _reader(region, environ.get("AWS_ENDPOINT_URL") or None).read
