"""How fast each platform lets one installed channel send: the default of a channel's `rate_limit`, the
`rate_limit` of the platform's definition (each cited beside its definition too). The built-ins' published
figures (read 2026-12):

- WhatsApp Cloud API: "For each registered business phone number, Cloud API supports up to 80 messages per
  second (mps) by default, and up to 1,000 mps by automatic upgrade"; past it error 130429. Sending too fast to
  one user is the pair rate limit, error 131056. (developers.facebook.com, WhatsApp Business Platform,
  "Throughput", updated May 21, 2026.)
- Telegram Bot API: "the API will not allow more than 30 messages per second or so" to many users, and about
  one message per second in one chat (Telegram Bot FAQ, "My bot is hitting limits"); past it HTTP 429 with
  `parameters.retry_after`.
- Instagram (Messenger API for Instagram, Send API): 300 calls per second per Instagram professional account
  for text, links, reactions and stickers, 10 per second for audio or video (developers.facebook.com,
  "Messenger Platform rate limits", updated Mar 23, 2026).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from chat4all.domain.platforms import definition

if TYPE_CHECKING:
    from chat4all.domain.models import Platform


def effective_rate_limit(platform: Platform, rate_limit: int | None) -> int:
    """A channel's messages per second: its own setting, else its platform's published default (its definition's
    `rate_limit`)."""
    return rate_limit or definition(platform).rate_limit


def channel_limit_key(channel_id: str) -> str:
    """The key of a channel's token bucket and its platform's holds (RequestLimiter, ChannelBreaker.admit)."""
    return f"channel:{channel_id}"
