"""EventBridge schedules of the template: `rate(...)`, `cron(...)` (AWS's six fields) and `at(...)` expressions.

Each firing invokes the function asynchronously, as EventBridge does, with a Scheduled Event (or the
schedule's `Input`); a failed invocation is retried twice, after one and then two minutes, as Lambda retries
asynchronous invocations.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from cronsim import CronSim, CronSimError

from devstack.lambda_service import ACCOUNT_ID, REGION

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from devstack.lambda_service import InvocationResult
    from devstack.template import ScheduleSubscription

RATE = re.compile(r"^rate\(\s*(\d+)\s+(minute|minutes|hour|hours|day|days)\s*\)$")
CRON = re.compile(r"^cron\((.*)\)$")
AT = re.compile(r"^at\((\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})\)$")
UNIT_SECONDS = {"minute": 60, "hour": 3600, "day": 86400}
ASYNC_RETRY_DELAYS = (60.0, 120.0)
YEARS_AHEAD = 100


class ScheduleExpressionError(ValueError):
    pass


def _aws_weekdays_to_cron(field: str) -> str:
    """AWS numbers days 1 (SUN) to 7 (SAT); cron numbers them 0 (SUN) to 6 (SAT)."""
    return re.sub(r"(?<![#/\d])([1-7])(?!\d)", lambda m: str(int(m.group(1)) - 1), field)


def _years(field: str, first: int) -> set[int]:
    candidates = range(first, first + YEARS_AHEAD)
    if field == "*":
        return set(candidates)
    years: set[int] = set()
    for part in field.split(","):
        span, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if span == "*":
            low, high = first, first + YEARS_AHEAD
        elif "-" in span:
            low_text, high_text = span.split("-", 1)
            low, high = int(low_text), int(high_text)
        else:
            low = int(span)
            high = low if not step_text else first + YEARS_AHEAD
        years |= {y for y in range(low, high + 1, step) if y in candidates}
    return years


class Schedule:
    """When a schedule expression fires next."""

    def __init__(self, expression: str, timezone: str = "UTC") -> None:
        self.expression = expression.strip()
        self.zone = ZoneInfo(timezone)
        self.period: float | None = None
        self.cron: str | None = None
        self.year_field = "*"
        self.at: float | None = None
        if rate := RATE.match(self.expression):
            value, unit = int(rate.group(1)), rate.group(2).rstrip("s")
            if value < 1:
                raise ScheduleExpressionError(f"{expression}: the rate must be positive")
            self.period = float(value * UNIT_SECONDS[unit])
        elif cron := CRON.match(self.expression):
            fields = cron.group(1).split()
            if len(fields) != 6:
                raise ScheduleExpressionError(f"{expression}: AWS cron has six fields")
            minute, hour, day, month, weekday, self.year_field = (f.replace("?", "*") for f in fields)
            self.cron = " ".join((minute, hour, day, month, _aws_weekdays_to_cron(weekday)))
            try:
                CronSim(self.cron, datetime.now(self.zone))
                _years(self.year_field, 2000)
            except (CronSimError, ValueError) as exc:
                raise ScheduleExpressionError(f"{expression}: {exc}") from exc
        elif at := AT.match(self.expression):
            self.at = datetime.fromisoformat(at.group(1)).replace(tzinfo=self.zone).timestamp()
        else:
            raise ScheduleExpressionError(f"{expression}: not a rate(), cron() or at() expression")

    def next_after(self, after: float, started: float) -> float | None:
        """The first firing strictly after `after` (epoch seconds) of a schedule created at `started`."""
        if self.period is not None:
            # a rate schedule fires one period after it is created, then every period
            elapsed = max(0.0, after - started)
            return started + (int(elapsed // self.period) + 1) * self.period
        if self.at is not None:
            return self.at if self.at > after else None
        assert self.cron is not None
        moment = datetime.fromtimestamp(after, self.zone)
        allowed = _years(self.year_field, moment.year)
        while allowed:
            candidate = next(CronSim(self.cron, moment))
            if candidate.year in allowed:
                return candidate.timestamp()
            later = [year for year in allowed if year > candidate.year]
            if not later:
                return None
            moment = datetime(min(later), 1, 1, tzinfo=self.zone) - timedelta(seconds=1)
        return None


def scheduled_event(subscription: ScheduleSubscription, fired_at: float) -> dict[str, Any]:
    """What EventBridge hands the function: the schedule's Input, else a Scheduled Event."""
    if subscription.input is not None:
        parsed: Any = json.loads(subscription.input)
        return parsed if isinstance(parsed, dict) else {"input": parsed}
    name = f"{subscription.function}{subscription.name}"
    if subscription.kind == "ScheduleV2":
        source, resource = "aws.scheduler", f"arn:aws:scheduler:{REGION}:{ACCOUNT_ID}:schedule/default/{name}"
    else:
        source, resource = "aws.events", f"arn:aws:events:{REGION}:{ACCOUNT_ID}:rule/{name}"
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": source,
        "account": ACCOUNT_ID,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(fired_at)),
        "region": REGION,
        "resources": [resource],
        "detail": {},
    }


class ScheduleSource:
    """Fires one schedule for as long as it runs."""

    def __init__(
        self,
        subscription: ScheduleSubscription,
        invoke: Callable[[str, bytes], Awaitable[InvocationResult]],
        *,
        clock: Callable[[], float] = time.time,
        log: Callable[[str], None] = print,
    ) -> None:
        self.subscription = subscription
        self.schedule = Schedule(subscription.expression, subscription.timezone)
        self.invoke = invoke
        self.clock = clock
        self.log = log
        self.fired = 0
        self._task: asyncio.Task[None] | None = None
        self._invocations: set[asyncio.Task[None]] = set()

    @property
    def function(self) -> str:
        return self.subscription.function

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"schedule-{self.function}-{self.subscription.name}")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._invocations) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self) -> None:
        started = last = self.clock()
        while (due := self.schedule.next_after(last, started)) is not None:
            while (wait := due - self.clock()) > 0:
                await asyncio.sleep(min(wait, 60.0))  # re-read the clock: the machine may have slept
            last = due
            self.fired += 1
            task = asyncio.create_task(self._invoke(scheduled_event(self.subscription, due)))
            self._invocations.add(task)
            task.add_done_callback(self._invocations.discard)

    async def _invoke(self, event: dict[str, Any]) -> None:
        payload = json.dumps(event).encode()
        for attempt, delay in enumerate((0.0, *ASYNC_RETRY_DELAYS), start=1):
            await asyncio.sleep(delay)
            result = await self.invoke(self.function, payload)
            if result.ok:
                return
            self.log(f"{self.function} {self.subscription.name}: attempt {attempt} failed ({result.error_type})")
