"""Each port's contract, checked against both of its implementations: the in-memory fake the unit tests use
and the real adapter (PostgreSQL, MongoDB) against the real servers of the integration suite's platform.

A test here takes `ports` and runs twice, `[fake]` and `[real]`; the real run is marked `integration` and
starts (or shares) the session's platform. Where the two disagree the real adapter is the truth: the fake is
fixed. The real adapters get databases of their own on the session's servers (see `real_adapters`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest

from chat4all.domain.models import (
    ApiKey,
    ChannelConfig,
    Conversation,
    ConversationType,
    Direction,
    ExternalIdentity,
    Message,
    MessageStatus,
    Participant,
    Platform,
    Role,
    StatusEntry,
    User,
    UserType,
)
from chat4all.ports import AuditEntry
from tests.fakes.in_memory import (
    InMemoryApiKeyRepository,
    InMemoryChannelRepository,
    InMemoryConversationStore,
    InMemoryDeliveryStore,
    InMemoryEventOutbox,
    InMemoryMessageStore,
    InMemoryUserRepository,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

    from chat4all.ports import (
        ApiKeyRepository,
        ChannelRepository,
        ConversationStore,
        DeliveryStore,
        EventOutbox,
        MessageStore,
        UserRepository,
    )
    from devstack.stack import LocalPlatform

# whole milliseconds: MongoDB keeps times to the millisecond
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@dataclass
class Ports:
    """One implementation of each port, wired as the services see them (the fakes share their state the way
    the real stores share their databases)."""

    kind: str
    users: UserRepository
    channels: ChannelRepository
    api_keys: ApiKeyRepository
    conversations: ConversationStore
    messages: MessageStore
    outbox: EventOutbox
    deliveries: DeliveryStore


def fake_ports() -> Ports:
    users = InMemoryUserRepository()
    conversations = InMemoryConversationStore()
    messages = InMemoryMessageStore(conversations)
    deliveries = InMemoryDeliveryStore()
    return Ports(
        "fake",
        users,
        InMemoryChannelRepository(),
        InMemoryApiKeyRepository(users),
        conversations,
        messages,
        InMemoryEventOutbox(messages, deliveries),
        deliveries,
    )


@pytest.fixture(scope="session")
def real_adapters(platform: LocalPlatform) -> Iterator[Ports]:
    """The adapters as bootstrap wires them for the functions (the app's PostgreSQL role, KMS-encrypted
    credentials), on databases of their own: a PostgreSQL database migrated like the platform's and a MongoDB
    database with its indexes, both dropped afterwards. The contract's rows (users without the services' audit
    entries, say) never meet the integration tests that check the platform's tables as a whole. Made here rather
    than through chat4all.bootstrap, which imports every service: the adapters are what is on trial."""
    from chat4all.adapters.aws import KmsCredentialCipher
    from chat4all.adapters.aws_api import AwsJsonApi, resolve_credentials
    from chat4all.adapters.mongo import (
        MongoConversationStore,
        MongoDeliveryStore,
        MongoEventOutbox,
        MongoMessageStore,
        connect,
        ensure_indexes,
    )
    from chat4all.adapters.postgres import (
        PostgresApiKeyRepository,
        PostgresChannelRepository,
        PostgresDatabase,
        PostgresUserRepository,
        migrate,
    )
    from chat4all.config import Settings
    from devstack.stack import postgres_database, with_database

    settings = Settings.from_env()
    name = f"contract_{uuid.uuid4().hex[:12]}"
    owner_url = platform.urls["postgres"]
    postgres_database(owner_url, name, drop=False, create=True)
    owner = PostgresDatabase(with_database(owner_url, name))
    migrate(owner)
    owner.close()
    postgres = PostgresDatabase(with_database(settings.database_url, name))
    mongo_client = connect(settings.mongodb_uri).client
    db = mongo_client[name]
    ensure_indexes(db)
    kms = AwsJsonApi(
        "kms", region=settings.aws_region, endpoint_url=settings.aws_endpoint_url, credentials=resolve_credentials()
    )
    yield Ports(
        "real",
        PostgresUserRepository(postgres),
        PostgresChannelRepository(postgres, KmsCredentialCipher(kms, settings.require("credentials_key_id"))),
        PostgresApiKeyRepository(postgres),
        MongoConversationStore(db),
        MongoMessageStore(db),
        # events kept on a message are the relay's at once (the live path's grace is a setting, not the contract)
        MongoEventOutbox(db, relay_after=timedelta(0)),
        MongoDeliveryStore(db),
    )
    postgres.close()
    mongo_client.drop_database(name)
    mongo_client.close()
    postgres_database(owner_url, name, drop=True, create=False)


@pytest.fixture(params=[pytest.param("fake"), pytest.param("real", marks=pytest.mark.integration)])
def ports(request: pytest.FixtureRequest) -> Ports:
    if request.param == "fake":
        return fake_ports()
    real: Ports = request.getfixturevalue("real_adapters")
    return real


# ------------------------------------------------------------------ what the tests store


def new_id() -> str:
    return str(uuid.uuid4())


def audit(action: str = "test", entity_id: str = "") -> AuditEntry:
    return AuditEntry(actor="contract-test", action=action, entity_type="test", entity_id=entity_id or new_id())


def a_user(*, phone: str | None = None, email: str | None = None, at: datetime = T0, active: bool = True) -> User:
    return User(new_id(), "Someone", UserType.CUSTOMER, email, phone, {}, active, at, at)


def an_identity(
    user_id: str, platform: Platform = Platform.WHATSAPP, *, account: str | None = None, verified: bool = False
) -> ExternalIdentity:
    account = account or unique_number()
    return ExternalIdentity(new_id(), user_id, platform, account, verified, T0)


def unique_number() -> str:
    """A WhatsApp number (E.164 digits without the "+") nobody else in the session has."""
    return "55" + str(uuid.uuid4().int)[:11]


def whatsapp_credentials() -> dict[str, str]:
    return {
        "access_token": f"EAAG-{uuid.uuid4().hex}",
        "phone_number_id": str(uuid.uuid4().int)[:15],
        "app_secret": uuid.uuid4().hex,
        "verify_token": uuid.uuid4().hex,
    }


def telegram_credentials() -> dict[str, str]:
    return {"bot_token": f"{str(uuid.uuid4().int)[:10]}:AAH{uuid.uuid4().hex}", "secret_token": uuid.uuid4().hex}


def a_channel(
    platform: Platform = Platform.WHATSAPP, *, enabled: bool = True, at: datetime = T0, name: str = "line"
) -> ChannelConfig:
    credentials = whatsapp_credentials() if platform is Platform.WHATSAPP else telegram_credentials()
    return ChannelConfig(new_id(), platform, name, credentials, enabled, at, at)


def an_api_key(user_id: str | None = None, role: Role = Role.AGENT) -> tuple[ApiKey, str]:
    return ApiKey(new_id(), "key", role, user_id, T0), uuid.uuid4().hex * 2


def a_conversation(
    *user_ids: str,
    kind: ConversationType = ConversationType.ONE_TO_ONE,
    at: datetime = T0,
    channel_id: str | None = None,
) -> Conversation:
    participants = [Participant(user_id, at) for user_id in user_ids]
    return Conversation(new_id(), kind, participants, Platform.WHATSAPP, 0, at, at, channel_id)


def a_message(
    conversation_id: str,
    *,
    direction: Direction = Direction.OUTBOUND,
    at: datetime = T0,
    content: str = "hello",
    platform_message_id: str | None = None,
) -> Message:
    status = MessageStatus.PENDING if direction is Direction.OUTBOUND else MessageStatus.DELIVERED
    return Message(
        new_id(),
        conversation_id,
        new_id(),
        content,
        None,
        Platform.WHATSAPP,
        direction,
        0,
        status,
        [StatusEntry(status, at)],
        at,
        "fingerprint",
        platform_message_id=platform_message_id,
    )
