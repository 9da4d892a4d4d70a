"""Messages people send us on a platform: who sent them, which conversation, stored once; a photo, document or
video with a file of the conversation whose bytes queued work fetches (services/media_in.py)."""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from typing import TYPE_CHECKING

from chat4all.domain.errors import ConflictError, DependencyUnavailableError
from chat4all.domain.models import (
    Conversation,
    ConversationType,
    Direction,
    ExternalIdentity,
    Message,
    MessageStatus,
    Participant,
    Platform,
    StatusEntry,
    User,
    UserType,
    utcnow,
)
from chat4all.domain.platforms import definition
from chat4all.ports import AuditEntry
from chat4all.services.notifications import collect, message_event

if TYPE_CHECKING:
    from chat4all.domain.models import ChannelConfig, InboundMessage
    from chat4all.ports import ConversationStore, EventPublisher, MessageStore, UserRepository
    from chat4all.services.media_in import MediaIntake

# message ids of inbound messages derive from the platform's id, so a replayed webhook maps to the same message
INBOUND_NAMESPACE = uuid.UUID("5d0b3c1e-9a47-4c43-8c2b-3f1f6c1d2a10")


def inbound_message_id(platform: Platform, platform_message_id: str) -> str:
    return str(uuid.uuid5(INBOUND_NAMESPACE, f"{platform}:{platform_message_id}"))


@dataclasses.dataclass
class InboundService:
    """Matches the sender to a user (creating a CUSTOMER when unknown) and the message to a conversation."""

    users: UserRepository
    conversations: ConversationStore
    messages: MessageStore
    events: EventPublisher
    # inbound files (issue 18): None where no files bucket is configured (a file message keeps its type only)
    media: MediaIntake | None = None

    def receive(self, channel: ChannelConfig, inbound: InboundMessage) -> Message | None:
        """Store the message; None when it was stored before (a replayed webhook changes nothing)."""
        message_id = inbound_message_id(inbound.platform, inbound.platform_message_id)
        if self.messages.get_message(message_id) is not None:
            return None
        sender_id = self._sender(channel, inbound)
        conversation = self._conversation_on(channel, sender_id)
        content = inbound.text
        file_id = None
        if inbound.media is not None and self.media is not None:
            # a file record in the conversation and the job that fetches its bytes; the webhook does not wait
            file_id = self.media.accept(channel, inbound, message_id, conversation.conversation_id)
        message = Message(
            message_id=message_id,
            conversation_id=conversation.conversation_id,
            sender_id=sender_id,
            content=content,
            file_id=file_id,
            channel=inbound.platform,
            direction=Direction.INBOUND,
            sequence=0,  # the store gives it the conversation's next sequence as it stores it
            status=MessageStatus.DELIVERED,
            history=[StatusEntry(MessageStatus.DELIVERED, inbound.at)],
            created_at=utcnow(),
            request_fingerprint=hashlib.sha256(f"{inbound.message_type}:{content or ''}".encode()).hexdigest(),
            platform_message_id=inbound.platform_message_id,
            message_type=inbound.message_type,
        )
        # MessageReceived is kept on the message, written with it: published at least once (services/notifications)
        event = message_event("MessageReceived", message, at=message.created_at)
        # the customer's 24-hour window (services/messages.py) runs from WhatsApp's timestamp of this message,
        # written with it
        window = inbound.at if inbound.platform is Platform.WHATSAPP else None
        stored = self.messages.add_message(message, events=[event], inbound_at=window)
        if stored is None:
            return None
        collect(self.events, event)
        return stored

    def _sender(self, channel: ChannelConfig, inbound: InboundMessage) -> str:
        known = self.users.user_id_for(inbound.platform, inbound.platform_user_id)
        if known is not None:
            return known
        now = utcnow()
        user = User(
            user_id=str(uuid.uuid4()),
            display_name=(inbound.sender_name or inbound.platform_user_id)[:200],
            user_type=UserType.CUSTOMER,
            email=None,
            phone=f"+{inbound.platform_user_id}" if definition(inbound.platform).user_id_is_phone else None,
            metadata={},
            active=True,
            created_at=now,
            updated_at=now,
        )
        identity = ExternalIdentity(
            str(uuid.uuid4()), user.user_id, inbound.platform, inbound.platform_user_id, True, now
        )
        audit = AuditEntry(
            f"channel:{channel.channel_id}",
            "user.created_from_inbound",
            "user",
            user.user_id,
            {"platform": inbound.platform.value, "platform_user_id": inbound.platform_user_id},
        )
        try:
            self.users.add_user_with_identity(user, identity, audit)
        except ConflictError:
            # another webhook created this person first
            winner = self.users.user_id_for(inbound.platform, inbound.platform_user_id)
            if winner is None:
                raise DependencyUnavailableError("identity vanished while being created") from None
            return winner
        return user.user_id

    def _conversation_on(self, channel: ChannelConfig, customer_id: str) -> Conversation:
        """The person's open one-to-one conversation on this channel, or a new one with the channel's default
        agent (without one, the customer alone until an agent is added).

        Concurrent first messages of one person agree on the new conversation: its id derives from the channel
        and the person, so only one insert wins and the others read it back.
        """
        found = self.conversations.open_on_channel(customer_id, channel.channel_id)
        if found is not None:
            return found
        now = utcnow()
        participants = [Participant(customer_id, now)]
        if channel.default_agent_id is not None and channel.default_agent_id != customer_id:
            participants.append(Participant(channel.default_agent_id, now))
        conversation = Conversation(
            conversation_id=str(uuid.uuid5(INBOUND_NAMESPACE, f"conversation:{channel.channel_id}:{customer_id}")),
            conversation_type=ConversationType.ONE_TO_ONE,
            participants=participants,
            primary_channel=channel.platform,
            message_count=0,
            last_activity_at=now,
            created_at=now,
            channel_id=channel.channel_id,
        )
        if self.conversations.add_conversation_once(conversation):
            return conversation
        found = self.conversations.open_on_channel(customer_id, channel.channel_id)
        if found is not None:
            return found
        # the derived id is taken by a conversation the person has left since: start a fresh one
        conversation = dataclasses.replace(conversation, conversation_id=str(uuid.uuid4()))
        self.conversations.add_conversation(conversation)
        return conversation
