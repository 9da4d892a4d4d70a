"""Circuit breakers per installed channel in Redis, shared by every function instance: one round trip a call (two
when the breaker holds anything: its admit, then the record of the outcome). The admit also takes the call's token
from the channel's bucket (chat4all.adapters.limits), in the same script.

A channel's breaker is one Redis hash (`state`, `failures`, `last_failure`, `opened_at`, `probe_until`), moved by
Lua scripts on Redis's own clock, so that every container sees one state and one clock:

- CLOSED: calls go through; a failure that means "the platform is unwell" (5xx, timeouts, no connection, 429
  beyond its retry-after) counts, and FAILURE_THRESHOLD of them with no FAILURE_WINDOW_SECONDS gap between
  them opens the breaker; a success forgets them.
- OPEN: no call goes through until OPEN_SECONDS have passed since it opened.
  A failure reported while it is open (a call that started before it opened) changes nothing.
- HALF_OPEN: one caller gets a probe (leased for PROBE_LEASE_SECONDS, after which another may take it); its
  success closes the breaker, its failure opens it again.

Redis down: every call goes through (the breaker is bypassed, never a reason to stop), and Redis is asked again
after a few seconds (chat4all.adapters.fail_open).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import redis
from aws_lambda_powertools.metrics import MetricUnit

from chat4all.adapters.fail_open import FailOpen
from chat4all.adapters.limits import BUCKET_LUA, NOW_LUA, bucket_key, hold_key
from chat4all.domain.channel_limits import channel_limit_key
from chat4all.domain.models import BreakerState
from chat4all.observability import logger, metrics
from chat4all.ports import ChannelBreaker, ChannelRate, Passage

if TYPE_CHECKING:
    from redis.commands.core import Script

# KEYS[1] the breaker, and with a rate KEYS[2] and KEYS[3] the channel's token bucket and its platform's hold
# (chat4all.adapters.limits); ARGV: open seconds, probe lease seconds, and with a rate its tokens a second and the
# bucket's size. An open breaker (or a probe out) answers before the bucket, so waiting for it takes no token; an
# empty or held bucket answers before a probe is taken. Returns {allowed 0|1, probe 0|1, wait seconds (string),
# state before, blank 0|1 (no breaker state at all: CLOSED with no failure counted), limited 0|1 (the wait is the
# bucket's)}.
ADMIT_SCRIPT = (
    NOW_LUA
    + BUCKET_LUA
    + """
local open_seconds = tonumber(ARGV[1])
local lease = tonumber(ARGV[2])
local b = redis.call('HMGET', KEYS[1], 'state', 'opened_at', 'probe_until')
local state = b[1] or 'CLOSED'
local blank = b[1] and 0 or 1
if state == 'OPEN' then
  local reopen = tonumber(b[2]) + open_seconds
  if now < reopen then
    return {0, 0, tostring(reopen - now), state, 0, 0}
  end
end
local probe_until = tonumber(b[3]) or 0
if state == 'HALF_OPEN' and now < probe_until then
  return {0, 0, tostring(probe_until - now), state, 0, 0}
end
if KEYS[2] then
  local wait = take_token(KEYS[2], KEYS[3], tonumber(ARGV[3]), tonumber(ARGV[4]))
  if wait > 0 then
    return {0, 0, tostring(wait), state, blank, 1}
  end
end
if state == 'CLOSED' then
  return {1, 0, '0', state, blank, 0}
end
redis.call('HSET', KEYS[1], 'state', 'HALF_OPEN', 'probe_until', tostring(now + lease))
return {1, 1, '0', state, 0, 0}
"""
)

# KEYS[1] the breaker; ARGV: 'success' or 'failure', failure threshold, failure window seconds, state TTL
# seconds. Returns {state before, state after}.
RECORD_SCRIPT = (
    NOW_LUA
    + """
local b = redis.call('HMGET', KEYS[1], 'state', 'failures', 'last_failure')
local before = b[1] or 'CLOSED'
local after = before
if ARGV[1] == 'success' then
  after = 'CLOSED'
  redis.call('DEL', KEYS[1])
  return {before, after}
end
if before == 'OPEN' then
  return {before, after}
end
if before == 'HALF_OPEN' then
  after = 'OPEN'
  redis.call('HSET', KEYS[1], 'state', 'OPEN', 'opened_at', tostring(now), 'failures', '0')
