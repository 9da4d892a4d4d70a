"""How messages, their history and their kept events, and conversations are stored as MongoDB documents."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from chat4all.domain.models import (
    Conversation,
    ConversationType,
    Delivery,
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
        **({"recipients": list(message.recipients)} if message.recipients is not None else {}),
        **({"template": message.template} if message.template is not None else {}),
        **({"correlation_id": message.correlation_id} if message.correlation_id is not None else {}),
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


def _sending(doc: dict[str, Any]) -> dict[str, Any]:
    """What a message and a GROUP delivery keep alike of their sending: the status history, its last failure and the
    attempt journal (adapters/mongo/attempts.py), as their fields."""
    history = [StatusEntry(MessageStatus(e["status"]), e["at"], e.get("detail")) for e in doc.get("history", [])]
    attempt = doc.get("attempt")
    return {
        "status": MessageStatus(doc["status"]),
        "history": history,
        "platform_message_id": doc.get("platform_message_id"),
        "error": next((e.detail for e in reversed(history) if e.status is MessageStatus.FAILED), None),
        "attempts": int(doc.get("delivery_attempts", 0)),
        "in_flight": (
            DeliveryAttempt(int(doc["delivery_attempts"]), attempt["started_at"], attempt["lease_until"])
            if attempt
            else None
        ),
        "retry_at": doc.get("retry_at"),
        "troubled_since": doc.get("troubled_since"),
        "troubles": int(doc.get("troubles", 0)),
    }


def to_message(doc: dict[str, Any]) -> Message:
    return Message(
        message_id=doc["_id"],
        conversation_id=doc["conversation_id"],
        sender_id=doc["sender_id"],
        content=doc.get("content"),
        file_id=doc.get("file_id"),
        channel=Platform(doc["channel"]),
        direction=Direction(doc["direction"]),
        sequence=doc["sequence"],
        created_at=doc["created_at"],
        request_fingerprint=doc.get("request_fingerprint", ""),
        **_sending(doc),
        message_type=doc.get("message_type", "text"),
        unpublished_events=tuple(
            DomainEvent(e["detail_type"], e["detail"], e["source"], e["id"], doc["_id"])
            for e in doc.get("pending_events", ())
        ),
        recipients=tuple(doc["recipients"]) if doc.get("recipients") is not None else None,
        fanned_out=bool(doc.get("fanned_out", False)),
        template=doc.get("template"),
        correlation_id=doc.get("correlation_id"),
    )


def delivery_doc(delivery: Delivery) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "_id": delivery.delivery_id,
        "message_id": delivery.message_id,
        "conversation_id": delivery.conversation_id,
        "user_id": delivery.user_id,
        "sequence": delivery.sequence,
        "platform": delivery.platform.value if delivery.platform else None,
        "channel_id": delivery.channel_id,
        "address": delivery.address,
        "status": delivery.status.value,
        "history": [entry_doc(e) for e in delivery.history],
        "created_at": delivery.created_at or utcnow(),
        "applied_reports": [],
    }
    if delivery.unpublished_events:
        doc["pending_events"] = event_docs(delivery.unpublished_events)
    return doc


def to_delivery(doc: dict[str, Any]) -> Delivery:
    return Delivery(
        message_id=doc["message_id"],
        conversation_id=doc["conversation_id"],
        user_id=doc["user_id"],
        sequence=int(doc["sequence"]),
        platform=Platform(doc["platform"]) if doc.get("platform") else None,
        channel_id=doc.get("channel_id"),
        **_sending(doc),
        unpublished_events=tuple(
            DomainEvent(e["detail_type"], e["detail"], e["source"], e["id"], doc["message_id"], doc["_id"])
            for e in doc.get("pending_events", ())
        ),
        address=doc.get("address"),
        created_at=doc.get("created_at"),
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
        last_inbound_at=doc.get("last_inbound_at"),
    )
