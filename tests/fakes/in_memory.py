"""In-memory implementations of the ports, for unit tests of the services."""

from __future__ import annotations

import dataclasses
import itertools
from abc import abstractmethod
from typing import TYPE_CHECKING, Any

from chat4all.domain.contact import email_key, phones_of
from chat4all.domain.credentials import channel_keys
from chat4all.domain.errors import (
    ConflictError,
    CredentialsUnreadableError,
    DependencyUnavailableError,
    NotFoundError,
)
from chat4all.domain.models import (
    ChannelInfo,
    ChannelRef,
    Conversation,
    ConversationType,
    Delivery,
    DeliveryAttempt,
    Direction,
    DomainEvent,
    Message,
    MessageStatus,
    Participant,
)
from chat4all.ports import (
    ApiKeyRepository,
    AttemptJournal,
    ChannelRepository,
    ConversationStore,
    DeliveryStore,
    EventOutbox,
    EventPublisher,
    MessageStore,
    OutboundQueue,
    PendingJob,
    StoredOutbound,
    UserRepository,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from datetime import datetime

    from chat4all.domain.models import ApiKey, ChannelConfig, ExternalIdentity, Platform, StatusEntry, User
    from chat4all.domain.wire import RouteJob
    from chat4all.ports import AuditEntry, Events, OutboundDraft


class InMemoryUserRepository(UserRepository):
    def __init__(self) -> None:
        self.users: dict[str, User] = {}
        self.identities: list[ExternalIdentity] = []
        self.audit: list[AuditEntry] = []
        self.identity_reads = 0  # identities_of calls: one per fan-out, whatever the number of recipients

    def add_user(self, user: User, audit: AuditEntry) -> None:
        self.users[user.user_id] = user
        self.audit.append(audit)

    def get_user(self, user_id: str) -> User | None:
        user = self.users.get(user_id)
        if user is None:
            return None
        mine = sorted((i for i in self.identities if i.user_id == user_id), key=lambda i: i.created_at)
        return dataclasses.replace(user, external_identities=mine)

    def add_identity(self, identity: ExternalIdentity, audit: AuditEntry) -> None:
        if any(
            (i.platform, i.platform_user_id) == (identity.platform, identity.platform_user_id) for i in self.identities
        ):
            raise ConflictError("linked already")
        self.identities.append(identity)
        self.audit.append(audit)

    def add_user_with_identity(self, user: User, identity: ExternalIdentity, audit: AuditEntry) -> None:
        if self.user_id_for(identity.platform, identity.platform_user_id) is not None:
            raise ConflictError("linked already")
        self.users[user.user_id] = user
        self.identities.append(identity)
        self.audit.append(audit)

    def identity_of(self, user_id: str, platform: Platform) -> ExternalIdentity | None:
        # as PostgreSQL orders them: a verified identity first, then the oldest
        mine = [i for i in self.identities if i.user_id == user_id and i.platform == platform]
        return min(mine, key=lambda i: (not i.verified, i.created_at), default=None)

    def identities_of(self, user_ids: Sequence[str]) -> dict[str, list[ExternalIdentity]]:
        self.identity_reads += 1
        found: dict[str, list[ExternalIdentity]] = {}
        for identity in sorted(self.identities, key=lambda i: (not i.verified, i.created_at)):
            if identity.user_id in user_ids:
                found.setdefault(identity.user_id, []).append(identity)
        return found

    def user_id_for(self, platform: Platform, platform_user_id: str) -> str | None:
        found = next(
            (i for i in self.identities if (i.platform, i.platform_user_id) == (platform, platform_user_id)), None
        )
        return found.user_id if found else None

    def update_user(
        self, user_id: str, change: Callable[[User], User], audit: Callable[[User, User], AuditEntry]
    ) -> User:
        before = self.get_user(user_id)
        if before is None:
            raise NotFoundError(f"user {user_id} not found")
        after = change(before)
        if after != before:
            self.users[user_id] = after
            self.audit.append(audit(before, after))
        return after

    def remove_identity(self, user_id: str, identity_id: str, audit: Callable[[ExternalIdentity], AuditEntry]) -> None:
        found = next((i for i in self.identities if (i.user_id, i.identity_id) == (user_id, identity_id)), None)
        if found is None:
            raise NotFoundError(f"user {user_id} has no identity {identity_id}")
        self.identities.remove(found)
        self.audit.append(audit(found))

    def users_sharing(self, user_id: str, phones: set[str], email_keys: set[str]) -> list[tuple[User, set[str]]]:
        found = []
        for other_id in self.users:
            other = self.get_user(other_id)
            if other is None or other_id == user_id:
                continue
            matched = set()
            if phones_of(other) & phones:
                matched.add("phone")
            if other.email and email_key(other.email) in email_keys:
                matched.add("email")
            if matched:
                found.append((other, matched))
        return sorted(found, key=lambda pair: (pair[0].created_at, pair[0].user_id))[:100]


class InMemoryChannelRepository(ChannelRepository):
    def __init__(self) -> None:
        self.channels: dict[str, ChannelConfig] = {}
        self.audit: list[AuditEntry] = []
        self.unreadable: set[str] = set()  # channels whose credentials no longer decrypt
        self.unavailable = False  # KMS or PostgreSQL down

    def add_channel(self, channel: ChannelConfig, audit: AuditEntry) -> None:
        self._refuse_taken(channel.channel_id, channel.platform, channel.credentials)
        self.channels[channel.channel_id] = channel
        self.audit.append(audit)

    def _refuse_taken(self, channel_id: str, platform: Platform, credentials: dict[str, str]) -> None:
        account, digest = _keys(platform, credentials)
        for other in self.channels.values():
            if other.channel_id == channel_id or other.platform != platform:
                continue
            other_account, other_digest = _keys(other.platform, other.credentials)
            if (account is not None and other_account == account) or (digest is not None and other_digest == digest):
                raise ConflictError(f"another {platform} channel has this account")

    def get_channel(self, channel_id: str) -> ChannelConfig | None:
        if self.unavailable:
            raise DependencyUnavailableError("KMS is unavailable")
        if channel_id in self.unreadable:
            raise CredentialsUnreadableError("credentials cannot be decrypted (KMS NotFoundException)")
        return self.channels.get(channel_id)

    def enabled_channels(self, platform: Platform) -> list[ChannelConfig]:
        refs = self.enabled_channel_refs(platform)
        return [channel for ref in refs if (channel := self.get_channel(ref.channel_id)) is not None]

    def channel_ref(self, channel_id: str) -> ChannelRef | None:
        channel = self.channels.get(channel_id)
        return ChannelRef(channel.channel_id, channel.platform, channel.enabled) if channel else None

    def _oldest_first(self) -> list[ChannelConfig]:
        return sorted(self.channels.values(), key=lambda c: (c.created_at, c.channel_id))

    def enabled_channel_refs(self, platform: Platform) -> list[ChannelRef]:
        enabled = [c for c in self._oldest_first() if c.platform == platform and c.enabled]
        return [ChannelRef(c.channel_id, c.platform, c.enabled) for c in enabled]

    def list_channels(self) -> list[ChannelInfo]:
        return [_info(c) for c in self._oldest_first()]

    def channel_info(self, channel_id: str) -> ChannelInfo | None:
        channel = self.channels.get(channel_id)
        return _info(channel) if channel else None

    def update_channel(
        self,
        channel_id: str,
        change: Callable[[ChannelInfo], ChannelInfo],
        credentials: dict[str, str] | None,
        audit: Callable[[ChannelInfo, ChannelInfo], AuditEntry],
    ) -> ChannelInfo:
        channel = self.channels.get(channel_id)
        if channel is None:
            raise NotFoundError(f"channel {channel_id} not found")
        before = _info(channel)
        after = change(before)
        if after == before and credentials is None:
            return before  # nothing changed: nothing written, nothing audited
        if credentials is not None:
            self._refuse_taken(channel_id, channel.platform, credentials)
            after = dataclasses.replace(after, credentials_rejected=None)
        self.channels[channel_id] = dataclasses.replace(
            channel,
            name=after.name,
            enabled=after.enabled,
            default_agent_id=after.default_agent_id,
            updated_at=after.updated_at,
            credentials=credentials if credentials is not None else channel.credentials,
            rate_limit=after.rate_limit,
            credentials_rejected=after.credentials_rejected,
        )
        self.audit.append(audit(before, after))
        return after

    def reject_credentials(self, channel_id: str, reason: str) -> bool:
        channel = self.channels.get(channel_id)
        if channel is None or channel.credentials_rejected is not None:
            return False
        self.channels[channel_id] = dataclasses.replace(channel, credentials_rejected=reason[:500])
        return True

    def delete_channel(self, channel_id: str, audit: Callable[[ChannelInfo], AuditEntry]) -> None:
        channel = self.channels.pop(channel_id, None)
        if channel is None:
            raise NotFoundError(f"channel {channel_id} not found")
        self.audit.append(audit(_info(channel)))

    def channel_for_account(self, platform: Platform, account_id: str) -> ChannelConfig | None:
        return self._enabled_where(platform, lambda c: _keys(platform, c.credentials)[0] == account_id)

    def channel_for_webhook_secret(self, platform: Platform, secret_digest: str) -> ChannelConfig | None:
        return self._enabled_where(platform, lambda c: _keys(platform, c.credentials)[1] == secret_digest)

    def _enabled_where(self, platform: Platform, match: Callable[[ChannelConfig], bool]) -> ChannelConfig | None:
        for channel in self.channels.values():
            if channel.platform == platform and channel.enabled and match(channel):
                return self.get_channel(channel.channel_id)
        return None

    def backfill_webhook_keys(self, platform: Platform | None = None) -> int:
        return 0  # keys are derived from the credentials on every lookup here


def _keys(platform: Platform, credentials: dict[str, str]) -> tuple[str | None, str | None]:
    """The channel's webhook keys; none for the partial credentials some unit tests give their channels."""
    try:
        return channel_keys(platform, credentials)
    except KeyError:
        return None, None


def _info(channel: ChannelConfig) -> ChannelInfo:
    return ChannelInfo(
        channel.channel_id,
        channel.platform,
        channel.name,
        channel.enabled,
        channel.default_agent_id,
        channel.created_at,
        channel.updated_at,
        channel.rate_limit,
        channel.credentials_rejected,
    )


class InMemoryApiKeyRepository(ApiKeyRepository):
    def __init__(self, users: InMemoryUserRepository | None = None) -> None:
        self.keys: dict[str, tuple[ApiKey, bool]] = {}
        # the users whose keys stop working when they are deactivated (None: every bound user counts as active)
        self.users = users

    def add_key(self, key: ApiKey, key_hash: str, audit: AuditEntry) -> None:
        self.keys.setdefault(key_hash, (key, True))

    def find_active(self, key_hash: str) -> ApiKey | None:
        key, active = self.keys.get(key_hash, (None, False))
        if key is None or not active:
            return None
        if key.user_id is not None and self.users is not None:
            user = self.users.users.get(key.user_id)
            if user is None or not user.active:
                return None
        return key

    def revoke(self, key_id: str, audit: AuditEntry) -> bool:
        for key_hash, (key, active) in self.keys.items():
            if key.key_id == key_id and active:
                self.keys[key_hash] = (key, False)
                return True
        return False


class InMemoryConversationStore(ConversationStore):
    def __init__(self) -> None:
        self.conversations: dict[str, Conversation] = {}
        self.sequences: dict[str, int] = {}

    def add_conversation(self, conversation: Conversation) -> None:
        # stored with its counter at 0, as MongoConversationStore stores it
        self.conversations[conversation.conversation_id] = dataclasses.replace(conversation, last_sequence=0)

    def get_conversation(self, conversation_id: str) -> Conversation | None:
        return self.conversations.get(conversation_id)

    def share_conversation(self, user_id: str, other_user_id: str) -> bool:
        return any(
            c.participant(user_id) is not None and c.participant(other_user_id) is not None
            for c in self.conversations.values()
        )

    def next_sequence(self, conversation_id: str, at: datetime) -> int:
        self.sequences[conversation_id] = self.sequences.get(conversation_id, 0) + 1
        conversation = self.conversations[conversation_id]
        self.conversations[conversation_id] = dataclasses.replace(
            conversation,
            message_count=conversation.message_count + 1,
            last_activity_at=max(at, conversation.last_activity_at),
            last_sequence=self.sequences[conversation_id],
        )
        return self.sequences[conversation_id]

    def add_participant(self, conversation_id: str, participant: Participant, capacity: int) -> Conversation | None:
        conversation = self.conversations.get(conversation_id)
        if (
            conversation is None
            or conversation.participant(participant.user_id) is not None
            or len(conversation.participants) >= capacity
        ):
            return None
        updated = dataclasses.replace(conversation, participants=[*conversation.participants, participant])
        self.conversations[conversation_id] = updated
        return updated

    def remove_participant(self, conversation_id: str, user_id: str) -> Conversation | None:
        conversation = self.conversations.get(conversation_id)
        if conversation is None or conversation.participant(user_id) is None or len(conversation.participants) < 2:
            return None
        remaining = [p for p in conversation.participants if p.user_id != user_id]
        updated = dataclasses.replace(conversation, participants=remaining)
        self.conversations[conversation_id] = updated
        return updated

    def conversations_page(
        self, participant: str | None, *, limit: int, before: tuple[datetime, str] | None
    ) -> list[Conversation]:
        found = [
            c
            for c in self.conversations.values()
            if (participant is None or c.participant(participant) is not None)
            and (before is None or (c.last_activity_at, c.conversation_id) < before)
        ]
        found.sort(key=lambda c: (c.last_activity_at, c.conversation_id), reverse=True)
        return found[:limit]

    def open_on_channel(self, user_id: str, channel_id: str) -> Conversation | None:
        mine = [
            c
            for c in self.conversations.values()
            if c.channel_id == channel_id
            and c.conversation_type is ConversationType.ONE_TO_ONE
            and c.participant(user_id) is not None
        ]
        return max(mine, key=lambda c: c.last_activity_at, default=None)

    def add_conversation_once(self, conversation: Conversation) -> bool:
        if conversation.conversation_id in self.conversations:
            return False
        self.add_conversation(conversation)
        return True


class InMemoryAttemptJournal[Sent: (Message, Delivery)](AttemptJournal[Sent]):
    """The attempt journal over records kept by id, written as MongoAttemptJournal writes it
    (chat4all.adapters.mongo.attempts); the contract tests run the same checks against both."""

    applied: set[str]  # the dedupe keys of the status reports applied

    @abstractmethod
    def _records(self) -> dict[str, Sent]: ...

    @abstractmethod
    def _identify(self, sent: Sent) -> str: ...

    @abstractmethod
    def _keep(self, sent_id: str, events: Sequence[DomainEvent]) -> None:
        """Keep events on their record, written with the change they report (the outbox on the record)."""

    def _settles(self, stored: Sent) -> bool:
        return True

    def _replace(self, sent_id: str, **changes: Any) -> None:
        records = self._records()
        records[sent_id] = dataclasses.replace(records[sent_id], **changes)

    def _open(self, sent_id: str, attempt: int | None) -> bool:
        """The record is PENDING and `attempt` is its open attempt (None: it has none open)."""
        stored = self._records()[sent_id]
        if stored.status is not MessageStatus.PENDING:
            return False
        if attempt is None:
            return stored.in_flight is None
        return stored.in_flight is not None and stored.in_flight.number == attempt

    def begin_attempt(self, sent: Sent, started_at: datetime, lease_until: datetime) -> int | None:
        sent_id = self._identify(sent)
        stored = self._records().get(sent_id)
        if stored is None or not self._open(sent_id, None) or stored.attempts != sent.attempts:
            return None
        number = stored.attempts + 1
        self._replace(sent_id, attempts=number, in_flight=DeliveryAttempt(number, started_at, lease_until))
        return number

    def record_sent(
        self, sent_id: str, attempt: int, entry: StatusEntry, platform_message_id: str, *, events: Events = ()
    ) -> bool:
        if not self._open(sent_id, attempt):  # settled meanwhile: the report kept, and the id
            self.append_status(sent_id, entry)
            self._replace(sent_id, platform_message_id=platform_message_id)
            return False
        self._replace(
            sent_id,
            status=entry.status,
            platform_message_id=platform_message_id,
            history=[*self._records()[sent_id].history, entry],
            in_flight=None,
            retry_at=None,
            troubled_since=None,
            troubles=0,
        )
        self._keep(sent_id, events)
        return True

    def end_attempt(self, sent_id: str, attempt: int, retry_at: datetime, error: str, *, spent: bool = True) -> bool:
        if not self._open(sent_id, attempt):
            return False
        self._replace(sent_id, in_flight=None, retry_at=retry_at, attempts=attempt if spent else attempt - 1)
        return True

    def postpone(self, sent_id: str, retry_at: datetime, troubled_since: datetime, error: str) -> None:
        stored = self._records()[sent_id]
        if not self._open(sent_id, None):
            return  # settled, or an attempt is open: as the real store, it changes nothing then
        since = min(troubled_since, stored.troubled_since or troubled_since)
        self._replace(sent_id, retry_at=retry_at, troubled_since=since, troubles=stored.troubles + 1)

    def settle_failed(
        self, sent_id: str, entry: StatusEntry, *, attempt: int | None = None, events: Events = ()
    ) -> bool:
        stored = self._records()[sent_id]
        if not self._settles(stored) or not self._open(sent_id, attempt):
            return False
        history = [*stored.history, entry]
        failed = {"status": MessageStatus.FAILED, "error": _failure(history), "history": history}
        self._replace(sent_id, **failed, in_flight=None, retry_at=None)
        self._keep(sent_id, events)
        return True

    def append_status(
        self, sent_id: str, entry: StatusEntry, *, dedupe_key: str | None = None, events: Events = ()
    ) -> bool:
        stored = self._records().get(sent_id)
        if stored is None or (dedupe_key is not None and dedupe_key in self.applied):
            return False
        if dedupe_key is not None:
            self.applied.add(dedupe_key)
        moved = stored.status.can_move_to(entry.status)
        history = [*stored.history, entry]
        # the reason of a failure is the last FAILED report's, even one that came too late to move the status
        changes: dict[str, Any] = {"history": history, "error": _failure(history)}
        if moved:
            changes["status"] = entry.status
        self._replace(sent_id, **changes)
        if moved:
            self._keep(sent_id, events)
        return moved


class InMemoryMessageStore(InMemoryAttemptJournal[Message], MessageStore):
    def __init__(self, conversations: InMemoryConversationStore | None = None) -> None:
        self.conversations = conversations or InMemoryConversationStore()
        self.messages: dict[str, Message] = {}
        self.applied: set[str] = set()
        self.kept_events: list[DomainEvent] = []  # events written with their change
        # conversations marked as having a route job, with the mark's time (chat4all.services.route_jobs)
        self.route_marked: dict[str, datetime] = {}

    def add_outbound(self, conversation_id: str, at: datetime, draft: OutboundDraft) -> StoredOutbound | None:
        conversation = self.conversations.get_conversation(conversation_id)
        if conversation is None:
            raise NotFoundError(f"conversation {conversation_id} not found")
        message, events = draft(conversation)
        stored = self.add_message(message, events=events)
        if stored is None:
            return None
        previous = self.route_marked.get(conversation_id)
        marked_at = at.replace(microsecond=at.microsecond // 1000 * 1000)  # MongoDB keeps whole milliseconds
        self.route_marked[conversation_id] = min(marked_at, previous or marked_at)
        return StoredOutbound(stored, previous)

    def release_route_job(self, conversation_id: str) -> bool:
        return self.route_marked.pop(conversation_id, None) is not None

    def finish_route_job(self, conversation_id: str, last_sequence: int) -> bool:
        conversation = self.conversations.get_conversation(conversation_id)
        if conversation is None or conversation.last_sequence != last_sequence:
            return False
        self.route_marked.pop(conversation_id, None)
        return True

    def add_message(
        self, message: Message, *, events: Events = (), inbound_at: datetime | None = None
    ) -> Message | None:
        conversation = self.conversations.get_conversation(message.conversation_id)
        if conversation is None:
            raise NotFoundError(f"conversation {message.conversation_id} not found")
        if message.message_id in self.messages:
            return None
        kept = conversation.last_inbound_at
        if inbound_at is not None and (kept is None or inbound_at > kept):
            self.conversations.conversations[conversation.conversation_id] = dataclasses.replace(
                conversation, last_inbound_at=inbound_at
            )
        sequence = self.conversations.next_sequence(message.conversation_id, message.created_at)
        self.messages[message.message_id] = dataclasses.replace(message, sequence=sequence, unpublished_events=())
        self._keep(message.message_id, events)
        return self.messages[message.message_id]

    def _keep(self, message_id: str, events: Sequence[DomainEvent]) -> None:
        """Keep events on their message, written with the change they report (the outbox on the message)."""
        own = [dataclasses.replace(e, message_id=message_id) for e in events]
        self.kept_events.extend(own)
        message = self.messages[message_id]
        self._replace(message_id, unpublished_events=(*message.unpublished_events, *own))

    def forget_events(self, message_id: str, event_ids: set[str]) -> None:
        """Events the bus took are no longer kept on their message (EventOutbox.published and .remove)."""
        message = self.messages.get(message_id)
        if message is not None:
            kept = tuple(e for e in message.unpublished_events if e.event_id not in event_ids)
            self._replace(message_id, unpublished_events=kept)

    def get_message(self, message_id: str) -> Message | None:
        return self.messages.get(message_id)

    def get_messages(self, message_ids: Sequence[str]) -> dict[str, Message]:
        return {m: self.messages[m] for m in message_ids if m in self.messages}

    def mark_fanned_out(self, message_id: str) -> bool:
        message = self.messages.get(message_id)
        if message is None or message.status is not MessageStatus.PENDING:
            return False
        self._replace(message_id, fanned_out=True)
        return True

    def advance_aggregate(self, message_id: str, entry: StatusEntry, *, events: Events = ()) -> bool:
        message = self.messages.get(message_id)
        if message is None or not message.status.can_move_to(entry.status):
            return False
        history = [*message.history, entry]
        self._replace(message_id, status=entry.status, history=history, error=_failure(history))
        self._keep(message_id, events)
        return True

    def find_by_platform_id(self, platform: Platform, platform_message_id: str) -> Message | None:
        return next(
            (
                m
                for m in self.messages.values()
                if m.channel == platform and m.platform_message_id == platform_message_id
            ),
            None,
        )

    def conversation_page(
        self, conversation_id: str, *, limit: int, before_sequence: int | None, since: datetime | None
    ) -> list[Message]:
        found = [
            m
            for m in self.messages.values()
            if m.conversation_id == conversation_id
            and (before_sequence is None or m.sequence < before_sequence)
            and (since is None or m.created_at >= since)
        ]
        return sorted(found, key=lambda m: m.sequence, reverse=True)[:limit]

    def unsettled(self, conversation_id: str, limit: int) -> list[Message]:
        waiting = sorted(
            (
                m
                for m in self.messages.values()
                if m.conversation_id == conversation_id and m.status is MessageStatus.PENDING and not m.fanned_out
            ),
            key=lambda m: m.sequence,
        )
        return list(itertools.takewhile(lambda m: m.direction is Direction.OUTBOUND, waiting))[:limit]

    def stale_pending(self, created_before: datetime, limit: int) -> list[PendingJob]:
        found = sorted(
            (
                m
                for m in self.messages.values()
                if m.status is MessageStatus.PENDING
                and m.direction is Direction.OUTBOUND
                and not m.fanned_out
                and m.created_at < created_before
            ),
            key=lambda m: m.created_at,
        )[:limit]
        return sorted(
            (PendingJob(m.message_id, m.conversation_id, m.sequence) for m in found),
            key=lambda j: (j.conversation_id, j.sequence),
        )

    def _records(self) -> dict[str, Message]:
        return self.messages

    def _identify(self, sent: Message) -> str:
        return sent.message_id

    def _settles(self, stored: Message) -> bool:
        return not stored.fanned_out  # a fanned-out GROUP message is settled by its deliveries' aggregate


def _failure(history: Sequence[StatusEntry]) -> str | None:
    return next((e.detail for e in reversed(history) if e.status is MessageStatus.FAILED), None)


class InMemoryOutboundQueue(OutboundQueue):
    def __init__(self) -> None:
        self.enqueued: list[tuple[str, str]] = []
        self.rounds: list[tuple[str, list[PendingJob]]] = []  # what requeue took, by round
        self.lane_jobs: list[tuple[str, str, str]] = []  # (message, conversation, recipient) of every lane job
        self.lane_batches: list[list[RouteJob]] = []  # what each enqueue_lanes call carried
        self.refuse_lanes = False

    def enqueue(self, message_id: str, conversation_id: str, *, dedupe_key: str | None = None) -> None:
        self.enqueued.append((message_id, conversation_id))

    def requeue(self, jobs: list[PendingJob], round_id: str) -> int:
        self.rounds.append((round_id, list(jobs)))
        self.enqueued += [(job.message_id, job.conversation_id) for job in jobs if job.user_id is None]
        self.lane_jobs += [(job.message_id, job.conversation_id, job.user_id) for job in jobs if job.user_id]
        return len(jobs)

    def enqueue_lanes(self, jobs: Sequence[RouteJob]) -> list[RouteJob]:
        if self.refuse_lanes:
            return list(jobs)
        self.lane_batches.append(list(jobs))
        self.lane_jobs += [(job.message_id, job.conversation_id, job.user_id or "") for job in jobs]
        return []


class InMemoryEventPublisher(EventPublisher):
    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def publish(self, detail_type: str, detail: dict[str, Any], *, source: str = "chat4all") -> None:
        self.events.append((source, detail_type, detail))


class InMemoryEventOutbox(EventOutbox):
    """Events about no message in an outbox of their own; those about a message are on it in `messages` (with
    no grace: they are pending at once, as MongoEventOutbox with `relay_after=0`)."""

    def __init__(
        self, messages: InMemoryMessageStore | None = None, deliveries: InMemoryDeliveryStore | None = None
    ) -> None:
        self.kept: dict[str, DomainEvent] = {}
        self.messages = messages
        self.deliveries = deliveries
        self._ids = itertools.count(1)

    def keep(self, events: Sequence[DomainEvent]) -> None:
        for event in events:
            if event.message_id is None:  # those about a message are kept on it already
                self.kept[f"e{next(self._ids)}"] = event

    def published(self, events: Sequence[DomainEvent]) -> None:
        for event in events:
            if event.delivery_id is not None:
                if self.deliveries is not None:
                    self.deliveries.forget_events(event.delivery_id, {event.event_id})
            elif event.message_id is not None and self.messages is not None:
                self.messages.forget_events(event.message_id, {event.event_id})

    def pending(self, limit: int) -> list[tuple[str, DomainEvent]]:
        found = list(self.kept.items())
        if self.messages is not None:
            found += [
                (f"{MESSAGE_EVENT}{m.message_id}/{e.event_id}", e)
                for m in self.messages.messages.values()
                for e in m.unpublished_events
            ]
        if self.deliveries is not None:
            found += [
                (f"{DELIVERY_EVENT}{d.delivery_id}/{e.event_id}", e)
                for d in self.deliveries.deliveries.values()
                for e in d.unpublished_events
            ]
        return found[:limit]

    def remove(self, outbox_ids: Sequence[str]) -> None:
        for outbox_id in outbox_ids:
            if outbox_id.startswith(MESSAGE_EVENT) and self.messages is not None:
                message_id, event_id = outbox_id.removeprefix(MESSAGE_EVENT).split("/", 1)
                self.messages.forget_events(message_id, {event_id})
            if outbox_id.startswith(DELIVERY_EVENT) and self.deliveries is not None:
                delivery_id, event_id = outbox_id.removeprefix(DELIVERY_EVENT).split("/", 1)
                self.deliveries.forget_events(delivery_id, {event_id})
            self.kept.pop(outbox_id, None)


# how an outbox id names an event kept on its message or delivery (as MongoEventOutbox names it)
MESSAGE_EVENT = "message:"
DELIVERY_EVENT = "delivery:"


class InMemoryDeliveryStore(InMemoryAttemptJournal[Delivery], DeliveryStore):
    """GROUP deliveries and their lanes, as MongoDeliveryStore keeps them."""

    def __init__(self) -> None:
        self.deliveries: dict[str, Delivery] = {}
        self.applied: set[str] = set()
        self.kept_events: list[DomainEvent] = []
        # lanes: (conversation, recipient) -> fanned_sequence, and the marked ones with the mark's time
        self.fanned: dict[tuple[str, str], int] = {}
        self.marked: dict[tuple[str, str], datetime] = {}
        self.writes: list[str] = []  # the name of each call, to count round trips

    def add_deliveries(self, deliveries: Sequence[Delivery]) -> None:
        self.writes.append("add_deliveries")
        for delivery in deliveries:
            if delivery.delivery_id in self.deliveries:
                continue
            kept = tuple(
                dataclasses.replace(e, message_id=delivery.message_id, delivery_id=delivery.delivery_id)
                for e in delivery.unpublished_events
            )
            self.kept_events.extend(kept)
            self.deliveries[delivery.delivery_id] = dataclasses.replace(delivery, unpublished_events=kept)

    def forget_events(self, delivery_id: str, event_ids: set[str]) -> None:
        delivery = self.deliveries.get(delivery_id)
        if delivery is not None:
            kept = tuple(e for e in delivery.unpublished_events if e.event_id not in event_ids)
            self._replace(delivery_id, unpublished_events=kept)

    def _keep(self, delivery_id: str, events: Sequence[DomainEvent]) -> None:
        delivery = self.deliveries[delivery_id]
        own = [dataclasses.replace(e, message_id=delivery.message_id, delivery_id=delivery_id) for e in events]
        self.kept_events.extend(own)
        self._replace(delivery_id, unpublished_events=(*delivery.unpublished_events, *own))

    def _records(self) -> dict[str, Delivery]:
        return self.deliveries

    def _identify(self, sent: Delivery) -> str:
        return sent.delivery_id

    def deliveries_of(self, message_id: str) -> list[Delivery]:
        return sorted((d for d in self.deliveries.values() if d.message_id == message_id), key=lambda d: d.user_id)

    def get_delivery(self, delivery_id: str) -> Delivery | None:
        return self.deliveries.get(delivery_id)

    def lane_pending(self, conversation_id: str, user_id: str, limit: int) -> list[Delivery]:
        waiting = [
            d
            for d in self.deliveries.values()
            if (d.conversation_id, d.user_id) == (conversation_id, user_id) and d.status is MessageStatus.PENDING
        ]
        return sorted(waiting, key=lambda d: d.sequence)[:limit]

    def find_by_platform_id(self, channel_id: str, platform_message_id: str) -> Delivery | None:
        return next(
            (
                d
                for d in self.deliveries.values()
                if d.channel_id == channel_id and d.platform_message_id == platform_message_id
            ),
            None,
        )

    def status_counts(self, message_id: str) -> dict[MessageStatus, int]:
        counts: dict[MessageStatus, int] = {}
        for delivery in self.deliveries.values():
            if delivery.message_id == message_id:
                counts[delivery.status] = counts.get(delivery.status, 0) + 1
        return counts

    def stale_pending(self, created_before: datetime, limit: int) -> list[PendingJob]:
        found = sorted(
            (
                d
                for d in self.deliveries.values()
                if d.status is MessageStatus.PENDING and d.created_at is not None and d.created_at < created_before
            ),
            key=lambda d: d.created_at or created_before,
        )[:limit]
        lanes: dict[tuple[str, str], PendingJob] = {}
        for d in found:
            key = (d.conversation_id, d.user_id)
            if key not in lanes or d.sequence < lanes[key].sequence:
                lanes[key] = PendingJob(d.message_id, d.conversation_id, d.sequence, d.user_id)
        return [lanes[key] for key in sorted(lanes)]

    def fan_into_lanes(self, conversation_id: str, user_ids: Sequence[str], sequence: int) -> None:
        self.writes.append("fan_into_lanes")
        for user_id in user_ids:
            key = (conversation_id, user_id)
            self.fanned[key] = max(self.fanned.get(key, sequence), sequence)

    def lanes_to_mark(self, conversation_id: str, user_ids: Sequence[str], stale_before: datetime) -> list[str]:
        self.writes.append("lanes_to_mark")
        return [
            u for u in user_ids if (marked := self.marked.get((conversation_id, u))) is None or marked < stale_before
        ]

    def mark_lanes(self, conversation_id: str, user_ids: Sequence[str], at: datetime) -> None:
        self.writes.append("mark_lanes")
        for user_id in user_ids:
            self.marked[(conversation_id, user_id)] = at.replace(microsecond=at.microsecond // 1000 * 1000)

    def release_lanes(self, conversation_id: str, user_ids: Sequence[str]) -> None:
        for user_id in user_ids:
            self.marked.pop((conversation_id, user_id), None)

    def lane_counter(self, conversation_id: str, user_id: str) -> int | None:
        return self.fanned.get((conversation_id, user_id))

    def finish_lane(self, conversation_id: str, user_id: str, fanned_sequence: int) -> bool:
        key = (conversation_id, user_id)
        if self.fanned.get(key) != fanned_sequence:
            return False
        self.marked.pop(key, None)
        return True
