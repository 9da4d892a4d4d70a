"""Channel connectors, one module per platform; each module registers its platform's definition when it is
imported (`chat4all.channels.registry` has them all, and the modules a deployment adds)."""

from __future__ import annotations

from chat4all.channels.http import HttpConnector
from chat4all.channels.instagram import InstagramConnector
from chat4all.channels.telegram import TelegramConnector
from chat4all.channels.whatsapp import WhatsAppConnector

__all__ = [
    "HttpConnector",
    "InstagramConnector",
    "TelegramConnector",
    "WhatsAppConnector",
]
