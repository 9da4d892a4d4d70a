"""Composition root: builds adapters and services once per container and hands them to the handlers."""

from __future__ import annotations

import os
from datetime import timedelta
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal, cast

import redis

from chat4all.adapters.aws import (
    EventBridgeCheck,
    EventBridgePublisher,
    KmsCredentialCipher,
    RedisCheck,
    SqsCheck,
    SqsDeadLetterQueue,
    SqsMediaFetchQueue,
    SqsOutboundQueue,
    SqsVisibility,
)
from chat4all.adapters.aws_api import AwsJsonApi, resolve_credentials
from chat4all.adapters.breakers import RedisChannelBreaker
from chat4all.adapters.idempotency import RedisIdempotencyStore
from chat4all.adapters.jwt import JwksTokenVerifier
from chat4all.adapters.limits import RedisRequestLimiter
from chat4all.adapters.mongo import (
    MongoCheck,
    MongoConversationStore,
    MongoDeliveryStore,
    MongoEventOutbox,
    MongoMessageStore,
    connect,
)
from chat4all.adapters.mongo.files import MongoFileStore
from chat4all.adapters.mongo.references import MongoReferenceSource
from chat4all.adapters.postgres import (
    PostgresApiKeyRepository,
    PostgresAuditLog,
    PostgresChannelRepository,
    PostgresCheck,
    PostgresDatabase,
    PostgresUserRepository,
)
from chat4all.adapters.postgres_references import PostgresReferenceTarget
from chat4all.adapters.s3 import S3Api, S3BucketCheck, S3DownloadLinks, S3ObjectStorage
from chat4all.adapters.scanner import ClamdCheck, ClamdScanner
from chat4all.channels import registry
from chat4all.channels.verification import PlatformCredentialVerifier
from chat4all.config import Settings
from chat4all.consumers import consume_batch
from chat4all.services.auth import Authenticator, RequestLimits
from chat4all.services.consistency import ConsistencyCheck
from chat4all.services.conversations import ConversationService
from chat4all.services.delivery import DeliveryService
from chat4all.services.files import FileAttachments, FileService, MediaLinks
from chat4all.services.health import HealthMonitor
from chat4all.services.identity import IdentityService
from chat4all.services.inbound import InboundService
from chat4all.services.media_in import MediaFetcher, MediaIntake
from chat4all.services.messages import MessageService
from chat4all.services.notifications import EventBuffer, EventRelay
from chat4all.services.recovery import RecoveryService
from chat4all.services.statuses import StatusService
from chat4all.services.webhooks import WebhookService

if TYPE_CHECKING:
    from collections.abc import Callable

    from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
    from aws_lambda_powertools.utilities.idempotency.persistence.redis import RedisClientProtocol
    from aws_lambda_powertools.utilities.typing import LambdaContext
    from botocore.credentials import Credentials
    from pymongo.database import Database

    from chat4all.domain.models import Platform
    from chat4all.ports import ChannelConnector, DependencyCheck


@lru_cache
def settings() -> Settings:
    return Settings.from_env()


@lru_cache
def aws_credentials() -> Credentials:
    return resolve_credentials()


@lru_cache
def aws_client(service: Literal["sqs", "events", "kms"]) -> AwsJsonApi:
    config = settings()
    return AwsJsonApi(
        service, region=config.aws_region, endpoint_url=config.aws_endpoint_url, credentials=aws_credentials()
    )


@lru_cache
def postgres() -> PostgresDatabase:
    return PostgresDatabase(settings().database_url)


@lru_cache
def mongo() -> Database[dict[str, Any]]:
    return connect(settings().mongodb_uri)


@lru_cache
def redis_client() -> redis.Redis:
    # the idempotency cache is a fast path only (MongoDB is the record): a Redis in trouble costs a second at most
    return redis.Redis.from_url(settings().redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)


def idempotency_store() -> RedisIdempotencyStore:
    """A store for one idempotent function: Powertools configures a store for the function it decorates,
    so stores are never shared; the Redis connection is."""
    return RedisIdempotencyStore(client=cast("RedisClientProtocol", redis_client()))


# the platforms a deployment adds to the built-ins (CHAT4ALL_CHANNEL_MODULES), registered at cold start
registry.load_modules()


