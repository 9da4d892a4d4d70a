"""A channel's circuit breaker in Redis: shared by every instance, on Redis's clock, bypassed without Redis."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import redis

from chat4all.adapters.breakers import BreakerSettings, RedisChannelBreaker
from chat4all.adapters.limits import RedisRequestLimiter
from chat4all.domain.channel_limits import channel_limit_key
from chat4all.domain.models import BreakerState
from chat4all.ports import ChannelRate
from devstack.processes import free_port

if TYPE_CHECKING:
    from devstack.stack import LocalPlatform

FAST = BreakerSettings(failure_threshold=3, failure_window_seconds=5, open_seconds=0.5, probe_lease_seconds=0.5)


def breakers(platform: LocalPlatform, count: int = 1) -> list[RedisChannelBreaker]:
    """`count` breakers as `count` containers would hold them: each with its own Redis connection."""
    return [RedisChannelBreaker(redis.Redis.from_url(platform.urls["redis"]), FAST) for _ in range(count)]


def test_failures_open_it_for_every_instance_and_a_single_probe_closes_it(platform: LocalPlatform) -> None:
    one, other = breakers(platform, 2)
    channel = str(uuid.uuid4())
    assert one.admit(channel).allowed and one.state(channel) is BreakerState.CLOSED
    # GIVEN three failures recorded by two instances
    assert one.record(channel, success=False) is BreakerState.CLOSED
    assert other.record(channel, success=False) is BreakerState.CLOSED
    assert one.record(channel, success=False) is BreakerState.OPEN
    # THEN no instance may call, and each is told how long to wait
    passage = other.admit(channel)
    assert not passage.allowed and 0 < passage.wait_seconds <= FAST.open_seconds
    assert other.state(channel) is BreakerState.OPEN
    # WHEN the open time has passed, exactly one of many callers gets the probe
    time.sleep(passage.wait_seconds + 0.05)
    with ThreadPoolExecutor(8) as pool:
        passages = list(pool.map(lambda b: b.admit(channel), breakers(platform, 8)))
    assert [p.probe for p in passages].count(True) == 1
    assert [p.allowed for p in passages].count(True) == 1
    assert one.state(channel) is BreakerState.HALF_OPEN
    # AND its success closes the breaker for all
    assert one.record(channel, success=True) is BreakerState.CLOSED
    assert other.admit(channel).allowed and other.state(channel) is BreakerState.CLOSED


def test_a_failed_probe_opens_it_again_and_an_abandoned_probe_is_given_to_another(platform: LocalPlatform) -> None:
    (breaker,) = breakers(platform)
    channel = str(uuid.uuid4())
    for _ in range(FAST.failure_threshold):
        breaker.record(channel, success=False)
    time.sleep(FAST.open_seconds + 0.05)
    assert breaker.admit(channel).probe
    assert breaker.record(channel, success=False) is BreakerState.OPEN
    assert not breaker.admit(channel).allowed
    time.sleep(FAST.open_seconds + 0.05)
    assert breaker.admit(channel).probe  # the probe's caller died without an answer...
    assert not breaker.admit(channel).allowed
    time.sleep(FAST.probe_lease_seconds + 0.05)
    assert breaker.admit(channel).probe  # ...so after its lease another caller probes


def test_failures_further_apart_than_the_window_do_not_add_up_and_a_success_forgets_them(
    platform: LocalPlatform,
) -> None:
    settings = BreakerSettings(failure_threshold=2, failure_window_seconds=0.3, open_seconds=5, probe_lease_seconds=5)
    breaker = RedisChannelBreaker(redis.Redis.from_url(platform.urls["redis"]), settings)
    channel = str(uuid.uuid4())
    breaker.record(channel, success=False)
    time.sleep(0.4)
    assert breaker.record(channel, success=False) is BreakerState.CLOSED
    assert breaker.record(channel, success=True) is BreakerState.CLOSED
    assert breaker.record(channel, success=False) is BreakerState.CLOSED
    # and channels do not share a breaker
    assert breaker.record(channel, success=False) is BreakerState.OPEN
    assert breaker.admit(str(uuid.uuid4())).allowed


class CountingRedis(redis.Redis):
    """A client that keeps the name of every command it sends (a script's call is one EVALSHA)."""

    sent: list[str]

    def execute_command(self, *args: Any, **options: Any) -> Any:
        self.sent.append(str(args[0]))
        return super().execute_command(*args, **options)


def test_a_success_after_an_admit_that_found_no_breaker_state_is_not_sent_to_redis(platform: LocalPlatform) -> None:
    client = CountingRedis.from_url(platform.urls["redis"])
    client.sent = []
    breaker, other = RedisChannelBreaker(client, FAST), breakers(platform)[0]
    channel = str(uuid.uuid4())
    # GIVEN a channel with no breaker state: its admit is the call's one round trip
    assert breaker.admit(channel).allowed
    client.sent.clear()
    assert breaker.record(channel, success=True) is BreakerState.CLOSED
    assert client.sent == []
    # WHEN a failure was counted, the next success is sent and forgets it: a full threshold opens it again
    assert breaker.record(channel, success=False) is BreakerState.CLOSED
    assert breaker.admit(channel).allowed
    client.sent.clear()
    assert breaker.record(channel, success=True) is BreakerState.CLOSED
    assert "EVALSHA" in client.sent
    for _ in range(FAST.failure_threshold - 1):
        assert breaker.record(channel, success=False) is BreakerState.CLOSED
    assert breaker.record(channel, success=False) is BreakerState.OPEN
    # AND a success whose admit found nothing does not forget a failure another instance counted meanwhile
    fresh = str(uuid.uuid4())
    assert breaker.admit(fresh).allowed
    assert other.record(fresh, success=False) is BreakerState.CLOSED
    assert breaker.record(fresh, success=True) is BreakerState.CLOSED
    for _ in range(FAST.failure_threshold - 2):
        assert other.record(fresh, success=False) is BreakerState.CLOSED
    assert other.record(fresh, success=False) is BreakerState.OPEN


def test_with_a_rate_one_round_trip_asks_the_breaker_then_the_channels_bucket(platform: LocalPlatform) -> None:
    client = CountingRedis.from_url(platform.urls["redis"])
    client.sent = []
    breaker, other = RedisChannelBreaker(client, FAST), breakers(platform)[0]
    limiter = RedisRequestLimiter(redis.Redis.from_url(platform.urls["redis"]))
    channel, rate = str(uuid.uuid4()), ChannelRate(per_second=1, burst=1)
    # GIVEN a closed breaker: the call takes the bucket's one token, in one EVALSHA
    assert breaker.admit(channel, rate).allowed
    assert client.sent == ["EVALSHA"]
    limited = breaker.admit(channel, rate)
    assert not limited.allowed and limited.limited and 0 < limited.wait_seconds <= 1
    # WHEN the breaker opens, it answers before the empty bucket: a breaker wait, not the rate's
    for _ in range(FAST.failure_threshold):
        breaker.record(channel, success=False)
    opened = breaker.admit(channel, rate)
    assert not opened.allowed and not opened.limited and 0 < opened.wait_seconds <= FAST.open_seconds
    # AND once it may probe, an empty bucket answers before the probe is taken: another instance still gets it
    time.sleep(opened.wait_seconds + 0.05)
    while limiter.wait_seconds(channel_limit_key(channel), rate.per_second, rate.burst) == 0.0:
        pass  # a token came back meanwhile: taken, so that the bucket is empty again
    waiting = breaker.admit(channel, rate)
    assert not waiting.allowed and waiting.limited
    probe = other.admit(channel)
    assert probe.allowed and probe.probe
    # AND an open breaker takes no token: the full bucket of a fresh channel keeps it
    fresh = str(uuid.uuid4())
    for _ in range(FAST.failure_threshold):
        breaker.record(fresh, success=False)
    assert not breaker.admit(fresh, rate).allowed
    assert limiter.wait_seconds(channel_limit_key(fresh), rate.per_second, rate.burst) == 0.0
    # AND a held channel (its platform's retry-after) waits for the hold, whatever its bucket holds
    held = str(uuid.uuid4())
    limiter.hold(channel_limit_key(held), 5)
    hold = breaker.admit(held, rate)
    assert not hold.allowed and hold.limited and 4 < hold.wait_seconds <= 5


def test_without_redis_every_call_goes_through() -> None:
    breaker = RedisChannelBreaker(
        redis.Redis(host="127.0.0.1", port=free_port(), socket_timeout=0.5, socket_connect_timeout=0.5), FAST
    )
    channel = str(uuid.uuid4())
    for _ in range(10):
        breaker.record(channel, success=False)
    assert breaker.admit(channel).allowed
    assert breaker.admit(channel, ChannelRate(per_second=1, burst=1)).allowed
    assert breaker.state(channel) is BreakerState.CLOSED
