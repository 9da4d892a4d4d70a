"""EventBridge `rate(...)` rules of the template: each firing invokes the function asynchronously with a Scheduled
Event; a failed invocation is retried after one and then two minutes, as Lambda retries asynchronous ones."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import TYPE_CHECKING, Any

from devstack.lambda_service import ACCOUNT_ID, REGION

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from devstack.lambda_service import InvocationResult
    from devstack.template import ScheduleSubscription

ASYNC_RETRY_DELAYS = (60.0, 120.0)


def scheduled_event(schedule: ScheduleSubscription, fired_at: float) -> dict[str, Any]:
    """What EventBridge hands the function (the template's rules have no target Input)."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": ACCOUNT_ID,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(fired_at)),
        "region": REGION,
        "resources": [f"arn:aws:events:{REGION}:{ACCOUNT_ID}:rule/{schedule.rule}"],
        "detail": {},
    }


async def run_schedule(
    schedule: ScheduleSubscription,
    invoke: Callable[[str, bytes], Awaitable[InvocationResult]],
    clock: Callable[[], float],
    log: Callable[[str], None],
) -> None:
    """Fire one period after the start, then every period, until cancelled (with its invocations)."""
    invocations: set[asyncio.Task[None]] = set()

    async def deliver(payload: bytes) -> None:
        for attempt, delay in enumerate((0.0, *ASYNC_RETRY_DELAYS), start=1):
            await asyncio.sleep(delay)
            result = await invoke(schedule.function, payload)
            if result.ok:
                return
            log(f"{schedule.function} {schedule.rule}: attempt {attempt} failed ({result.error_type})")

    due = clock() + schedule.period_seconds
    try:
        while True:
            while (wait := due - clock()) > 0:
                await asyncio.sleep(min(wait, 1.0))  # re-read the clock: the machine may have slept
            task = asyncio.create_task(deliver(json.dumps(scheduled_event(schedule, due)).encode()))
            invocations.add(task)
            task.add_done_callback(invocations.discard)
            due += schedule.period_seconds
    finally:
        for task in invocations:
            task.cancel()
