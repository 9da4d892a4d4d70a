"""Health of the platform's dependencies: named, UP or DOWN, from a result at most a few seconds old."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from chat4all.ports import DependencyCheck

logger = logging.getLogger(__name__)

UP = "UP"
DOWN = "DOWN"


@dataclass(frozen=True)
class HealthReport:
    dependencies: dict[str, str]
    checked_at: float

    @property
    def healthy(self) -> bool:
        return all(state == UP for state in self.dependencies.values())


class HealthMonitor:
    """Runs the checks at most once per `max_age_seconds`, all at once, each bounded by `timeout_seconds`.

    Callers in between get the last result, so /health costs the dependencies nothing under load. Why a
    check failed goes to the log only: the report names dependencies and states, never hosts or errors.
    """

    def __init__(
        self,
        checks: Sequence[DependencyCheck],
        *,
        max_age_seconds: float = 5.0,
        timeout_seconds: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.checks = list(checks)
        self.max_age_seconds = max_age_seconds
        self.timeout_seconds = timeout_seconds
        self.clock = clock
        self._last: HealthReport | None = None
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(self.checks)), thread_name_prefix="health")

    def report(self) -> HealthReport:
        with self._lock:
            last = self._last
            if last is not None and self.clock() - last.checked_at < self.max_age_seconds:
                return last
            self._last = self._run()
            return self._last

    def _run(self) -> HealthReport:
        futures = {check.name: self._pool.submit(check.check) for check in self.checks}
        wait(futures.values(), timeout=self.timeout_seconds)
        states: dict[str, str] = {}
        for name, future in futures.items():
            if not future.done():
                logger.warning("health check of %s timed out", name)
                states[name] = DOWN
            elif (error := future.exception()) is not None:
                logger.warning("health check of %s failed: %r", name, error)
                states[name] = DOWN
            else:
                states[name] = UP
        return HealthReport(states, self.clock())
