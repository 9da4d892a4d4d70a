"""What the platform asks of each messaging platform, in one definition per platform, and the registry of them.

A platform is one module (`chat4all.channels.whatsapp`, a deployment's own): its connector, and a
`PlatformDefinition` registered when the module is imported. Everything else asks the definition (credentials,
webhook lookup keys, the credential check, the default rate, the API base setting, contact hints, how its message
ids are shown) instead of branching on the platform. `chat4all.channels.registry` registers the built-ins and
imports the modules a deployment names; this module is pure (no HTTP library), so the domain and the services
may ask it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from chat4all.domain.models import Platform

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from chat4all.domain.credentials import ChannelCredentials
    from chat4all.ports import ChannelConnector

NAME = re.compile(r"^[A-Z][A-Z0-9_]{1,31}$")


def _same(value: str) -> str:
    return value


def webhook_secret_digest(secret: str) -> str:
    """How a channel's webhook secret is looked up without decrypting every channel: its SHA-256, in hex."""
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class CredentialCheck:
    """The platform call that shows a channel's credentials work before they are stored:
    `GET {api base}{path(credentials)}` with `params`, and `Authorization: Bearer {credentials[bearer_field]}`
    when it has one. `refusal` reads the JSON answer: None when it describes these credentials, else the
    credential field to blame and why. A refused call blames `refused_field`."""

    path: Callable[[Mapping[str, str]], str]
    refused_field: str
    refusal: Callable[[Mapping[str, Any], Mapping[str, str]], tuple[str, str] | None]
    bearer_field: str | None = None
    params: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class PlatformDefinition:
    """Everything the platform asks per messaging platform, beside its connector's own methods.

    `name` is the platform's name in the API (`"WHATSAPP"`); its webhooks arrive at `/webhooks/{name.lower()}`.
    A webhook names its channel by `account_field` (the account the body names; `account_of` reads it from
    that credential, e.g. Telegram's bot id from its token), or, with `webhook_header_field`, by that secret
    sent in the connector's `webhook_secret_header` (stored as its digest). `rate_limit` is the platform's
    published messages per second for one channel, cited where the definition is. `user_id_is_phone`: the
    platform's user id is the person's phone number (E.164 digits). `shown_message_id`: the platform's own id of
    a message as the API shows it, from the key it is stored under.
    """

    name: str
    connector: type[ChannelConnector]
    api_base_variable: str
    api_base_default: str
    rate_limit: int
    account_field: str
    credential_check: CredentialCheck
    account_of: Callable[[str], str] = _same
    webhook_header_field: str | None = None
    subscription_check: bool = False
    user_id_is_phone: bool = False
    shown_message_id: Callable[[str], str] = field(default=_same)

    @property
    def platform(self) -> Platform:
        return Platform(self.name)

    @property
    def webhook_path(self) -> str:
        return self.name.lower()

    @property
    def credentials_model(self) -> type[ChannelCredentials]:
        return self.connector.credentials_model

    def make_connector(self, api_base: str) -> ChannelConnector:
        """The platform's connector, calling its API at `api_base` (the connector classes take it first)."""
        return self.connector(api_base)  # type: ignore[call-arg]  # the port has no constructor of its own

    def channel_keys(self, credentials: Mapping[str, str]) -> tuple[str, str | None]:
        """What a channel is found by when a webhook arrives, stored in plaintext beside the ciphertext: the
        account its webhooks name, and the digest of the secret they carry in a header (when they do)."""
        account = self.account_of(credentials[self.account_field])
        secret = credentials[self.webhook_header_field] if self.webhook_header_field else None
        return account, webhook_secret_digest(secret) if secret is not None else None


class UnknownPlatformError(LookupError):
    """No platform of that name is registered."""


_DEFINITIONS: dict[str, PlatformDefinition] = {}


def register(definition: PlatformDefinition) -> PlatformDefinition:
    """Make a platform known by its definition (again with the same definition: nothing changes)."""
    if not NAME.fullmatch(definition.name):
        raise ValueError(f"a platform name is 2-32 of A-Z, 0-9 and _, starting with a letter: {definition.name!r}")
    known = _DEFINITIONS.get(definition.name)
    if known is not None and known != definition:
        raise ValueError(f"platform {definition.name} is registered already, by another definition")
    if definition.connector.platform != definition.name:
        raise ValueError(f"the {definition.name} definition's connector is {definition.connector.platform}'s")
    Platform.register(definition.name)
    _DEFINITIONS[definition.name] = definition
    return definition


def definition(name: str) -> PlatformDefinition:
    """The definition of a registered platform; UnknownPlatformError when there is none."""
    try:
        return _DEFINITIONS[name]
    except KeyError:
        raise UnknownPlatformError(f"no platform {name!r} is registered") from None


def definitions() -> list[PlatformDefinition]:
    """Every registered platform's definition, in the order they were registered."""
    return list(_DEFINITIONS.values())


def names() -> list[str]:
    return list(_DEFINITIONS)


def by_webhook_path(segment: str) -> PlatformDefinition | None:
    """The platform whose webhooks arrive at `/webhooks/{segment}`, or None."""
    found = _DEFINITIONS.get(segment.upper())
    return found if found is not None and found.webhook_path == segment else None


def shown_platform_message_id(platform: Platform, key: str | None) -> str | None:
    """The platform's own id of a message, as the API shows it (see each definition's `shown_message_id`)."""
    if key is None:
        return None
    found = _DEFINITIONS.get(platform)
    return found.shown_message_id(key) if found is not None else key
