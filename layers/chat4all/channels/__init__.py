"""Channel connectors, one module per platform, registered by platform."""

from __future__ import annotations

from chat4all.channels.http import HttpConnector
from chat4all.channels.instagram import InstagramConnector
from chat4all.channels.telegram import TelegramConnector
from chat4all.channels.whatsapp import WhatsAppConnector
from chat4all.domain.models import Platform

CONNECTOR_TYPES: dict[Platform, type[HttpConnector]] = {
    Platform.WHATSAPP: WhatsAppConnector,
    Platform.TELEGRAM: TelegramConnector,
    Platform.INSTAGRAM: InstagramConnector,
}

__all__ = [
    "CONNECTOR_TYPES",
    "HttpConnector",
    "InstagramConnector",
    "TelegramConnector",
    "WhatsAppConnector",
]
