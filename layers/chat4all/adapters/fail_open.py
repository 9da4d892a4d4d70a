"""What may use Redis without ever stopping the platform (request limits, channel breakers): when Redis fails to
answer, the feature is skipped for a while, so that an outage costs one call a socket timeout now and then
instead of every call, and Redis is asked again after it."""

from __future__ import annotations

import threading
import time

from chat4all.observability import logger

SKIP_AFTER_FAILURE_SECONDS = 5.0


class FailOpen:
    def __init__(self, consequence: str, seconds: float = SKIP_AFTER_FAILURE_SECONDS) -> None:
        self.consequence = consequence  # what the log line says happens meanwhile
        self.seconds = seconds
        self._skip_until = 0.0
        self._lock = threading.Lock()

    def skipping(self) -> bool:
        return time.monotonic() < self._skip_until

    def failed(self, exc: Exception) -> None:
        with self._lock:
            self._skip_until = time.monotonic() + self.seconds
        logger.warning(self.consequence, extra={"error": type(exc).__name__})
