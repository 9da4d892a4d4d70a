"""Authentication and identity administration over in-memory ports."""

from __future__ import annotations

import dataclasses
import uuid

import pytest

from chat4all.domain.commands import CreateApiKey, CreateChannel, CreateUser, LinkIdentity, UpdateChannel, UpdateUser
from chat4all.domain.errors import ForbiddenError, NotFoundError, UnauthorizedError, ValidationFailedError
from chat4all.domain.models import Platform, Principal, Role, UserType
from chat4all.ports import CredentialVerifier, TokenClaims, TokenVerifier
from chat4all.services.auth import Authenticator
from chat4all.services.identity import IdentityService
from tests.fakes.in_memory import (
    InMemoryApiKeyRepository,
    InMemoryChannelRepository,
    InMemoryConversationStore,
    InMemoryUserRepository,
)

ADMIN = Principal("admin-key", Role.ADMIN, request_id="req-9", source_ip="192.0.2.1")
WHATSAPP = {"access_token": "t", "phone_number_id": "123", "app_secret": "s", "verify_token": "v"}


class FixedTokens(TokenVerifier):
    def __init__(self, claims: TokenClaims) -> None:
        self.claims = claims

    def verify(self, token: str) -> TokenClaims:
        return self.claims


class RecordingVerifier(CredentialVerifier):
    def __init__(self) -> None:
        self.refuse = False
        self.checked: list[tuple[Platform, dict[str, str]]] = []

    def verify(self, platform: Platform, credentials: dict[str, str]) -> None:
        self.checked.append((platform, credentials))
        if self.refuse:
            raise ValidationFailedError("refused")


@pytest.fixture
def users() -> InMemoryUserRepository:
    return InMemoryUserRepository()


@pytest.fixture
def service(users: InMemoryUserRepository) -> IdentityService:
    return IdentityService(
        users,
        InMemoryChannelRepository(),
        InMemoryApiKeyRepository(),
        conversations=InMemoryConversationStore(),
        verifier=RecordingVerifier(),
    )


def test_update_user_audits_before_and_after_with_the_request(
    service: IdentityService, users: InMemoryUserRepository
) -> None:
    user = service.create_user(CreateUser("Ana", UserType.AGENT, "a@x.io"), ADMIN)
    updated = service.update_user(UpdateUser(user.user_id, {"active": False, "email": None}), ADMIN)
    assert (updated.active, updated.email) == (False, None)
    entry = users.audit[-1]
    assert entry.action == "user.deactivated"
    assert (entry.before or {})["email"] == "a@x.io" and (entry.after or {})["email"] is None
    assert (entry.actor, entry.actor_role, entry.request_id, entry.source_ip) == (
        "admin-key", "admin", "req-9", "192.0.2.1",
    )  # fmt: skip
    unchanged = service.update_user(UpdateUser(user.user_id, {"active": False}), ADMIN)
    assert unchanged == updated and len(users.audit) == 2  # nothing changed, nothing audited


def test_admin_only_operations_refuse_agents(service: IdentityService) -> None:
    agent = Principal("k", Role.AGENT, str(uuid.uuid4()))
    with pytest.raises(ForbiddenError):
        service.create_user(CreateUser("x", UserType.CUSTOMER), agent)
    with pytest.raises(ForbiddenError):
        service.link_identity(LinkIdentity(str(uuid.uuid4()), Platform.TELEGRAM, "1"), agent)
    with pytest.raises(ForbiddenError):
        service.list_channels(agent)


def test_channel_credentials_are_checked_and_a_refusal_changes_nothing(service: IdentityService) -> None:
    verifier = service.verifier
    assert isinstance(verifier, RecordingVerifier)
    channel = service.create_channel(CreateChannel(Platform.WHATSAPP, "line", dict(WHATSAPP)), ADMIN)
    assert verifier.checked == [(Platform.WHATSAPP, WHATSAPP)]
    verifier.refuse = True
    rotated = {**WHATSAPP, "access_token": "new"}
    with pytest.raises(ValidationFailedError):
        service.update_channel(UpdateChannel(channel.channel_id, {"name": "renamed"}, rotated), ADMIN)
    assert service.get_channel(channel.channel_id, ADMIN).name == "line"
    with pytest.raises(ValidationFailedError):
        service.create_channel(CreateChannel(Platform.TELEGRAM, "bot", dict(WHATSAPP)), ADMIN)  # wrong shape
    with pytest.raises(NotFoundError):
        service.delete_channel(str(uuid.uuid4()), ADMIN)


def test_api_keys_and_jwts(service: IdentityService, users: InMemoryUserRepository) -> None:
    agent = service.create_user(CreateUser("Agent", UserType.AGENT), ADMIN)
    key, raw = service.create_api_key(CreateApiKey("k", Role.AGENT, agent.user_id), ADMIN)
    authenticator = Authenticator(service.keys, users, FixedTokens(TokenClaims(agent.user_id, None)))
    assert authenticator.authenticate(f"Bearer {raw}") == Principal(key.key_id, Role.AGENT, agent.user_id)
    service.revoke_api_key(key.key_id, ADMIN)
    with pytest.raises(UnauthorizedError):
        authenticator.authenticate(f"Bearer {raw}")
    assert authenticator.authenticate("Bearer a.b.c") == Principal(f"jwt:{agent.user_id}", Role.AGENT, agent.user_id)
    for claims in (
        TokenClaims(agent.user_id, "root"),
        TokenClaims("nobody", "admin"),
        TokenClaims(str(uuid.uuid4()), None),
    ):
        with pytest.raises(UnauthorizedError):
            Authenticator(service.keys, users, FixedTokens(claims)).authenticate("Bearer a.b.c")
    users.users[agent.user_id] = dataclasses.replace(users.users[agent.user_id], active=False)
    with pytest.raises(UnauthorizedError):
        authenticator.authenticate("Bearer a.b.c")
    for header in (None, "", "Basic abc", "Bearer ", "Bearer c4a_unknown"):
        with pytest.raises(UnauthorizedError):
            authenticator.authenticate(header)