def api_bases() -> dict[Platform, str]:
    """Each registered platform's API base: its definition's variable (WHATSAPP_API_BASE, ...), else its default."""
    return {d.platform: os.environ.get(d.api_base_variable) or d.api_base_default for d in registry.definitions()}


@lru_cache
def connectors() -> dict[Platform, ChannelConnector]:
    return {platform: registry.definition(platform).make_connector(base) for platform, base in api_bases().items()}


@lru_cache
def users() -> PostgresUserRepository:
    return PostgresUserRepository(postgres())


@lru_cache
def channels() -> PostgresChannelRepository:
    cipher = KmsCredentialCipher(aws_client("kms"), settings().require("credentials_key_id"))
    return PostgresChannelRepository(postgres(), cipher)


@lru_cache
def authenticator() -> Authenticator:
    """API keys always; OAuth2 JWTs too when CHAT4ALL_JWT_ISSUER is set. Used by every HTTP function's resolver."""
    config = settings()
    tokens = None
    if config.chat4all_jwt_issuer and config.jwks_url:
        tokens = JwksTokenVerifier(config.chat4all_jwt_issuer, config.chat4all_jwt_audience, config.jwks_url)
    return Authenticator(PostgresApiKeyRepository(postgres()), users(), tokens)


@lru_cache
def request_limits() -> RequestLimits:
    """Each credential's request rate, in Redis (shared by every container); the default from the settings."""
    return RequestLimits(RedisRequestLimiter(redis_client()), settings().chat4all_api_rate_limit)


@lru_cache
def event_publisher() -> EventBridgePublisher:
    return EventBridgePublisher(aws_client("events"), settings().event_bus_name)


@lru_cache
def event_buffer() -> EventBuffer:
    """The events of the current invocation, published together when its handler flushes them."""
    return EventBuffer(event_publisher(), MongoEventOutbox(mongo()))


@lru_cache
def event_relay() -> EventRelay:
    return EventRelay(event_publisher(), MongoEventOutbox(mongo()))


@lru_cache
def outbound_queue() -> SqsOutboundQueue:
    return SqsOutboundQueue(aws_client("sqs"), settings().require("route_queue_url"))


@lru_cache
def identity_service() -> IdentityService:
    return IdentityService(
        users(),
        channels(),
        PostgresApiKeyRepository(postgres()),
        conversations=MongoConversationStore(mongo()),
        audit_log=PostgresAuditLog(postgres()),
        verifier=PlatformCredentialVerifier(api_bases()),
        breakers=channel_breakers(),
    )


@lru_cache
def channel_breakers() -> RedisChannelBreaker:
    """Every channel's circuit breaker, in Redis (shared by every container)."""
    return RedisChannelBreaker(redis_client())


@lru_cache
def conversation_service() -> ConversationService:
    db = mongo()
    return ConversationService(MongoConversationStore(db), MongoMessageStore(db), users(), channels())


@lru_cache
def message_service() -> MessageService:
    db = mongo()
    return MessageService(
        MongoMessageStore(db),
        MongoConversationStore(db),
        users(),
        outbound_queue(),
        MongoDeliveryStore(db),
        files=FileAttachments(MongoFileStore(db), MongoConversationStore(db)),
    )


@lru_cache
def delivery_service() -> DeliveryService:
    db = mongo()
    return DeliveryService(
        MongoMessageStore(db),
        MongoConversationStore(db),
        users(),
        channels(),
        connectors(),
        event_buffer(),
        deliveries=MongoDeliveryStore(db),
        queue=outbound_queue(),
        trouble_window=timedelta(seconds=settings().delivery_trouble_seconds),
        breaker=channel_breakers(),
        limiter=channel_limiter(),
        delivery_window=timedelta(seconds=settings().chat4all_delivery_window_seconds),
        media=media_links(),
    )


@lru_cache
def channel_limiter() -> RedisRequestLimiter:
    """Every channel's token bucket and platform holds, in Redis (shared by every container)."""
    return RedisRequestLimiter(redis_client())


@lru_cache
def route_dead_letters() -> SqsDeadLetterQueue:
    return SqsDeadLetterQueue(aws_client("sqs"), settings().require("route_dead_letter_queue_url"))


