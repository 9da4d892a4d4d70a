"""UserRepository, ChannelRepository and ApiKeyRepository: the fakes and the PostgreSQL adapters agree."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import TYPE_CHECKING

import pytest

from chat4all.domain.credentials import webhook_secret_digest
from chat4all.domain.errors import ConflictError, NotFoundError
from chat4all.domain.models import ChannelInfo, Platform, Role, User
from tests.contract.conftest import (
    T0,
    a_channel,
    a_user,
    an_api_key,
    an_identity,
    audit,
    new_id,
    unique_number,
    whatsapp_credentials,
)

if TYPE_CHECKING:
    from chat4all.domain.models import ChannelConfig
    from tests.contract.conftest import Ports


# ------------------------------------------------------------------ UserRepository


def test_a_user_reads_back_with_its_identities(ports: Ports) -> None:
    user = a_user(phone="+5511988887777", email="Ana@Example.com")
    ports.users.add_user(user, audit())
    identity = an_identity(user.user_id)
    ports.users.add_identity(identity, audit())

    assert ports.users.get_user(user.user_id) == dataclasses.replace(user, external_identities=[identity])
    assert ports.users.get_user(new_id()) is None
    assert ports.users.user_id_for(Platform.WHATSAPP, identity.platform_user_id) == user.user_id
    assert ports.users.user_id_for(Platform.TELEGRAM, identity.platform_user_id) is None
    assert ports.users.identity_of(user.user_id, Platform.WHATSAPP) == identity
    assert ports.users.identity_of(user.user_id, Platform.TELEGRAM) is None


def test_a_user_reads_back_with_every_identity_oldest_first_and_without_any(ports: Ports) -> None:
    user, alone = a_user(), a_user()
    ports.users.add_user(user, audit())
    ports.users.add_user(alone, audit())
    later = dataclasses.replace(an_identity(user.user_id, Platform.TELEGRAM), created_at=T0 + timedelta(minutes=2))
    earlier = dataclasses.replace(an_identity(user.user_id), created_at=T0 + timedelta(minutes=1))
    ports.users.add_identity(later, audit())
    ports.users.add_identity(earlier, audit())

    assert ports.users.get_user(user.user_id) == dataclasses.replace(user, external_identities=[earlier, later])
    assert ports.users.get_user(alone.user_id) == alone


def test_an_account_links_to_one_user_only(ports: Ports) -> None:
    first, second = a_user(), a_user()
    ports.users.add_user(first, audit())
    ports.users.add_user(second, audit())
    identity = an_identity(first.user_id)
    ports.users.add_identity(identity, audit())

    with pytest.raises(ConflictError):
        ports.users.add_identity(an_identity(second.user_id, account=identity.platform_user_id), audit())
    third = a_user()
    with pytest.raises(ConflictError):
        ports.users.add_user_with_identity(
            third, an_identity(third.user_id, account=identity.platform_user_id), audit()
        )
    assert ports.users.get_user(third.user_id) is None  # nothing of it was stored

    fourth = a_user()
    linked = an_identity(fourth.user_id, Platform.TELEGRAM)
    ports.users.add_user_with_identity(fourth, linked, audit())
    assert ports.users.get_user(fourth.user_id) == dataclasses.replace(fourth, external_identities=[linked])


def test_of_two_identities_on_one_platform_the_verified_one_is_the_users(ports: Ports) -> None:
    user = a_user()
    ports.users.add_user(user, audit())
    unverified = an_identity(user.user_id)
    verified = an_identity(user.user_id, verified=True)
    ports.users.add_identity(unverified, audit())
    ports.users.add_identity(verified, audit())

    assert ports.users.identity_of(user.user_id, Platform.WHATSAPP) == verified


def test_update_user_applies_a_change_and_writes_nothing_for_none(ports: Ports) -> None:
    user = a_user()
    ports.users.add_user(user, audit())
    audited: list[tuple[User, User]] = []

    def record(before: User, after: User) -> object:
        audited.append((before, after))
        return audit()

    renamed = ports.users.update_user(
        user.user_id, lambda u: dataclasses.replace(u, display_name="Renamed", updated_at=T0 + timedelta(1)), record
    )
    assert renamed.display_name == "Renamed"
    assert ports.users.get_user(user.user_id) == renamed
    assert ports.users.update_user(user.user_id, lambda u: u, record) == renamed
    assert [(b.display_name, a.display_name) for b, a in audited] == [("Someone", "Renamed")]
    with pytest.raises(NotFoundError):
        ports.users.update_user(new_id(), lambda u: u, record)  # type: ignore[arg-type]


def test_remove_identity_unlinks_the_users_own_identity_only(ports: Ports) -> None:
    user, other = a_user(), a_user()
    ports.users.add_user(user, audit())
    ports.users.add_user(other, audit())
    identity = an_identity(user.user_id)
    ports.users.add_identity(identity, audit())
    removed: list[str] = []

    with pytest.raises(NotFoundError):
        ports.users.remove_identity(other.user_id, identity.identity_id, lambda i: audit())
    ports.users.remove_identity(user.user_id, identity.identity_id, lambda i: removed.append(i.identity_id) or audit())

    assert removed == [identity.identity_id]
    assert ports.users.get_user(user.user_id) == user
    assert ports.users.user_id_for(Platform.WHATSAPP, identity.platform_user_id) is None
    with pytest.raises(NotFoundError):
        ports.users.remove_identity(user.user_id, identity.identity_id, lambda i: audit())


def test_users_sharing_a_phone_or_an_email_oldest_first(ports: Ports) -> None:
    number = unique_number()
    email = f"{new_id()}@example.com"
    me = a_user(phone=f"+{number}", email=email)
    # stored newest first: the answer is in creation order, not in the order they were stored
    by_email = a_user(email=email.upper(), at=T0 + timedelta(minutes=3))
    by_identity = a_user(at=T0 + timedelta(minutes=2))
    by_phone = a_user(phone=f"+{number}", at=T0 + timedelta(minutes=1))
    for user in (me, by_email, by_identity, by_phone, a_user()):
        ports.users.add_user(user, audit())
    ports.users.add_identity(an_identity(by_identity.user_id, account=number), audit())

    found = ports.users.users_sharing(me.user_id, {f"+{number}"}, {email.lower()})

    assert [(u.user_id, matched) for u, matched in found] == [
        (by_phone.user_id, {"phone"}),
        (by_identity.user_id, {"phone"}),
        (by_email.user_id, {"email"}),
    ]
    assert ports.users.users_sharing(me.user_id, set(), set()) == []


# ------------------------------------------------------------------ ChannelRepository


def info(channel: ChannelConfig) -> ChannelInfo:
    return ChannelInfo(
        channel.channel_id,
        channel.platform,
        channel.name,
        channel.enabled,
        channel.default_agent_id,
        channel.created_at,
        channel.updated_at,
    )


def test_a_channel_reads_back_whole_and_by_the_account_its_webhooks_name(ports: Ports) -> None:
    whatsapp, telegram = a_channel(), a_channel(Platform.TELEGRAM)
    ports.channels.add_channel(whatsapp, audit())
    ports.channels.add_channel(telegram, audit())

    assert ports.channels.get_channel(whatsapp.channel_id) == whatsapp
    assert ports.channels.get_channel(new_id()) is None
    assert ports.channels.channel_info(whatsapp.channel_id) == info(whatsapp)
    assert ports.channels.channel_ref(whatsapp.channel_id) is not None
    assert ports.channels.channel_ref(new_id()) is None
    account = whatsapp.credentials["phone_number_id"]
    assert ports.channels.channel_for_account(Platform.WHATSAPP, account) == whatsapp
    assert ports.channels.channel_for_account(Platform.INSTAGRAM, account) is None
    digest = webhook_secret_digest(telegram.credentials["secret_token"])
    assert ports.channels.channel_for_webhook_secret(Platform.TELEGRAM, digest) == telegram
    assert ports.channels.channel_for_webhook_secret(Platform.TELEGRAM, "0" * 64) is None


def test_enabled_channels_of_a_platform_oldest_first_and_disabled_ones_not_found_by_webhooks(ports: Ports) -> None:
    newer, older = a_channel(at=T0 + timedelta(minutes=2)), a_channel()
    off = a_channel(enabled=False, at=T0 + timedelta(minutes=1))
    for channel in (newer, older, off, a_channel(Platform.TELEGRAM)):
        ports.channels.add_channel(channel, audit())
    ours = {newer.channel_id, older.channel_id, off.channel_id}

    assert [c for c in ports.channels.enabled_channels(Platform.WHATSAPP) if c.channel_id in ours] == [older, newer]
    refs = [r.channel_id for r in ports.channels.enabled_channel_refs(Platform.WHATSAPP) if r.channel_id in ours]
    assert refs == [older.channel_id, newer.channel_id]
    listed = [c for c in ports.channels.list_channels() if c.channel_id in ours]
    assert listed == [info(older), info(off), info(newer)]
    assert ports.channels.channel_for_account(Platform.WHATSAPP, off.credentials["phone_number_id"]) is None


def test_a_second_channel_of_an_account_is_refused(ports: Ports) -> None:
    channel = a_channel()
    ports.channels.add_channel(channel, audit())
    again = dataclasses.replace(
        a_channel(), credentials={**whatsapp_credentials(), "phone_number_id": channel.credentials["phone_number_id"]}
    )
    with pytest.raises(ConflictError):
        ports.channels.add_channel(again, audit())
    assert ports.channels.get_channel(again.channel_id) is None

    other = a_channel()
    ports.channels.add_channel(other, audit())
    with pytest.raises(ConflictError):
        ports.channels.update_channel(other.channel_id, lambda i: i, again.credentials, lambda b, a: audit())
    assert ports.channels.get_channel(other.channel_id) == other


def test_update_channel_changes_fields_and_credentials_and_audits_only_a_change(ports: Ports) -> None:
    channel = a_channel()
    ports.channels.add_channel(channel, audit())
    audited: list[tuple[ChannelInfo, ChannelInfo]] = []

    def record(before: ChannelInfo, after: ChannelInfo) -> object:
        audited.append((before, after))
        return audit()

    unchanged = ports.channels.update_channel(channel.channel_id, lambda i: i, None, record)  # type: ignore[arg-type]
    assert unchanged == info(channel)
    assert audited == []

    later = T0 + timedelta(hours=1)
    rotated = whatsapp_credentials()
    renamed = ports.channels.update_channel(
        channel.channel_id,
        lambda i: dataclasses.replace(i, name="renamed", enabled=False, updated_at=later),
        rotated,
        record,  # type: ignore[arg-type]
    )
    expected = dataclasses.replace(channel, name="renamed", enabled=False, updated_at=later, credentials=rotated)
    assert renamed == info(expected)
    assert ports.channels.get_channel(channel.channel_id) == expected
    assert [(b.name, a.name) for b, a in audited] == [("line", "renamed")]
    # the new credentials name the channel now, and it is off: webhooks find it by neither account
    assert ports.channels.channel_for_account(Platform.WHATSAPP, rotated["phone_number_id"]) is None

    with pytest.raises(NotFoundError):
        ports.channels.update_channel(new_id(), lambda i: i, None, record)  # type: ignore[arg-type]


def test_delete_channel_removes_it(ports: Ports) -> None:
    channel = a_channel()
    ports.channels.add_channel(channel, audit())
    deleted: list[str] = []

    ports.channels.delete_channel(channel.channel_id, lambda i: deleted.append(i.channel_id) or audit())

    assert deleted == [channel.channel_id]
    assert ports.channels.get_channel(channel.channel_id) is None
    assert ports.channels.channel_for_account(Platform.WHATSAPP, channel.credentials["phone_number_id"]) is None
    with pytest.raises(NotFoundError):
        ports.channels.delete_channel(channel.channel_id, lambda i: audit())


# ------------------------------------------------------------------ ApiKeyRepository


def test_an_api_key_is_found_by_its_hash_until_revoked(ports: Ports) -> None:
    key, key_hash = an_api_key(None, Role.ADMIN)
    ports.api_keys.add_key(key, key_hash, audit())
    ports.api_keys.add_key(an_api_key(None, Role.ADMIN)[0], key_hash, audit())  # that hash exists: a no-op

    assert ports.api_keys.find_active(key_hash) == key
    assert ports.api_keys.find_active("0" * 64) is None
    assert ports.api_keys.revoke(key.key_id, audit()) is True
    assert ports.api_keys.find_active(key_hash) is None
    assert ports.api_keys.revoke(key.key_id, audit()) is False
    assert ports.api_keys.revoke(new_id(), audit()) is False


def test_an_agents_key_stops_when_its_user_is_deactivated(ports: Ports) -> None:
    agent = a_user()
    ports.users.add_user(agent, audit())
    key, key_hash = an_api_key(agent.user_id)
    ports.api_keys.add_key(key, key_hash, audit())
    assert ports.api_keys.find_active(key_hash) == key

    ports.users.update_user(agent.user_id, lambda u: dataclasses.replace(u, active=False), lambda b, a: audit())
    assert ports.api_keys.find_active(key_hash) is None

    ports.users.update_user(agent.user_id, lambda u: dataclasses.replace(u, active=True), lambda b, a: audit())
    assert ports.api_keys.find_active(key_hash) == key
