"""How messages, their history and their kept events, and conversations are stored as MongoDB documents."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from chat4all.domain.models import (
    Conversation,
    ConversationType,
    DeliveryAttempt,
    Direction,
    DomainEvent,
    Message,
    MessageStatus,
    Participant,
    Platform,
    StatusEntry,
    utcnow,
)

if TYPE_CHECKING:
    from collections.abc import Sequence


def message_doc(message: Message) -> dict[str, Any]:
    return {
        "_id": message.message_id,
        "conversation_id": message.conversation_id,
        "sender_id": message.sender_id,
        "content": message.content,
        "file_id": message.file_id,
        "channel": message.channel.value,
        "direction": message.direction.value,
        "sequence": message.sequence,
        "status": message.status.value,
        "history": [entry_doc(e) for e in message.history],
        "created_at": message.created_at,
        "request_fingerprint": message.request_fingerprint,
        "applied_reports": [],
        "message_type": message.message_type,
        **({"platform_message_id": message.platform_message_id} if message.platform_message_id else {}),
    }


def entry_doc(entry: StatusEntry) -> dict[str, Any]:
    doc: dict[str, Any] = {"status": entry.status.value, "at": entry.at}
    if entry.detail:
        doc["detail"] = entry.detail
    return doc


def event_docs(events: Sequence[DomainEvent]) -> list[dict[str, Any]]:
    now = utcnow()
    return [
        {"id": e.event_id, "source": e.source, "detail_type": e.detail_type, "detail": e.detail, "kept_at": now}
        for e in events
    ]


def pushes(entry: StatusEntry, events: Sequence[DomainEvent]) -> dict[str, Any]:
    """The history entry, and the events that report it, in one update."""
    push: dict[str, Any] = {"history": entry_doc(entry)}
    if events:
        push["pending_events"] = {"$each": event_docs(events)}
    return push


def to_message(doc: dict[str, Any]) -> Message:
    history = [StatusEntry(MessageStatus(e["status"]), e["at"], e.get("detail")) for e in doc.get("history", [])]
    failure = next((e.detail for e in reversed(history) if e.status is MessageStatus.FAILED), None)
    attempt = doc.get("attempt")
    return Message(
        message_id=doc["_id"],
        conversation_id=doc["conversation_id"],
        sender_id=doc["sender_id"],
        content=doc.get("content"),
        file_id=doc.get("file_id"),
        channel=Platform(doc["channel"]),
        direction=Direction(doc["direction"]),
        sequence=doc["sequence"],
        status=MessageStatus(doc["status"]),
        history=history,
        created_at=doc["created_at"],
        request_fingerprint=doc.get("request_fingerprint", ""),
        platform_message_id=doc.get("platform_message_id"),
        error=failure,
        attempts=int(doc.get("delivery_attempts", 0)),
        in_flight=(
            DeliveryAttempt(int(doc["delivery_attempts"]), attempt["started_at"], attempt["lease_until"])
            if attempt
            else None
        ),
        retry_at=doc.get("retry_at"),
        troubled_since=doc.get("troubled_since"),
        troubles=int(doc.get("troubles", 0)),
        message_type=doc.get("message_type", "text"),
        unpublished_events=tuple(
            DomainEvent(e["detail_type"], e["detail"], e["source"], e["id"], doc["_id"])
            for e in doc.get("pending_events", ())
        ),
    )


def to_conversation(doc: dict[str, Any]) -> Conversation:
    return Conversation(
        conversation_id=doc["_id"],
        conversation_type=ConversationType(doc["conversation_type"]),
        participants=[Participant(p["user_id"], p["joined_at"]) for p in doc["participants"]],
        primary_channel=Platform(doc["primary_channel"]),
        message_count=doc.get("message_count", 0),
        last_activity_at=doc["last_activity_at"],
        created_at=doc["created_at"],
        channel_id=doc.get("channel_id"),
        last_sequence=doc.get("last_sequence"),
    )
