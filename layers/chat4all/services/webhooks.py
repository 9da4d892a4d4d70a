"""Inbound channel webhooks: subscription checks, signature verification and dispatch."""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from chat4all.domain.credentials import channel_keys, webhook_secret_digest
from chat4all.domain.errors import BadRequestError, CredentialsUnreadableError, ForbiddenError, UnauthorizedError
from chat4all.domain.models import InboundMessage, StatusReport
from chat4all.domain.untrusted import loads_untrusted
from chat4all.domain.wire import STATUS_EVENT_SOURCE, STATUS_EVENT_TYPE, status_event_detail
from chat4all.telemetry import current_correlation_id

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    from chat4all.domain.models import ChannelConfig, Platform
    from chat4all.ports import ChannelConnector, ChannelRepository, EventPublisher
    from chat4all.services.inbound import InboundService

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class WebhookService:
    """Verifies a platform's webhook against the installed channels and hands its events on."""

    channels: ChannelRepository
    connectors: Mapping[Platform, ChannelConnector]
    events: EventPublisher
    inbound: InboundService

    def subscription_challenge(self, platform: Platform, params: Mapping[str, str]) -> str:
        connector = self.connectors[platform]
        for channel in self._readable_channels(platform):
            challenge = connector.subscription_challenge(channel.credentials, params)
            if challenge is not None:
                return challenge
        raise ForbiddenError("verify token does not match any channel")

    def receive(
        self, platform: Platform, headers: Mapping[str, str], raw_body: bytes
    ) -> list[InboundMessage | StatusReport]:
        """Attribute the webhook to the channel it names, verify it with that channel's secret only, and
        dispatch it; returns what the body carried. Unsigned, forged or misattributed bodies change nothing."""
        connector = self.connectors[platform]
        if connector.webhook_secret_header is not None:
            # Telegram: the bot is named by the secret token its webhooks carry, not by the body
            secret = headers.get(connector.webhook_secret_header)
            channel = self._channel(platform, secret_digest=webhook_secret_digest(secret)) if secret else None
            if channel is None or not connector.verify_webhook(channel.credentials, headers, raw_body):
                raise UnauthorizedError(f"{platform} webhook secret token does not match any channel")
            account = channel_keys(platform, channel.credentials)[0]
            attributed = {account: channel}
            events = connector.parse_webhook(_object(raw_body), account_id=account)
        else:
            payload = _object(raw_body)
            attributed = {}
            for account in connector.account_ids(payload) or [""]:
                named = self._channel(platform, account_id=account) if account else None
                if named is None or not connector.verify_webhook(named.credentials, headers, raw_body):
                    raise UnauthorizedError(f"{platform} webhook is not signed by the channel it names")
                attributed[account] = named
            events = connector.parse_webhook(payload)
        if any((event.account_id or "") not in attributed for event in events):
            raise UnauthorizedError(f"{platform} webhook names an account its signature was not checked for")
        for event in events:
            channel = attributed[event.account_id or ""]
            if isinstance(event, StatusReport):
                # the webhook request's correlation id travels with the report (the status lines add the message's)
                report = dataclasses.replace(
                    event, channel_id=channel.channel_id, correlation_id=current_correlation_id()
                )
                detail = status_event_detail(report)
                self.events.publish(STATUS_EVENT_TYPE, detail, source=STATUS_EVENT_SOURCE)
            else:
                self.inbound.receive(channel, event)
        return events

    def _channel(
        self, platform: Platform, *, account_id: str | None = None, secret_digest: str | None = None
    ) -> ChannelConfig | None:
        """The enabled channel with this account or webhook secret digest, decrypting that one only.

        Channels stored before the lookup columns existed are backfilled the first time a webhook misses.
        """
        for attempt in range(2):
            try:
                if account_id is not None:
                    channel = self.channels.channel_for_account(platform, account_id)
                else:
                    channel = self.channels.channel_for_webhook_secret(platform, secret_digest or "")
            except CredentialsUnreadableError:
                logger.warning("webhook refused: the %s channel it names cannot decrypt its credentials", platform)
                return None
            if channel is not None or attempt or not self.channels.backfill_webhook_keys(platform):
                return channel
        return None

    def _readable_channels(self, platform: Platform) -> Iterator[ChannelConfig]:
        """The enabled channels of a platform whose credentials decrypt; one that does not blocks no other."""
        for ref in self.channels.enabled_channel_refs(platform):
            try:
                channel = self.channels.get_channel(ref.channel_id)
            except CredentialsUnreadableError:
                logger.warning("channel %s skipped: its credentials cannot be decrypted", ref.channel_id)
                continue
            if channel is not None:
                yield channel


def _object(raw_body: bytes) -> dict[str, Any]:
    payload = loads_untrusted(raw_body)
    if not isinstance(payload, dict):
        raise BadRequestError("webhook body is not a JSON object")
    return payload
