"""Request rates per credential in Redis: one token bucket per key, one round trip per request, on Redis's clock."""

from __future__ import annotations

from typing import TYPE_CHECKING

import redis

from chat4all.adapters.fail_open import SKIP_AFTER_FAILURE_SECONDS, FailOpen
from chat4all.ports import RequestLimiter

if TYPE_CHECKING:
    from redis.commands.core import Script

# Redis's own TIME makes every function instance share one clock.
NOW_LUA = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
"""

# take_token(bucket, hold, tokens a second, the bucket's size): the seconds until a token is there (0 when one was
# taken). While the key is held (HOLD_SCRIPT), the answer is the rest of the hold and no token is taken.
BUCKET_LUA = """
local function take_token(bucket, hold, rate, size)
  local held = tonumber(redis.call('GET', hold) or '0')
  if now < held then
    return held - now
  end
  local state = redis.call('HMGET', bucket, 'tokens', 'at')
  local tokens = tonumber(state[1]) or size
  local at = tonumber(state[2]) or now
  tokens = math.min(size, tokens + math.max(0, now - at) * rate)
  local wait = 0
  if tokens >= 1 then
    tokens = tokens - 1
  else
    wait = (1 - tokens) / rate
  end
  redis.call('HSET', bucket, 'tokens', tostring(tokens), 'at', tostring(now))
  redis.call('EXPIRE', bucket, 2)
  return wait
end
"""

# KEYS[1] the bucket, KEYS[2] its hold; ARGV[1] tokens a second, ARGV[2] the bucket's size (else the rate). Returns
# the wait as a string: a Lua number returned to Redis is cut to an integer.
BUCKET_SCRIPT = (
    NOW_LUA
    + BUCKET_LUA
    + """
local rate = tonumber(ARGV[1])
return tostring(take_token(KEYS[1], KEYS[2], rate, tonumber(ARGV[2]) or rate))
"""
)

# KEYS[1] the hold (the time it ends); ARGV[1] seconds. A longer hold already there stays. Returns 1 when the
# previous hold ended less than REHOLD_WINDOW_SECONDS ago (refused again right after its retry-after), else 0.
HOLD_SCRIPT = (
    NOW_LUA
    + """
local previous = tonumber(redis.call('GET', KEYS[1]) or '0')
local again = 0
if previous > 0 and previous <= now and now - previous < tonumber(ARGV[2]) then again = 1 end
local ends = math.max(previous, now + tonumber(ARGV[1]))
redis.call('SET', KEYS[1], tostring(ends), 'PX', math.ceil((ends - now + tonumber(ARGV[2])) * 1000))
return again
"""
)
REHOLD_WINDOW_SECONDS = 60.0


class RedisRequestLimiter(RequestLimiter):
    def __init__(self, client: redis.Redis, *, skip_after_failure: float = SKIP_AFTER_FAILURE_SECONDS) -> None:
        self._script: Script = client.register_script(BUCKET_SCRIPT)
        self._hold: Script = client.register_script(HOLD_SCRIPT)
        self._redis = FailOpen("request limits unavailable; requests are not limited", skip_after_failure)

    def wait_seconds(self, key: str, per_second: int, burst: int | None = None) -> float:
        if self._redis.skipping():
            return 0.0
        try:
            args = [per_second] if burst is None else [per_second, burst]
            answer = self._script(keys=[bucket_key(key), hold_key(key)], args=args)
        except redis.RedisError as exc:
            self._redis.failed(exc)
            return 0.0
        return float(answer.decode() if isinstance(answer, bytes) else answer)

    def hold(self, key: str, seconds: float) -> bool:
        if self._redis.skipping() or seconds <= 0:
            return False
        try:
            again = self._hold(keys=[hold_key(key)], args=[seconds, REHOLD_WINDOW_SECONDS])
        except redis.RedisError as exc:
            self._redis.failed(exc)
            return False
        return bool(int(again))


# one hash tag for a key's bucket and its hold (and a channel's breaker, chat4all.adapters.breakers): on a Redis
# cluster they are in one slot, as a script needs
def bucket_key(key: str) -> str:
    return f"chat4all:{{{key}}}"


def hold_key(key: str) -> str:
    return f"chat4all:{{{key}}}:hold"
