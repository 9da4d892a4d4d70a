"""Reading JSON from strangers: strict RFC 8259 numbers, bounded nesting, and no NUL characters in storage."""

from __future__ import annotations

import json
import math
from typing import Any

from chat4all.domain.errors import BadRequestError, FieldError, ValidationFailedError

MAX_DEPTH = 32
NUL = "\x00"


def _refuse_constant(name: str) -> Any:
    raise BadRequestError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BadRequestError(f"the number {text[:40]} is out of range")
    return value


def loads_untrusted(data: bytes | str, *, max_depth: int = MAX_DEPTH) -> Any:
    """Parse JSON as RFC 8259 has it: NaN, Infinity and numbers that overflow a double are refused, and so
    is anything nested deeper than `max_depth`. Every refusal is a BadRequestError."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadRequestError("body is not UTF-8") from exc
    if not data.strip():
        raise BadRequestError("a JSON body is required")
    try:
        value = json.loads(data, parse_constant=_refuse_constant, parse_float=_finite_float)
    except BadRequestError:
        raise
    except RecursionError as exc:
        raise BadRequestError(f"JSON is nested deeper than {max_depth} levels") from exc
    except ValueError as exc:  # malformed JSON, and integers beyond Python's digit limit
        raise BadRequestError(f"body is not valid JSON: {str(exc)[:120]}") from exc
    if _depth(value) > max_depth:
        raise BadRequestError(f"JSON is nested deeper than {max_depth} levels")
    return value


def _depth(value: Any) -> int:
    """Nesting depth of containers, without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in children if isinstance(child, dict | list))
    return deepest


def refuse_nul(value: Any, path: str = "") -> None:
    """ValidationFailedError naming every string (or object key) that carries a NUL character.

    PostgreSQL cannot store NUL in text or jsonb, and no name, address or message needs one.
    """
    errors: list[FieldError] = []
    _collect_nul(value, path, errors)
    if errors:
        raise ValidationFailedError("the request contains NUL characters", errors=errors[:20])


def _collect_nul(value: Any, path: str, errors: list[FieldError]) -> None:
    if isinstance(value, str):
        if NUL in value:
            errors.append(FieldError(path or "body", "must not contain NUL characters"))
    elif isinstance(value, dict):
        for key, item in value.items():
            child = f"{path}.{key}" if path else str(key)
            if NUL in key:
                errors.append(FieldError(path or "body", "object keys must not contain NUL characters"))
                continue
            _collect_nul(item, child, errors)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _collect_nul(item, f"{path}[{index}]" if path else f"[{index}]", errors)