@lru_cache
def sqs_visibility() -> SqsVisibility:
    return SqsVisibility(aws_client("sqs"))


def consume(
    event: dict[str, Any], context: LambdaContext, record_handler: Callable[[SQSRecord], None], *, queue_url: str
) -> dict[str, Any]:
    """A standard queue's batch through `consume_batch` with this container's visibility changes, and the batch's
    events published in one PutEvents as it ends."""
    return dict(
        consume_batch(
            event,
            context,
            record_handler,
            fifo=False,
            queue_url=queue_url,
            visibility=sqs_visibility(),
            events=event_buffer(),
        )
    )


@lru_cache
def status_service() -> StatusService:
    db = mongo()
    return StatusService(MongoMessageStore(db), event_buffer(), MongoConversationStore(db), MongoDeliveryStore(db))


@lru_cache
def recovery_service() -> RecoveryService:
    return RecoveryService(
        MongoMessageStore(mongo()),
        outbound_queue(),
        status_service(),
        event_buffer(),
        pending_after_seconds=settings().sweep_pending_after_seconds,
        deliveries=MongoDeliveryStore(mongo()),
    )


@lru_cache
def webhook_service() -> WebhookService:
    db = mongo()
    inbound = InboundService(
        users(), MongoConversationStore(db), MongoMessageStore(db), event_buffer(), media=media_intake()
    )
    return WebhookService(channels(), connectors(), event_publisher(), inbound)


def media_intake() -> MediaIntake | None:
    """An inbound file's record and its fetch job on the file-events queue (None where files are not configured)."""
    config = settings()
    if not config.files_bucket or not config.file_events_queue_url:
        return None
    return MediaIntake(
        MongoFileStore(mongo()), SqsMediaFetchQueue(aws_client("sqs"), settings().require("file_events_queue_url"))
    )


@lru_cache
def health_monitor() -> HealthMonitor:
    return HealthMonitor(dependency_checks())


def dependency_checks() -> list[DependencyCheck]:
    config = settings()
    checks: list[DependencyCheck] = [
        PostgresCheck(postgres()),
        MongoCheck(mongo()),
        RedisCheck(redis_client()),
        SqsCheck(aws_client("sqs"), config.require("route_queue_url")),
        EventBridgeCheck(aws_client("events"), config.event_bus_name),
    ]
    # files (issue 18): S3 where the files bucket is configured, the malware scanner where one is
    if config.files_bucket:
        checks.append(S3BucketCheck(s3_api(), config.require("files_bucket")))
    if config.clamd_address:
        checks.append(ClamdCheck(config.clamd_address))
    return checks


# ------------------------------------------------------------------ files (issue 18)


@lru_cache
def s3_api() -> S3Api:
    config = settings()
    return S3Api(region=config.aws_region, endpoint_url=config.aws_endpoint_url, credentials=aws_credentials())


@lru_cache
def file_service() -> FileService:
    from chat4all.adapters.thumbnails import PillowThumbnailer  # Pillow: only the files function imports it

    config = settings()
    db = mongo()
    storage = S3ObjectStorage(s3_api(), config.require("files_bucket"))
    scanner = ClamdScanner(config.clamd_address) if config.clamd_address else None
    return FileService(MongoFileStore(db), storage, MongoConversationStore(db), scanner, PillowThumbnailer())


@lru_cache
def media_fetcher() -> MediaFetcher:
    """Inbound files fetched from their platforms with their channel's credentials, into the files bucket."""
    storage = S3ObjectStorage(s3_api(), settings().require("files_bucket"))
    return MediaFetcher(MongoFileStore(mongo()), storage, channels(), connectors())


@lru_cache
def consistency_check() -> ConsistencyCheck:
    """The cross-database check (services/consistency.py): MongoDB read in pages, PostgreSQL asked in batches."""
    return ConsistencyCheck(MongoReferenceSource(mongo()), PostgresReferenceTarget(postgres()))


def media_links() -> MediaLinks | None:
    """A file message's file by link for the platforms (None where no files bucket is configured)."""
    config = settings()
    if not config.files_bucket:
        return None
    return MediaLinks(MongoFileStore(mongo()), S3DownloadLinks(s3_api(), config.require("files_bucket")).presign_get)
