"""Users, external identities, channels and API keys."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from chat4all.domain.errors import FieldError, NotFoundError, ValidationFailedError
from chat4all.domain.models import ApiKey, ChannelConfig, ExternalIdentity, Role, User, UserType, utcnow
from chat4all.ports import AuditEntry
from chat4all.services.auth import hash_api_key, new_api_key, require_admin

if TYPE_CHECKING:
    from chat4all.domain.commands import CreateApiKey, CreateChannel, CreateUser, LinkIdentity
    from chat4all.domain.models import Principal
    from chat4all.ports import ApiKeyRepository, ChannelRepository, UserRepository


class IdentityService:
    """Owns users and how they are known on each platform, plus channels and keys."""

    def __init__(self, users: UserRepository, channels: ChannelRepository, keys: ApiKeyRepository) -> None:
        self.users = users
        self.channels = channels
        self.keys = keys

    def create_user(self, command: CreateUser, principal: Principal) -> User:
        now = utcnow()
        user = User(
            user_id=str(uuid.uuid4()),
            display_name=command.display_name,
            user_type=command.user_type,
            email=command.email,
            phone=command.phone,
            metadata=command.metadata,
            active=True,
            created_at=now,
            updated_at=now,
        )
        self.users.add_user(user, AuditEntry(principal.key_id, "user.created", "user", user.user_id, _user_data(user)))
        return user

    def get_user(self, user_id: str) -> User:
        user = self.users.get_user(user_id)
        if user is None:
            raise NotFoundError(f"user {user_id} not found")
        return user

    def link_identity(self, command: LinkIdentity, principal: Principal) -> ExternalIdentity:
        self.get_user(command.user_id)
        identity = ExternalIdentity(
            identity_id=str(uuid.uuid4()),
            user_id=command.user_id,
            platform=command.platform,
            platform_user_id=command.platform_user_id,
            verified=command.verified,
            created_at=utcnow(),
        )
        audit = AuditEntry(
            principal.key_id,
            "identity.linked",
            "user",
            command.user_id,
            {
                "identity_id": identity.identity_id,
                "platform": identity.platform.value,
                "platform_user_id": identity.platform_user_id,
                "verified": identity.verified,
            },
        )
        self.users.add_identity(identity, audit)
        return identity

    def create_channel(self, command: CreateChannel, principal: Principal) -> ChannelConfig:
        require_admin(principal)
        now = utcnow()
        channel = ChannelConfig(
            channel_id=str(uuid.uuid4()),
            platform=command.platform,
            name=command.name,
            credentials=command.credentials,
            enabled=command.enabled,
            created_at=now,
            updated_at=now,
        )
        # credentials stay out of the audit trail: it is readable by admins and can never be erased
        audit_data = {"platform": channel.platform.value, "name": channel.name, "enabled": channel.enabled}
        self.channels.add_channel(
            channel, AuditEntry(principal.key_id, "channel.created", "channel", channel.channel_id, audit_data)
        )
        return channel

    def create_api_key(self, command: CreateApiKey, principal: Principal) -> tuple[ApiKey, str]:
        """Returns the key record and the raw key, which is never stored and shown only this once."""
        require_admin(principal)
        if command.role is Role.AGENT:
            if command.user_id is None:
                raise ValidationFailedError(
                    "an agent key is bound to a user", errors=[_field("user_id", "required for role agent")]
                )
            user = self.users.get_user(command.user_id)
            if user is None or not user.active:
                raise ValidationFailedError("no such active user", errors=[_field("user_id", "no such active user")])
            if user.user_type is not UserType.AGENT:
                raise ValidationFailedError(
                    "agent keys belong to AGENT users", errors=[_field("user_id", "not an AGENT user")]
                )
        raw_key = new_api_key()
        key = ApiKey(
            key_id=str(uuid.uuid4()), name=command.name, role=command.role, user_id=command.user_id, created_at=utcnow()
        )
        audit = AuditEntry(
            principal.key_id,
            "api_key.created",
            "api_key",
            key.key_id,
            {"name": key.name, "role": key.role.value, "user_id": key.user_id},
        )
        self.keys.add_key(key, hash_api_key(raw_key), audit)
        return key, raw_key

    def revoke_api_key(self, key_id: str, principal: Principal) -> None:
        require_admin(principal)
        if not self.keys.revoke(key_id, AuditEntry(principal.key_id, "api_key.revoked", "api_key", key_id)):
            raise NotFoundError(f"API key {key_id} not found")

    def ensure_admin_key(self, raw_key: str) -> None:
        """Seed the configured admin key (stored hashed); a no-op when it exists."""
        key_hash = hash_api_key(raw_key)
        if self.keys.find_active(key_hash) is None:
            key = ApiKey(
                key_id=str(uuid.uuid4()), name="bootstrap admin", role=Role.ADMIN, user_id=None, created_at=utcnow()
            )
            self.keys.add_key(
                key, key_hash, AuditEntry("system", "api_key.seeded", "api_key", key.key_id, {"role": "admin"})
            )


def _field(name: str, message: str) -> FieldError:
    return FieldError(name, message)


def _user_data(user: User) -> dict[str, object]:
    return {
        "display_name": user.display_name,
        "user_type": user.user_type.value,
        "email": user.email,
        "phone": user.phone,
    }
