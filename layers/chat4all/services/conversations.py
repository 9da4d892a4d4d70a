"""Conversations, who is in them, and their history."""

from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from chat4all.domain.errors import ConflictError, FieldError, ForbiddenError, NotFoundError, ValidationFailedError
from chat4all.domain.models import Conversation, ConversationType, Participant, utcnow

if TYPE_CHECKING:
    from chat4all.domain.commands import CreateConversation
    from chat4all.domain.models import Message, Platform, Principal
    from chat4all.ports import ChannelRepository, ConversationStore, MessageStore, UserRepository

PARTICIPANT_LIMITS = {ConversationType.ONE_TO_ONE: (2, 2), ConversationType.GROUP: (3, 100)}
MAX_PAGE = 200


@dataclass(frozen=True)
class MessagePage:
    items: list[Message]
    next_cursor: str | None


@dataclass(frozen=True)
class ConversationPage:
    items: list[Conversation]
    next_cursor: str | None


def encode_cursor(sequence: int) -> str:
    return base64.urlsafe_b64encode(f"seq:{sequence}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        prefix, _, number = raw.partition(":")
        if prefix != "seq":
            raise ValueError(raw)
        return int(number)
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise ValidationFailedError(
            "invalid cursor", errors=[FieldError("before", "not a cursor this API issued")]
        ) from exc


def encode_activity_cursor(conversation: Conversation) -> str:
    raw = f"act:{conversation.last_activity_at.isoformat()}|{conversation.conversation_id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_activity_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        prefix, _, rest = raw.partition(":")
        at, _, conversation_id = rest.partition("|")
        if prefix != "act" or not conversation_id:
            raise ValueError(raw)
        moment = datetime.fromisoformat(at)
        if moment.tzinfo is None:
            raise ValueError(raw)
        return moment, str(uuid.UUID(conversation_id))
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise ValidationFailedError(
            "invalid cursor", errors=[FieldError("before", "not a cursor this API issued")]
        ) from exc


@dataclass
class ConversationService:
    conversations: ConversationStore
    messages: MessageStore
    users: UserRepository
    channels: ChannelRepository

    def create(self, command: CreateConversation, principal: Principal) -> Conversation:
        participants = list(dict.fromkeys(command.participants))
        low, high = PARTICIPANT_LIMITS[command.conversation_type]
        if not low <= len(participants) <= high:
            span = f"exactly {low}" if low == high else f"{low} to {high}"
            raise ValidationFailedError(
                f"a {command.conversation_type} conversation has {span} distinct participants",
                errors=[FieldError("participants", f"{len(participants)} distinct participants given")],
            )
        errors = []
        for index, user_id in enumerate(participants):
            user = self.users.get_user(user_id)
            if user is None or not user.active:
                errors.append(FieldError(f"participants[{index}]", f"no active user {user_id}"))
        if errors:
            raise ValidationFailedError("unknown participants", errors=errors)
        if not principal.is_admin and principal.user_id not in participants:
            raise ForbiddenError("an agent can only create conversations it takes part in")
        channel_id = self._channel_for(command.primary_channel, command.channel_id)
        now = utcnow()
        conversation = Conversation(
            conversation_id=str(uuid.uuid4()),
            conversation_type=command.conversation_type,
            participants=[Participant(user_id, now) for user_id in participants],
            primary_channel=command.primary_channel,
            message_count=0,
            last_activity_at=now,
            created_at=now,
            channel_id=channel_id,
        )
        self.conversations.add_conversation(conversation)
        return conversation

    def _channel_for(self, platform: Platform, channel_id: str | None) -> str:
        """The installed channel a new conversation goes out through: the one named, else the only one enabled."""
        if channel_id is not None:
            channel = self.channels.channel_ref(channel_id)
            if channel is None or channel.platform is not platform or not channel.enabled:
                raise ValidationFailedError(
                    "unknown channel",
                    errors=[FieldError("channel_id", f"no enabled {platform} channel {channel_id}")],
                )
            return channel.channel_id
        enabled = self.channels.enabled_channel_refs(platform)
        if len(enabled) != 1:
            found = "none is" if not enabled else f"{len(enabled)} are"
            raise ValidationFailedError(
                f"name the channel: {found} enabled for {platform}",
                errors=[FieldError("channel_id", f"required unless exactly one {platform} channel is enabled")],
            )
        return enabled[0].channel_id

    def get(self, conversation_id: str, principal: Principal) -> Conversation:
        conversation = self.conversations.get_conversation(conversation_id)
        if conversation is None:
            raise NotFoundError(f"conversation {conversation_id} not found")
        if not principal.is_admin and (
            principal.user_id is None or conversation.participant(principal.user_id) is None
        ):
            raise ForbiddenError("only participants can read this conversation")
        return conversation

    def history(self, conversation_id: str, principal: Principal, *, limit: int, before: str | None) -> MessagePage:
        conversation = self.get(conversation_id, principal)
        if not 1 <= limit <= MAX_PAGE:
            raise ValidationFailedError("limit out of range", errors=[FieldError("limit", f"must be 1 to {MAX_PAGE}")])
        since = None
        if not principal.is_admin and principal.user_id is not None:
            member = conversation.participant(principal.user_id)
            since = member.joined_at if member else None
        upper: int | None
        if before:
            upper = decode_cursor(before)
        else:  # the newest page: below the counter as read with the conversation (no second read for it)
            upper = conversation.last_sequence + 1 if conversation.last_sequence is not None else None
        newest_first = self.messages.conversation_page(
            conversation_id, limit=limit + 1, before_sequence=upper, since=since
        )
        page = newest_first[:limit]
        next_cursor = encode_cursor(page[-1].sequence) if len(newest_first) > limit else None
        return MessagePage(items=list(reversed(page)), next_cursor=next_cursor)

    def list_for(
        self, participant: str | None, principal: Principal, *, limit: int, before: str | None
    ) -> ConversationPage:
        """Conversations newest activity first: an admin's of anyone (or all), an agent's only its own."""
        if not principal.is_admin:
            if participant is not None and participant != principal.user_id:
                raise ForbiddenError("an agent can only list its own conversations")
            participant = principal.user_id
        if not 1 <= limit <= MAX_PAGE:
            raise ValidationFailedError("limit out of range", errors=[FieldError("limit", f"must be 1 to {MAX_PAGE}")])
        found = self.conversations.conversations_page(
            participant, limit=limit + 1, before=decode_activity_cursor(before) if before else None
        )
        items = found[:limit]
        next_cursor = encode_activity_cursor(items[-1]) if len(found) > limit else None
        return ConversationPage(items, next_cursor)

    def add_participant(self, conversation_id: str, user_id: str, principal: Principal) -> Conversation:
        """Add an active user; it sees the history from now on."""
        conversation = self.get(conversation_id, principal)
        user = self.users.get_user(user_id)
        if user is None or not user.active:
            raise ValidationFailedError(
                "unknown participant", errors=[FieldError("user_id", f"no active user {user_id}")]
            )
        capacity = PARTICIPANT_LIMITS[conversation.conversation_type][1]
        added = self.conversations.add_participant(conversation_id, Participant(user_id, utcnow()), capacity)
        if added is not None:
            return added
        current = self.conversations.get_conversation(conversation_id)
        if current is None:
            raise NotFoundError(f"conversation {conversation_id} not found")
        if current.participant(user_id) is not None:
            raise ConflictError(f"user {user_id} is a participant already")
        raise ValidationFailedError(
            f"a {conversation.conversation_type} conversation has at most {capacity} participants",
            errors=[FieldError("user_id", "the conversation is full")],
        )

    def remove_participant(self, conversation_id: str, user_id: str, principal: Principal) -> None:
        """Remove a participant; the last one cannot leave (the conversation would belong to no one)."""
        conversation = self.get(conversation_id, principal)
        if conversation.participant(user_id) is None:
            raise NotFoundError(f"user {user_id} is not a participant of conversation {conversation_id}")
        if self.conversations.remove_participant(conversation_id, user_id) is not None:
            return
        current = self.conversations.get_conversation(conversation_id)
        if current is None or current.participant(user_id) is None:
            raise NotFoundError(f"user {user_id} is not a participant of conversation {conversation_id}")
        raise ValidationFailedError(
            "the last participant cannot be removed", errors=[FieldError("user_id", "the only participant left")]
        )
