"""Logger, tracer and metrics shared by every function (service name from POWERTOOLS_SERVICE_NAME), connected to
what the pure packages say through chat4all.telemetry (they may not import Powertools: tests/unit/test_architecture).

Every log line is Powertools' JSON (service, level, location, message) plus the keys of the work it is about:
`correlation_id`, `message_id`, `conversation_id` (and `user_id` for a GROUP delivery), which
`telemetry.log_context(...)` sets around the work of each request, record and message, and removes when it ends.
The keys are in a context variable (route works up to ten job keys of a batch at once, each on a thread of its
own, and each line must name its own message); a filter on the Powertools handler adds them to every record it
formats (a key given in the call's `extra` wins).

The modules' `logging.getLogger(__name__)` loggers are children of the package logger `chat4all`, which is the
Powertools logger itself under the template's `POWERTOOLS_SERVICE_NAME: chat4all`: their lines go through its
handler, formatter and filter, keys included. Under any other service name the package logger is given the
Powertools handler (below), so no line of `chat4all.*` is plain text.

Metrics are EMF (Powertools Metrics, flushed by each handler's `metrics.log_metrics`); the services' counts and
the accept-to-SENT latency reach them through the sink registered here.
"""

from __future__ import annotations

import logging
import os
import threading

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit, single_metric

from chat4all import telemetry
from chat4all.telemetry import (
    CORRELATION_HEADER,
    correlation_id_for,
    count,
    current_correlation_id,
    log_context,
)

__all__ = [
    "CORRELATION_HEADER",
    "correlation_id_for",
    "count",
    "current_correlation_id",
    "log_context",
    "logger",
    "metrics",
    "tracer",
]

logger = Logger()
tracer = Tracer()
metrics = Metrics()


class _WorkKeys(logging.Filter):
    """Adds the keys of the running work (telemetry.log_context) to each record the handler formats."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in telemetry.log_keys().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


if not any(isinstance(f, _WorkKeys) for f in logger.registered_handler.filters):
    logger.registered_handler.addFilter(_WorkKeys())

_package = logging.getLogger("chat4all")
if logger.service != "chat4all" and logger.registered_handler not in _package.handlers:
    # a service name other than the package's: the package's loggers get Powertools' handler (and the keys)
    _package.addHandler(logger.registered_handler)
    _package.setLevel(logger.log_level)
    _package.propagate = False

ACCEPT_TO_SENT_METRIC = "AcceptToSentLatency"


class _EmfSink:
    """The services' metrics as EMF. Powertools' Metrics collects into one object per container and route adds
    from several threads at once: one lock around every addition."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def count(self, name: str, value: int) -> None:
        with self._lock:
            metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)

    def accept_to_sent(self, platform: str, milliseconds: float) -> None:
        """EMF documents of their own (so their dimensions do not spread to the function's other metrics): one
        with a `platform` dimension, one for every platform together (what the p95 alarm watches: an alarm
        cannot search dimensions, and a deployment may register platforms the template does not name)."""
        namespace = os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "Chat4All")
        value = max(milliseconds, 0.0)
        unit = MetricUnit.Milliseconds
        with self._lock:
            with single_metric(name=ACCEPT_TO_SENT_METRIC, unit=unit, value=value, namespace=namespace) as metric:
                metric.add_dimension(name="platform", value=platform)
            with single_metric(name=ACCEPT_TO_SENT_METRIC, unit=unit, value=value, namespace=namespace):
                pass


telemetry.register(_EmfSink())
