"""Request rates per credential in Redis: one token bucket per key, one round trip per request, on Redis's clock."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

import redis

from chat4all.observability import logger
from chat4all.ports import RequestLimiter

if TYPE_CHECKING:
    from redis.commands.core import Script

# KEYS[1] the bucket; ARGV[1] tokens a second, which is also the bucket's size. Redis's own TIME makes every
# function instance share one clock. Returns the seconds until a token is there ("0" when one was taken), as a
# string: a Lua number returned to Redis is cut to an integer.
BUCKET_SCRIPT = """
local rate = tonumber(ARGV[1])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or rate
local at = tonumber(state[2]) or now
tokens = math.min(rate, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], 2)
return tostring(wait)
"""

# after Redis failed to answer, requests go unlimited for this long before it is asked again, so that an outage
# costs one request a socket timeout now and then instead of every request
SKIP_AFTER_FAILURE_SECONDS = 5.0


class RedisRequestLimiter(RequestLimiter):
    def __init__(self, client: redis.Redis, *, skip_after_failure: float = SKIP_AFTER_FAILURE_SECONDS) -> None:
        self._script: Script = client.register_script(BUCKET_SCRIPT)
        self._skip_after_failure = skip_after_failure
        self._skip_until = 0.0
        self._lock = threading.Lock()

    def wait_seconds(self, key: str, per_second: int) -> float:
        if time.monotonic() < self._skip_until:
            return 0.0
        try:
            answer = self._script(keys=[f"chat4all:{key}"], args=[per_second])
        except redis.RedisError as exc:
            with self._lock:
                self._skip_until = time.monotonic() + self._skip_after_failure
            logger.warning("request limits unavailable; requests are not limited", extra={"error": type(exc).__name__})
            return 0.0
        return float(answer.decode() if isinstance(answer, bytes) else answer)
