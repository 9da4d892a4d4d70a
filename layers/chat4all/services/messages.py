"""Accepting outbound messages and reading them back."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from chat4all.domain.errors import (
    ConflictError,
    DependencyUnavailableError,
    FieldError,
    ForbiddenError,
    NotFoundError,
    ValidationFailedError,
)
from chat4all.domain.models import (
    ConversationType,
    Direction,
    Message,
    MessageStatus,
    Platform,
    StatusEntry,
    utcnow,
)
from chat4all.services import route_jobs
from chat4all.services.auth import require_self_or_admin
from chat4all.services.notifications import message_event
from chat4all.telemetry import log_context

if TYPE_CHECKING:
    from datetime import datetime

    from chat4all.domain.commands import SendMessage
    from chat4all.domain.models import Conversation, Delivery, DomainEvent, Principal
    from chat4all.ports import ConversationStore, DeliveryStore, MessageStore, OutboundQueue, UserRepository
    from chat4all.services.files import FileAttachments

logger = logging.getLogger(__name__)

# WhatsApp's customer service window: a message other than a template reaches a customer only within 24 hours of
# the customer's last message to the business; outside it WhatsApp refuses it with error 131047 ("Re-engagement
# message"). See docs/GUARANTEES.md, "WhatsApp templates and the 24-hour window".
WHATSAPP_WINDOW = timedelta(hours=24)


class WhatsAppWindowClosedError(ValidationFailedError):
    """A free-form message to a WhatsApp customer who last wrote more than 24 hours ago: a template is needed."""

    title = "Outside WhatsApp's 24-hour window"
    slug = "whatsapp-window-closed"


def whatsapp_window_closed(conversation: Conversation, channel: Platform, now: datetime) -> datetime | None:
    """When the window of this conversation's WhatsApp customer closed, if it has: None while it is open or unknown
    (the customer never wrote here: the message is sent, and WhatsApp's own 131047 fails it if it must).

    A ONE_TO_ONE conversation only: a GROUP message's WhatsApp deliveries are not refused at acceptance (their
    recipients' windows are not on the group's conversation); WhatsApp's 131047 fails that delivery alone.
    """
    if channel is not Platform.WHATSAPP or conversation.conversation_type is not ConversationType.ONE_TO_ONE:
        return None
    if conversation.last_inbound_at is None:
        return None
    closed_at = conversation.last_inbound_at + WHATSAPP_WINDOW
    return closed_at if now > closed_at else None


def template_text(template: dict[str, Any]) -> str:
    """What a template message shows as its `content`: a stand-in naming the template (its text is the one
    approved in WhatsApp Manager, which the platform never sees); `template` has the whole of it."""
    return f"[template {template['name']} ({template['language']})]"


@dataclass(frozen=True)
class AcceptedMessage:
    message_id: str
    conversation_id: str
    sequence: int
    status: MessageStatus
    status_url: str


@dataclass
class MessageService:
    messages: MessageStore
    conversations: ConversationStore
    users: UserRepository
    queue: OutboundQueue
    delivery_store: DeliveryStore | None = None
    # file messages (issue 18): a file_id must be CLEAN and the caller's to send; None - every file_id is 422
    files: FileAttachments | None = None

    def accept(
        self, command: SendMessage, principal: Principal, *, correlation_id: str | None = None
    ) -> AcceptedMessage:
        """Validate, store PENDING with the conversation's next sequence (keeping the request's `correlation_id`),
        and enqueue for delivery; every line it logs names the message and its conversation."""
        with log_context(
            correlation_id=correlation_id, message_id=command.message_id, conversation_id=command.conversation_id
        ):
            return self._accept(command, principal, correlation_id)

    def _accept(self, command: SendMessage, principal: Principal, correlation_id: str | None) -> AcceptedMessage:
        require_self_or_admin(principal, command.sender_id)
        now = utcnow()
        try:
            self._check_sender(command, principal)
            try:
                added = self.messages.add_outbound(
                    command.conversation_id, now, lambda c: _draft(command, c, now, correlation_id)
                )
            except NotFoundError:
                raise ValidationFailedError(
                    "unknown conversation",
                    errors=[FieldError("conversation_id", f"no conversation {command.conversation_id}")],
                ) from None
        except (ValidationFailedError, ForbiddenError):
            # a retry of an accepted message gets its 202 (or a 409) even if the conversation changed since;
            # a new message is not looked up first: the insert itself tells a duplicate (see below)
            if (existing := self.messages.get_message(command.message_id)) is not None:
                return self._replay(existing, command)
            raise
        if added is None:
            # a concurrent request with the same id stored it first: the same answer as a replay
            existing = self.messages.get_message(command.message_id)
            if existing is None:
                raise DependencyUnavailableError(f"message {command.message_id} is being accepted; retry shortly")
            return self._replay(existing, command)
        self._join_file(added.message)
        route_jobs.after_accept(added, self.messages, self.queue)
        logger.info(
            "message accepted", extra={"sequence": added.message.sequence, "channel": str(added.message.channel)}
        )
        # MessageAccepted stays kept on the message: route publishes it with the events of its batch (one
        # PutEvents for both), and the sweeper's relay publishes it should route not come to it in time
        return _accepted(added.message)

    def _check_sender(self, command: SendMessage, principal: Principal) -> None:
        """What can be checked before the conversation is read (in the transaction that stores the message)."""
        if command.file_id is not None:
            if self.files is None:
                raise ValidationFailedError(
                    "file messages are not available here", errors=[FieldError("file_id", "no files configured")]
                )
            self.files.attachable(command.file_id, principal)
        if principal.user_id == command.sender_id:
            return  # authentication found this user active for this very request (services/auth.py)
        sender = self.users.get_user(command.sender_id)
        if sender is None or not sender.active:
            raise ValidationFailedError(
                "unknown sender", errors=[FieldError("sender_id", f"no active user {command.sender_id}")]
            )

    def _join_file(self, message: Message) -> None:
        """A file message's file joins its conversation (again on a replay: the first may have stopped before)."""
        if message.file_id is not None and self.files is not None:
            self.files.join(message.file_id, message.conversation_id)

    def _replay(self, existing: Message, command: SendMessage) -> AcceptedMessage:
        if existing.request_fingerprint != command.fingerprint or existing.sender_id != command.sender_id:
            raise ConflictError(f"message {command.message_id} was accepted before with a different body")
        self._join_file(existing)
        if existing.status is MessageStatus.PENDING and existing.platform_message_id is None:
            # the first attempt may have stored the message and then failed to enqueue it; the route
            # function never sends a message twice, so enqueueing again is safe
            route_jobs.enqueue_again(existing, self.queue)
        return _accepted(existing)

    def get(self, message_id: str, principal: Principal) -> Message:
        message = self.messages.get_message(message_id)
        if message is None:
            raise NotFoundError(f"message {message_id} not found")
        if not principal.is_admin:
            conversation = self.conversations.get_conversation(message.conversation_id)
            member = conversation.participant(principal.user_id) if conversation and principal.user_id else None
            # a participant reads the conversation from its join point on, its messages' statuses too
            if member is None or message.created_at < member.joined_at:
                raise ForbiddenError("only participants can read this message, from the moment they joined")
        return message

    def deliveries(self, message: Message) -> list[Delivery]:
        """A GROUP message's deliveries, one per recipient by user_id (read after `get` checked the caller); none
        for a one-to-one message or a GROUP message not fanned out yet."""
        if message.recipients is None or self.delivery_store is None:
            return []
        return self.delivery_store.deliveries_of(message.message_id)


