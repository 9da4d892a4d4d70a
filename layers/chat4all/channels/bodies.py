"""What the connectors' webhook parsers share: lenient models of an untrusted body, and its refusal as a 400."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from chat4all.domain.errors import BadRequestError


class Lenient(BaseModel):
    """A platform's body as far as we read it: fields we do not know are ignored."""

    model_config = ConfigDict(extra="ignore")


def parse_body[M: BaseModel](model: type[M], payload: dict[str, Any], what: str) -> M:
    """`payload` as `model`, or a 400 naming `what` it is not ("a WhatsApp webhook body")."""
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise BadRequestError(f"not {what}: {exc.errors()[0]['msg']}") from exc


def unix_time(raw: str | int, field: str, *, milliseconds: bool = False) -> datetime:
    """A platform's UNIX time (whole seconds, or milliseconds), or a 400 naming the `field` it came in."""
    try:
        return datetime.fromtimestamp(int(raw) / (1000 if milliseconds else 1), UTC)
    except (ValueError, OverflowError, OSError) as exc:
        unit = " in milliseconds" if milliseconds else ""
        raise BadRequestError(f"{field} {raw!r} is not a UNIX time{unit}") from exc
