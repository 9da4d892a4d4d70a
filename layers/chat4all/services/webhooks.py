"""Inbound channel webhooks: subscription checks, signature verification and dispatch."""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from chat4all.domain.errors import BadRequestError, CredentialsUnreadableError, ForbiddenError, UnauthorizedError
from chat4all.domain.models import InboundMessage, StatusReport
from chat4all.domain.untrusted import loads_untrusted

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    from chat4all.channels.base import ChannelConnector
    from chat4all.domain.models import ChannelConfig, Platform
    from chat4all.ports import ChannelRepository, EventPublisher
    from chat4all.services.inbound import InboundService

logger = logging.getLogger(__name__)

STATUS_EVENT_SOURCE = "chat4all.channels"
STATUS_EVENT_TYPE = "ChannelStatusReported"


def status_report_detail(report: StatusReport) -> dict[str, Any]:
    detail = asdict(report)
    detail["at"] = report.at.isoformat()
    return detail


class WebhookService:
    """Verifies a platform's webhook against the installed channels and hands its events on."""

    def __init__(
        self,
        channels: ChannelRepository,
        connectors: Mapping[Platform, ChannelConnector],
        events: EventPublisher,
        inbound: InboundService,
    ) -> None:
        self.channels = channels
        self.connectors = connectors
        self.events = events
        self.inbound = inbound

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
        """Verify and dispatch; returns what the body carried. Unsigned or forged bodies change nothing."""
        connector = self.connectors[platform]
        channel = self._signing_channel(connector, platform, headers, raw_body)
        payload = loads_untrusted(raw_body)
        if not isinstance(payload, dict):
            raise BadRequestError("webhook body is not a JSON object")
        events = connector.parse_webhook(payload)
        for event in events:
            if isinstance(event, StatusReport):
                self.events.publish(STATUS_EVENT_TYPE, status_report_detail(event), source=STATUS_EVENT_SOURCE)
            else:
                self.inbound.receive(channel, event)
        return events

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

    def _signing_channel(
        self, connector: ChannelConnector, platform: Platform, headers: Mapping[str, str], raw_body: bytes
    ) -> ChannelConfig:
        for channel in self._readable_channels(platform):
            if connector.verify_webhook(channel.credentials, headers, raw_body):
                return channel
        raise UnauthorizedError(f"{platform} webhook signature does not match any channel")