def _draft(
    command: SendMessage, conversation: Conversation, now: datetime, correlation_id: str | None = None
) -> tuple[Message, list[DomainEvent]]:
    """The message a participant sends into the conversation, as it is stored, and its MessageAccepted."""
    if conversation.participant(command.sender_id) is None:
        raise ForbiddenError("the sender is not a participant of this conversation")
    channel = command.channel_type or conversation.primary_channel
    _check_whatsapp_rules(command, conversation, channel, now)
    message = Message(
        message_id=command.message_id,
        conversation_id=conversation.conversation_id,
        sender_id=command.sender_id,
        content=template_text(command.template) if command.template is not None else command.content,
        file_id=command.file_id,
        channel=channel,
        direction=Direction.OUTBOUND,
        sequence=0,  # the store gives it the conversation's next sequence as it stores it
        status=MessageStatus.PENDING,
        history=[StatusEntry(MessageStatus.PENDING, now)],
        created_at=now,
        request_fingerprint=command.fingerprint,
        # a GROUP's recipients as this transaction reads the conversation: later joiners get later messages only
        recipients=(
            tuple(p.user_id for p in conversation.participants if p.user_id != command.sender_id)
            if conversation.conversation_type is ConversationType.GROUP
            else None
        ),
        message_type="template" if command.template is not None else "text",
        template=command.template,
        correlation_id=correlation_id,
    )
    return message, [message_event("MessageAccepted", message, at=now)]


def _check_whatsapp_rules(command: SendMessage, conversation: Conversation, channel: Platform, now: datetime) -> None:
    """Templates go to one WhatsApp customer; anything else to a WhatsApp customer only within the 24-hour window.

    Checked on the conversation as the accepting transaction reads it (a 422 raised here stores nothing), so an
    inbound message recorded just before it opens the window for this very send.
    """
    if command.template is not None:
        if channel is not Platform.WHATSAPP:
            raise ValidationFailedError(
                f"templates are WhatsApp's; this message goes out on {channel.value}",
                errors=[FieldError("template", f"not available on {channel.value}: send content instead")],
            )
        if conversation.conversation_type is not ConversationType.ONE_TO_ONE:
            raise ValidationFailedError(
                "a template goes to one WhatsApp customer: send it in a ONE_TO_ONE conversation",
                errors=[FieldError("template", "not available in a GROUP conversation")],
            )
        return
    closed_at = whatsapp_window_closed(conversation, channel, now)
    if closed_at is not None:
        assert conversation.last_inbound_at is not None
        raise WhatsAppWindowClosedError(
            "WhatsApp's 24-hour window is closed: the customer last wrote at "
            f"{conversation.last_inbound_at.isoformat()}, more than 24 hours ago, and WhatsApp takes only a "
            "template message until the customer writes again; send `template` instead of content",
            errors=[FieldError("content", "outside WhatsApp's 24-hour window: send a template")],
        )


def _accepted(message: Message) -> AcceptedMessage:
    return AcceptedMessage(
        message_id=message.message_id,
        conversation_id=message.conversation_id,
        sequence=message.sequence,
        status=MessageStatus.PENDING,
        status_url=f"/v1/messages/{message.message_id}/status",
    )
