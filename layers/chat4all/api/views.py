"""Domain objects as the JSON the contract promises (RFC 3339 UTC times, no secrets)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from chat4all.domain.channel_limits import effective_rate_limit
from chat4all.domain.models import MessageStatus, shown_platform_message_id

if TYPE_CHECKING:
    from collections.abc import Sequence

    from _typeshed import DataclassInstance

    from chat4all.domain.models import (
        ApiKey,
        AuditRecord,
        ChannelInfo,
        Conversation,
        Delivery,
        ExternalIdentity,
        Message,
        StatusEntry,
        User,
    )
    from chat4all.services.conversations import ConversationPage, MessagePage
    from chat4all.services.identity import AuditPage, LinkSuggestion
    from chat4all.services.messages import AcceptedMessage


def timestamp(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def fields_view(record: DataclassInstance, **shown: Any) -> dict[str, Any]:
    """Every field of `record` by its name, in its order: as it is, or as `shown` gives it."""
    return {f.name: shown[f.name] if f.name in shown else getattr(record, f.name) for f in dataclasses.fields(record)}


def identity_view(identity: ExternalIdentity) -> dict[str, Any]:
    return fields_view(identity, platform=identity.platform.value, created_at=timestamp(identity.created_at))


def user_view(user: User) -> dict[str, Any]:
    return fields_view(
        user,
        user_type=user.user_type.value,
        created_at=timestamp(user.created_at),
        updated_at=timestamp(user.updated_at),
        external_identities=[identity_view(i) for i in user.external_identities],
    )


def channel_view(channel: ChannelInfo) -> dict[str, Any]:
    """A channel without its credentials: they are write-only."""
    return {
        "channel_id": channel.channel_id,
        "platform": channel.platform.value,
        "name": channel.name,
        "enabled": channel.enabled,
        "default_agent_id": channel.default_agent_id,
        "rate_limit": effective_rate_limit(channel.platform, channel.rate_limit),
        "state": {"breaker": channel.state.breaker.value, "credentials": channel.state.credentials.value},
        "created_at": timestamp(channel.created_at),
        "updated_at": timestamp(channel.updated_at),
    }


def channels_view(channels: list[ChannelInfo]) -> dict[str, Any]:
    return {"items": [channel_view(c) for c in channels]}


def suggestions_view(user_id: str, suggestions: list[LinkSuggestion]) -> dict[str, Any]:
    return {
        "user_id": user_id,
        "items": [{"user": user_view(s.user), "matched_on": s.matched_on} for s in suggestions],
    }


def audit_record_view(record: AuditRecord) -> dict[str, Any]:
    return fields_view(record, at=timestamp(record.at))


def audit_page_view(page: AuditPage) -> dict[str, Any]:
    return {"items": [audit_record_view(r) for r in page.items], "next_cursor": page.next_cursor}


def api_key_view(key: ApiKey, raw_key: str) -> dict[str, Any]:
    return {
        "key_id": key.key_id,
        "api_key": raw_key,
        "name": key.name,
        "role": key.role.value,
        "user_id": key.user_id,
        "rate_limit": key.rate_limit,
        "created_at": timestamp(key.created_at),
    }


def conversation_view(conversation: Conversation) -> dict[str, Any]:
    return {
        "conversation_id": conversation.conversation_id,
        "conversation_type": conversation.conversation_type.value,
        "participants": [
            {"user_id": p.user_id, "joined_at": timestamp(p.joined_at)} for p in conversation.participants
        ],
        "primary_channel": conversation.primary_channel.value,
        "channel_id": conversation.channel_id,
        "message_count": conversation.message_count,
        "last_activity_at": timestamp(conversation.last_activity_at),
        "created_at": timestamp(conversation.created_at),
    }


def status_entry_view(entry: StatusEntry) -> dict[str, Any]:
    view: dict[str, Any] = {"status": entry.status.value, "at": timestamp(entry.at)}
    if entry.detail:
        view["detail"] = entry.detail
    return view


def message_view(message: Message, deliveries: Sequence[Delivery] | None = None) -> dict[str, Any]:
    """The message; given its deliveries (GET /v1/messages/{id}), a GROUP message (one with recipients) adds
    `deliveries` and `delivery_counts` (a history page lists messages without them)."""
    view: dict[str, Any] = {
        "message_id": message.message_id,
        "conversation_id": message.conversation_id,
        "sender_id": message.sender_id,
        "content": message.content,
        "message_type": message.message_type,
        "file_id": message.file_id,
        "direction": message.direction.value,
        "channel": message.channel.value,
        "sequence": message.sequence,
        "status": message.status.value,
        "platform_message_id": shown_platform_message_id(message.channel, message.platform_message_id),
        "error": message.error,
        "created_at": timestamp(message.created_at),
    }
    if message.template is not None:
        view["template"] = message.template  # a WhatsApp template message: {name, language, components?}
    return view | deliveries_view(message, deliveries)


def message_status_view(message: Message, deliveries: Sequence[Delivery] | None = None) -> dict[str, Any]:
    view = {
        "message_id": message.message_id,
        "status": message.status.value,
        "history": [status_entry_view(e) for e in message.history],
    }
    return view | deliveries_view(message, deliveries)


def delivery_view(delivery: Delivery) -> dict[str, Any]:
    platform = delivery.platform
    return {
        "user_id": delivery.user_id,
        "platform": platform.value if platform is not None else None,
        "channel_id": delivery.channel_id,
        "status": delivery.status.value,
        "platform_message_id": (
            shown_platform_message_id(platform, delivery.platform_message_id)
            if platform is not None
            else delivery.platform_message_id
        ),
        "error": delivery.error,
        "history": [status_entry_view(e) for e in delivery.history],
    }


def _not_fanned_out_yet(message: Message, user_id: str) -> dict[str, Any]:
    """A recipient whose delivery is not stored yet (the message was accepted, route has not fanned it out)."""
    return {
        "user_id": user_id,
        "platform": None,
        "channel_id": None,
        "status": MessageStatus.PENDING.value,
        "platform_message_id": None,
        "error": None,
        "history": [{"status": MessageStatus.PENDING.value, "at": timestamp(message.created_at)}],
    }


def deliveries_view(message: Message, deliveries: Sequence[Delivery] | None) -> dict[str, Any]:
    """`deliveries` (one per recipient, by user_id) and `delivery_counts` (every status, 0 included) of a GROUP
    message; nothing for a one-to-one message (no recipients), nor when the deliveries were not read."""
    if message.recipients is None or deliveries is None:
        return {}
    shown = {d.user_id: delivery_view(d) for d in deliveries}
    for user_id in message.recipients:
        if user_id not in shown:
            shown[user_id] = _not_fanned_out_yet(message, user_id)
    items = [shown[user_id] for user_id in sorted(shown)]
    counts = {status.value: 0 for status in MessageStatus}
    for item in items:
        counts[item["status"]] += 1
    return {"deliveries": items, "delivery_counts": counts}


def conversation_page_view(page: ConversationPage) -> dict[str, Any]:
    return {"items": [conversation_view(c) for c in page.items], "next_cursor": page.next_cursor}


def page_view(page: MessagePage) -> dict[str, Any]:
    return {"items": [message_view(m) for m in page.items], "next_cursor": page.next_cursor}


def accepted_view(accepted: AcceptedMessage) -> dict[str, Any]:
    return {
        "message_id": accepted.message_id,
        "conversation_id": accepted.conversation_id,
        "sequence": accepted.sequence,
        "status": str(accepted.status),
        "status_url": accepted.status_url,
    }
