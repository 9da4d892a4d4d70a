"""Domain events as notifications: published after the record is written, never at its expense."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from chat4all.domain.models import utcnow

if TYPE_CHECKING:
    from chat4all.domain.models import Message, MessageStatus
    from chat4all.ports import EventPublisher

logger = logging.getLogger(__name__)


def event_detail(message: Message, status: MessageStatus | None = None) -> dict[str, str]:
    return {
        "message_id": message.message_id,
        "conversation_id": message.conversation_id,
        "status": (status or message.status).value,
        "channel": message.channel.value,
        "at": utcnow().isoformat(),
    }


def notify(
    events: EventPublisher,
    detail_type: str,
    message: Message,
    status: MessageStatus | None = None,
    **extra: str,
) -> None:
    """Publish a message event. The message store is the record: a failed publish is logged, and the
    operation that wrote the record (and must not be repeated, like a send) still succeeds."""
    try:
        events.publish(detail_type, {**event_detail(message, status), **extra})
    except Exception:
        logger.exception("could not publish %s for %s", detail_type, message.message_id)
