"""What the pure packages (domain, services) say about their work, without Powertools (tests/unit/test_architecture):
the keys of the work a log line is about, and the metrics they count. chat4all.observability connects both to
Powertools: its handler adds the keys to every line, and it registers the metric sink.

The keys live in a context variable, so each thread (route works a batch's job keys on threads of their own) and
each block has its own: `log_context(correlation_id=..., message_id=..., conversation_id=...)` around the work of
a request, a record or a message, and they are gone when it ends.

The correlation id (contract, "Correlation"): a request's `X-Correlation-Id` when it is 1-128 characters of
`[A-Za-z0-9._-]`, else the API Gateway request id (`correlation_id_for`).
"""

from __future__ import annotations

import contextlib
import re
import uuid
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

CORRELATION_HEADER = "X-Correlation-Id"
CORRELATION_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")

_keys: ContextVar[dict[str, Any]] = ContextVar("chat4all_log_keys", default={})  # noqa: B039 (never mutated)


def valid_correlation_id(value: str | None) -> bool:
    return value is not None and CORRELATION_ID.fullmatch(value) is not None


def correlation_id_for(headers: Mapping[str, str] | None, request_id: str | None) -> tuple[str, bool]:
    """The request's correlation id, and whether the client's header was refused (then replaced).

    A client's `X-Correlation-Id` (any case of the name) is kept when it is 1-128 characters of
    `[A-Za-z0-9._-]`. An invalid one is replaced, not answered 400: the id only labels log lines and events, so
    a malformed label must not cost the client its message (the contract: "otherwise the platform makes one"),
    and the id answered back tells the client which one was used. Made from the API Gateway request id, or a
    UUID where there is none (a direct invoke)."""
    given = None
    for name, value in (headers or {}).items():
        if name.lower() == CORRELATION_HEADER.lower():
            given = value
            break
    if given is not None and valid_correlation_id(given):
        return given, False
    made = request_id if request_id is not None and valid_correlation_id(request_id) else str(uuid.uuid4())
    return made, given is not None


def log_keys() -> dict[str, Any]:
    """The keys of the work running in this thread: every log line carries them."""
    return dict(_keys.get())


def current_correlation_id() -> str | None:
    value = _keys.get().get("correlation_id")
    return value if isinstance(value, str) else None


@contextlib.contextmanager
def log_context(**keys: Any) -> Iterator[None]:
    """Every log line of the block (in this thread) carries `keys`; a None value leaves an outer block's value of
    that key as it is. The keys as they were are back when the block ends, however it ends."""
    token = _keys.set({**_keys.get(), **{k: v for k, v in keys.items() if v is not None}})
    try:
        yield
    finally:
        _keys.reset(token)


class MetricSink(Protocol):
    def count(self, name: str, value: int) -> None: ...

    def accept_to_sent(self, platform: str, milliseconds: float) -> None: ...


# the registered sink (one at most)
_sinks: list[MetricSink] = []


def register(sink: MetricSink | None) -> None:
    """Where the metrics go (chat4all.observability registers Powertools' EMF); none: they are dropped."""
    _sinks[:] = [sink] if sink is not None else []


def count(name: str, value: int = 1) -> None:
    """A count metric (MessagesRetried, MessagesRead, ...); safe from any thread."""
    for sink in _sinks:
        sink.count(name, value)


def accept_to_sent(platform: str, milliseconds: float) -> None:
    """The time from a message's acceptance to its SENT (or a GROUP delivery's), per platform."""
    for sink in _sinks:
        sink.accept_to_sent(platform, milliseconds)