else
  local failures = tonumber(b[2]) or 0
  local last = tonumber(b[3]) or 0
  if now - last > tonumber(ARGV[3]) then failures = 0 end
  failures = failures + 1
  if failures >= tonumber(ARGV[2]) then
    after = 'OPEN'
    redis.call('HSET', KEYS[1], 'state', 'OPEN', 'opened_at', tostring(now), 'failures', '0')
  else
    redis.call('HSET', KEYS[1], 'state', 'CLOSED', 'failures', tostring(failures), 'last_failure', tostring(now))
  end
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
return {before, after}
"""
)

FAILURE_THRESHOLD = 5
FAILURE_WINDOW_SECONDS = 30.0
OPEN_SECONDS = 15.0
PROBE_LEASE_SECONDS = 15.0
# a breaker nobody touched for a day is forgotten (CLOSED)
STATE_TTL_SECONDS = 86_400


@dataclass(frozen=True)
class BreakerSettings:
    failure_threshold: int = FAILURE_THRESHOLD
    failure_window_seconds: float = FAILURE_WINDOW_SECONDS
    open_seconds: float = OPEN_SECONDS
    probe_lease_seconds: float = PROBE_LEASE_SECONDS


class RedisChannelBreaker(ChannelBreaker):
    def __init__(self, client: redis.Redis, settings: BreakerSettings | None = None) -> None:
        self.client = client
        self.settings = settings or BreakerSettings()
        self._admit: Script = client.register_script(ADMIT_SCRIPT)
        self._record: Script = client.register_script(RECORD_SCRIPT)
        self._redis = FailOpen("channel breakers unavailable; calls go through")
        # channels whose last admit here found no breaker state: a success then has nothing to forget, and is not
        # sent to Redis (one round trip fewer per call). A failure another instance records meanwhile is then not
        # forgotten by this success, as it is not when it opened the breaker meanwhile.
        self._blank: set[str] = set()

    def admit(self, channel_id: str, rate: ChannelRate | None = None) -> Passage:
        if self._redis.skipping():
            return Passage(allowed=True)
        keys = [_key(channel_id)]
        args: list[float] = [self.settings.open_seconds, self.settings.probe_lease_seconds]
        if rate is not None:
            limit = channel_limit_key(channel_id)
            keys += [bucket_key(limit), hold_key(limit)]
            args += [rate.per_second, rate.burst]
        try:
            allowed, probe, wait, before, blank, limited = self._admit(keys=keys, args=args)
        except redis.RedisError as exc:
            self._redis.failed(exc)
            return Passage(allowed=True)
        if blank:
            self._blank.add(channel_id)
        else:
            self._blank.discard(channel_id)
        if probe:
            _moved(channel_id, _text(before), BreakerState.HALF_OPEN)
        return Passage(allowed=bool(allowed), probe=bool(probe), wait_seconds=float(_text(wait)), limited=bool(limited))

    def record(self, channel_id: str, *, success: bool) -> BreakerState:
        if success and channel_id in self._blank:
            return BreakerState.CLOSED
        self._blank.discard(channel_id)
        if self._redis.skipping():
            return BreakerState.CLOSED
        s = self.settings
        try:
            before, after = self._record(
                keys=[_key(channel_id)],
                args=[
                    "success" if success else "failure",
                    s.failure_threshold,
                    s.failure_window_seconds,
                    STATE_TTL_SECONDS,
                ],
            )
        except redis.RedisError as exc:
            self._redis.failed(exc)
            return BreakerState.CLOSED
        if _text(before) != _text(after):
            _moved(channel_id, _text(before), BreakerState(_text(after)))
        return BreakerState(_text(after))

    def state(self, channel_id: str) -> BreakerState:
        if self._redis.skipping():
            return BreakerState.CLOSED
        try:
            raw = self.client.hget(_key(channel_id), "state")
        except redis.RedisError as exc:
            self._redis.failed(exc)
            return BreakerState.CLOSED
        return BreakerState(_text(raw)) if raw else BreakerState.CLOSED


def _key(channel_id: str) -> str:
    # the hash tag of the channel's bucket and hold: the admit script touches all three (one slot on a cluster)
    return f"{bucket_key(channel_limit_key(channel_id))}:breaker"


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


MOVE_METRICS = {
    BreakerState.OPEN: "ChannelBreakerOpened",
    BreakerState.HALF_OPEN: "ChannelBreakerProbes",
    BreakerState.CLOSED: "ChannelBreakerClosed",
}


def _moved(channel_id: str, before: str, after: BreakerState) -> None:
    logger.warning("channel breaker moved", extra={"channel_id": channel_id, "from": before, "to": str(after)})
    metrics.add_metric(name=MOVE_METRICS[after], unit=MetricUnit.Count, value=1)
