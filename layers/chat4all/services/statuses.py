"""Applying delivery status reported by the platforms; status only ever moves forward."""

from __future__ import annotations

from typing import TYPE_CHECKING

from chat4all.domain.errors import StatusTargetMissingError
from chat4all.domain.models import StatusEntry
from chat4all.services.notifications import notify

if TYPE_CHECKING:
    from chat4all.domain.models import StatusReport
    from chat4all.ports import EventPublisher, MessageStore


class StatusService:
    def __init__(self, messages: MessageStore, events: EventPublisher) -> None:
        self.messages = messages
        self.events = events

    def apply(self, report: StatusReport) -> bool:
        """Record a platform's report; True when the message's status moved.

        Raises StatusTargetMissingError when the platform message is not known yet: the report may
        have overtaken the route function's write, so the consumer retries it later.
        """
        message = self.messages.find_by_platform_id(report.platform, report.platform_message_id)
        if message is None:
            raise StatusTargetMissingError(f"no message with {report.platform} id {report.platform_message_id}")
        moved = self.messages.append_status(
            message.message_id, StatusEntry(report.status, report.at, report.detail), dedupe_key=report.dedupe_key
        )
        if moved:
            notify(self.events, "MessageStatusChanged", message, report.status, at=report.at)
        return moved
