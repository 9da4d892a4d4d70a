"""The connection settings read from secrets: chat4all.config.Settings resolves `*_SECRET_ARN` when the value's own
variable is absent, once per reader, and never puts a secret's value in a message or a repr."""

from __future__ import annotations

import json

import pytest

from chat4all.adapters.aws_api import AwsApiError
from chat4all.adapters.secrets import SecretsManagerReader
from chat4all.config import ConfigurationError, Settings, database_url_from_secret

SECRETS = {
    "arn:db": "postgresql://chat4all_app:pa%3Ass@db.internal:5432/chat4all",
    "arn:mongo": "mongodb://u:mongo-s3cret@mongo.internal/chat4all?journal=true",
    "arn:redis": "redis://:redis-s3cret@redis.internal:6379/0",
}
ENV = {"DATABASE_SECRET_ARN": "arn:db", "MONGODB_URI_SECRET_ARN": "arn:mongo", "REDIS_URL_SECRET_ARN": "arn:redis"}


class FakeSecretsManager:
    """The AwsJsonApi of Secrets Manager: GetSecretValue of the secrets above, counted."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def call(self, operation: str, params: dict[str, str]) -> dict[str, str]:
        assert operation == "GetSecretValue"
        self.calls.append(params["SecretId"])
        if params["SecretId"] not in SECRETS:
            raise AwsApiError("ResourceNotFoundException", "Secrets Manager can't find the specified secret.")
        return {"ARN": params["SecretId"], "SecretString": SECRETS[params["SecretId"]]}


def test_secrets_are_read_when_their_values_are_absent_once_each() -> None:
    api = FakeSecretsManager()
    reader = SecretsManagerReader(api)  # type: ignore[arg-type]
    settings = Settings.from_env(ENV, read_secret=reader.read)
    assert settings.database_url == SECRETS["arn:db"]
    assert settings.mongodb_uri == SECRETS["arn:mongo"]
    assert settings.redis_url == SECRETS["arn:redis"]
    Settings.from_env(ENV, read_secret=reader.read)
    assert sorted(api.calls) == ["arn:db", "arn:mongo", "arn:redis"]  # cached: one call per secret


def test_a_value_given_directly_wins_and_reads_no_secret() -> None:
    api = FakeSecretsManager()
    reader = SecretsManagerReader(api)  # type: ignore[arg-type]
    env = ENV | {"DATABASE_URL": "postgresql://local/db", "MONGODB_URI": "mongodb://local/db", "REDIS_URL": "redis://x"}
    settings = Settings.from_env(env, read_secret=reader.read)
    assert settings.database_url == "postgresql://local/db"
    assert api.calls == []


def test_no_secret_value_in_the_settings_repr() -> None:
    settings = Settings.from_env(ENV, read_secret=SecretsManagerReader(FakeSecretsManager()).read)  # type: ignore[arg-type]
    text = repr(settings) + str(settings)
    for value in ("pa%3Ass", "mongo-s3cret", "redis-s3cret"):
        assert value not in text


def test_an_unreadable_secret_stops_the_start_naming_the_secret_not_a_value() -> None:
    reader = SecretsManagerReader(FakeSecretsManager())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"secret arn:nope could not be read \(ResourceNotFoundException\)"):
        Settings.from_env(ENV | {"MONGODB_URI_SECRET_ARN": "arn:nope"}, read_secret=reader.read)


def test_rds_json_secrets_connect_to_the_proxy_with_tls() -> None:
    secret = json.dumps({"username": "chat4all_app", "password": "p@ss/word", "host": "db.internal", "port": 5432})
    proxied = database_url_from_secret(secret, {"DATABASE_HOST": "proxy.internal", "DATABASE_NAME": "chat4all"})
    assert proxied == "postgresql://chat4all_app:p%40ss%2Fword@proxy.internal:5432/chat4all?sslmode=require"
    direct = database_url_from_secret(secret, {})
    assert direct.startswith("postgresql://chat4all_app:p%40ss%2Fword@db.internal:5432/")
    with pytest.raises(ConfigurationError) as error:
        database_url_from_secret('{"password": "only-a-password"}', {})
    assert "only-a-password" not in str(error.value)
