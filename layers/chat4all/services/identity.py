"""Users, external identities, channels, API keys and the audit log.

Every change is written together with its audit entry (who, what, before/after, request id, source IP) in
one transaction by the repositories; channel credentials never reach an audit entry.
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import TYPE_CHECKING, Any

from chat4all.domain.contact import email_key, phones_of
from chat4all.domain.credentials import parse_credentials
from chat4all.domain.errors import FieldError, NotFoundError, ValidationFailedError
from chat4all.domain.models import ApiKey, ChannelConfig, ExternalIdentity, Role, User, UserType, utcnow
from chat4all.ports import AuditEntry
from chat4all.services.auth import hash_api_key, new_api_key, require_admin, require_can_read_user

if TYPE_CHECKING:
    from chat4all.domain.commands import (
        CreateApiKey,
        CreateChannel,
        CreateUser,
        LinkIdentity,
        UpdateChannel,
        UpdateUser,
    )
    from chat4all.domain.models import AuditRecord, ChannelInfo, Platform, Principal
    from chat4all.ports import (
        ApiKeyRepository,
        AuditLog,
        ChannelBreaker,
        ChannelRepository,
        ConversationStore,
        CredentialVerifier,
        UserRepository,
    )


@dataclasses.dataclass(frozen=True)
class LinkSuggestion:
    user: User
    matched_on: list[str]


@dataclasses.dataclass(frozen=True)
class AuditPage:
    items: list[AuditRecord]
    next_cursor: str | None


@dataclasses.dataclass
class IdentityService:
    """Owns users and how they are known on each platform, plus channels, keys and the audit trail."""

    users: UserRepository
    channels: ChannelRepository
    keys: ApiKeyRepository
    _: dataclasses.KW_ONLY
    conversations: ConversationStore | None = None
    audit_log: AuditLog | None = None
    verifier: CredentialVerifier | None = None
    breakers: ChannelBreaker | None = None

    # ------------------------------------------------------------------ users
    def create_user(self, command: CreateUser, principal: Principal) -> User:
        require_admin(principal)
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
        self.users.add_user(user, audit(principal, "user.created", "user", user.user_id, after=user_data(user)))
        return user

    def get_user(self, user_id: str, principal: Principal | None = None) -> User:
        """The user; an agent may read itself and the people it shares a conversation with (checked first, so
        an agent learns nothing about users outside its conversations, not even whether they exist)."""
        if principal is not None:
            require_can_read_user(principal, user_id, self._share_conversation)
        user = self.users.get_user(user_id)
        if user is None:
            raise NotFoundError(f"user {user_id} not found")
        return user

    def update_user(self, command: UpdateUser, principal: Principal) -> User:
        require_admin(principal)
        changes = dict(command.changes)

        def change(user: User) -> User:
            updated = dataclasses.replace(user, **changes)
            return dataclasses.replace(updated, updated_at=utcnow()) if updated != user else user

        def audited(before: User, after: User) -> AuditEntry:
            action = "user.updated"
            if before.active != after.active:
                action = "user.deactivated" if not after.active else "user.reactivated"
            return audit(principal, action, "user", after.user_id, before=user_data(before), after=user_data(after))

        return self.users.update_user(command.user_id, change, audited)

    def link_identity(self, command: LinkIdentity, principal: Principal) -> ExternalIdentity:
        require_admin(principal)
        self.get_user(command.user_id)
        identity = ExternalIdentity(
            identity_id=str(uuid.uuid4()),
            user_id=command.user_id,
            platform=command.platform,
            platform_user_id=command.platform_user_id,
            verified=command.verified,
            created_at=utcnow(),
        )
        entry = audit(principal, "identity.linked", "user", command.user_id, after=identity_data(identity))
        self.users.add_identity(identity, entry)
        return identity

    def unlink_identity(self, user_id: str, identity_id: str, principal: Principal) -> None:
        require_admin(principal)
        self.users.remove_identity(
            user_id,
            identity_id,
            lambda removed: audit(principal, "identity.unlinked", "user", user_id, before=identity_data(removed)),
        )

    def link_suggestions(self, user_id: str, principal: Principal) -> list[LinkSuggestion]:
        """Other users sharing a phone (E.164, their own or a WhatsApp number) or an email (case-folded)."""
        require_admin(principal)
        user = self.get_user(user_id)
        emails = {email_key(user.email)} if user.email else set()
        matches = self.users.users_sharing(user_id, phones_of(user), emails)
        return [LinkSuggestion(other, sorted(matched)) for other, matched in matches]

    def _share_conversation(self, user_id: str, other_user_id: str) -> bool:
        return self.conversations is not None and self.conversations.share_conversation(user_id, other_user_id)

    # ------------------------------------------------------------------ channels
    def create_channel(self, command: CreateChannel, principal: Principal) -> ChannelInfo:
        require_admin(principal)
        credentials = parse_credentials(command.platform, command.credentials)
        if command.default_agent_id is not None:
            self._require_agent(command.default_agent_id)
        self._verify(command.platform, credentials)
        now = utcnow()
        channel = ChannelConfig(
            channel_id=str(uuid.uuid4()),
            platform=command.platform,
            name=command.name,
            credentials=credentials,
            enabled=command.enabled,
            created_at=now,
            updated_at=now,
            default_agent_id=command.default_agent_id,
            rate_limit=command.rate_limit,
        )
        entry = audit(principal, "channel.created", "channel", channel.channel_id, after=channel_data(channel))
        self.channels.add_channel(channel, entry)
        return self._shown(channel.channel_id)

    def list_channels(self, principal: Principal) -> list[ChannelInfo]:
        require_admin(principal)
        return [self._with_breaker(channel) for channel in self.channels.list_channels()]

    def get_channel(self, channel_id: str, principal: Principal) -> ChannelInfo:
        require_admin(principal)
        return self._shown(channel_id)

    def _shown(self, channel_id: str) -> ChannelInfo:
        channel = self.channels.channel_info(channel_id)
        if channel is None:
            raise NotFoundError(f"channel {channel_id} not found")
        return self._with_breaker(channel)

    def _with_breaker(self, channel: ChannelInfo) -> ChannelInfo:
        if self.breakers is None:
            return channel
        return dataclasses.replace(channel, breaker=self.breakers.state(channel.channel_id))

    def update_channel(self, command: UpdateChannel, principal: Principal) -> ChannelInfo:
        """Rename, enable/disable, set or clear the default agent, rotate credentials (checked with the platform)."""
        current = self.get_channel(command.channel_id, principal)
        credentials = None
        if command.credentials is not None:
            credentials = parse_credentials(current.platform, command.credentials)
        if command.changes.get("default_agent_id") is not None:
            self._require_agent(str(command.changes["default_agent_id"]))
        if credentials is not None:
            self._verify(current.platform, credentials)
        changes = dict(command.changes)

        def change(channel: ChannelInfo) -> ChannelInfo:
            updated = dataclasses.replace(channel, **changes)
            if updated != channel or credentials is not None:
                updated = dataclasses.replace(updated, updated_at=utcnow())
            return updated

        def audited(before: ChannelInfo, after: ChannelInfo) -> AuditEntry:
            after_data = channel_data(after)
            rotated_only = credentials is not None and channel_data(before) == after_data
            action = "channel.credentials_rotated" if rotated_only else "channel.updated"
            if credentials is not None:
                after_data["credentials"] = "rotated"  # the fact, never the values
            return audit(principal, action, "channel", after.channel_id, before=channel_data(before), after=after_data)

        updated = self.channels.update_channel(command.channel_id, change, credentials, audited)
        return self._with_breaker(updated)

    def delete_channel(self, channel_id: str, principal: Principal) -> None:
        require_admin(principal)
        self.channels.delete_channel(
            channel_id,
            lambda removed: audit(principal, "channel.deleted", "channel", channel_id, before=channel_data(removed)),
        )

    def _verify(self, platform: Platform, credentials: dict[str, str]) -> None:
        if self.verifier is not None:
            self.verifier.verify(platform, credentials)

    def _require_agent(self, user_id: str) -> None:
        user = self.users.get_user(user_id)
        if user is None or not user.active or user.user_type is not UserType.AGENT:
            raise ValidationFailedError(
                "the default agent must be an active AGENT user",
                errors=[FieldError("default_agent_id", "no active AGENT user with this id")],
            )

    # ------------------------------------------------------------------ API keys
    def create_api_key(self, command: CreateApiKey, principal: Principal) -> tuple[ApiKey, str]:
        """Returns the key record and the raw key, which is never stored and shown only this once."""
        require_admin(principal)
        if command.role is Role.AGENT and command.user_id is None:
            raise ValidationFailedError(
                "an agent key is bound to a user", errors=[FieldError("user_id", "required for role agent")]
            )
        if command.user_id is not None:
            user = self.users.get_user(command.user_id)
            if user is None or not user.active:
                raise ValidationFailedError(
                    "no such active user", errors=[FieldError("user_id", "no active user with this id")]
                )
            if command.role is Role.AGENT and user.user_type is not UserType.AGENT:
                raise ValidationFailedError(
                    "agent keys belong to AGENT users", errors=[FieldError("user_id", "not an AGENT user")]
                )
        raw_key = new_api_key()
        key = ApiKey(
            key_id=str(uuid.uuid4()),
            name=command.name,
            role=command.role,
            user_id=command.user_id,
            created_at=utcnow(),
            rate_limit=command.rate_limit,
        )
        after = {"name": key.name, "role": key.role.value, "user_id": key.user_id, "rate_limit": key.rate_limit}
        self.keys.add_key(
            key, hash_api_key(raw_key), audit(principal, "api_key.created", "api_key", key.key_id, after=after)
        )
        return key, raw_key

    def revoke_api_key(self, key_id: str, principal: Principal) -> None:
        require_admin(principal)
        entry = audit(
            principal, "api_key.revoked", "api_key", key_id, before={"revoked": False}, after={"revoked": True}
        )
        if not self.keys.revoke(key_id, entry):
            raise NotFoundError(f"API key {key_id} not found")

    def ensure_admin_key(self, raw_key: str) -> None:
        ensure_admin_key(self.keys, raw_key)

    # ------------------------------------------------------------------ audit log
    def audit_entries(
        self, principal: Principal, *, entity_id: str | None, limit: int, before: str | None
    ) -> AuditPage:
        """Entries newest first; `next_cursor` pages towards older ones."""
        require_admin(principal)
        if self.audit_log is None:
            raise NotFoundError("the audit log is not readable here")
        before_id = _decode_audit_cursor(before) if before else None
        found = self.audit_log.entries(entity_id=entity_id, limit=limit + 1, before_entry_id=before_id)
        items = found[:limit]
        next_cursor = str(items[-1].entry_id) if len(found) > limit else None
        return AuditPage(items, next_cursor)


def ensure_admin_key(keys: ApiKeyRepository, raw_key: str) -> None:
    """Seed the configured admin key (stored hashed); a no-op when it exists."""
    key_hash = hash_api_key(raw_key)
    if keys.find_active(key_hash) is None:
        key = ApiKey(
            key_id=str(uuid.uuid4()), name="bootstrap admin", role=Role.ADMIN, user_id=None, created_at=utcnow()
        )
        keys.add_key(key, key_hash, AuditEntry("system", "api_key.seeded", "api_key", key.key_id, {"role": "admin"}))


def _decode_audit_cursor(cursor: str) -> int:
    if not cursor.isdigit() or len(cursor) > 18:
        raise ValidationFailedError("invalid cursor", errors=[FieldError("before", "not a cursor this API issued")])
    return int(cursor)


def audit(
    principal: Principal,
    action: str,
    entity_type: str,
    entity_id: str,
    *,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> AuditEntry:
    """The audit entry of a change `principal` makes in the current request."""
    return AuditEntry(
        actor=principal.key_id,
        action=action,
        entity_type=entity_type,
        entity_id=entity_id,
        after=after,
        before=before,
        actor_role=principal.role.value,
        request_id=principal.request_id,
        source_ip=principal.source_ip,
    )


def user_data(user: User) -> dict[str, Any]:
    return {
        "display_name": user.display_name,
        "user_type": user.user_type.value,
        "email": user.email,
        "phone": user.phone,
        "metadata": user.metadata,
        "active": user.active,
    }


def identity_data(identity: ExternalIdentity) -> dict[str, Any]:
    return {
        "identity_id": identity.identity_id,
        "platform": identity.platform.value,
        "platform_user_id": identity.platform_user_id,
        "verified": identity.verified,
    }


def channel_data(channel: ChannelConfig | ChannelInfo) -> dict[str, Any]:
    """A channel as audited: credentials stay out, the trail is readable by admins and can never be erased."""
    return {
        "platform": channel.platform.value,
        "name": channel.name,
        "enabled": channel.enabled,
        "default_agent_id": channel.default_agent_id,
        "rate_limit": channel.rate_limit,
    }
