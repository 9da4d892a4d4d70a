"""Channel connectors, one module per platform, registered by platform."""

from __future__ import annotations

from chat4all.channels.base import ChannelConnector
from chat4all.channels.instagram import InstagramConnector
from chat4all.channels.telegram import TelegramConnector
from chat4all.channels.whatsapp import WhatsAppConnector
from chat4all.domain.credentials import ChannelCredentials
from chat4all.domain.models import Platform

CONNECTOR_TYPES: dict[Platform, type[ChannelConnector]] = {
    Platform.WHATSAPP: WhatsAppConnector,
    Platform.TELEGRAM: TelegramConnector,
    Platform.INSTAGRAM: InstagramConnector,
}

__all__ = [
    "CONNECTOR_TYPES",
    "ChannelConnector",
    "ChannelCredentials",
    "InstagramConnector",
    "TelegramConnector",
    "WhatsAppConnector",
]
