"""Request parsing: size limit, hostile JSON, pydantic validation, identifiers and query strings."""

from __future__ import annotations

import base64
import binascii
import uuid
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError

from chat4all.api.problems import validation_problem
from chat4all.domain.errors import BadRequestError, NotFoundError, PayloadTooLargeError
from chat4all.domain.untrusted import loads_untrusted, refuse_nul

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEventV2

ModelT = TypeVar("ModelT", bound=BaseModel)


def raw_body(event: APIGatewayProxyEventV2, max_bytes: int) -> bytes:
    """The body exactly as the client sent it (signatures are computed over these bytes)."""
    body = event.body or ""
    if event.is_base64_encoded:
        try:
            data = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise BadRequestError("body is not valid base64") from exc
    else:
        data = body.encode("utf-8")
    if len(data) > max_bytes:
        raise PayloadTooLargeError(f"body is {len(data)} bytes; the limit is {max_bytes}")
    return data


def parse_json(data: bytes) -> Any:
    """JSON as RFC 8259 has it (no NaN/Infinity/overflowing numbers), bounded in depth, with no NUL characters."""
    payload = loads_untrusted(data)
    refuse_nul(payload)
    return payload


def parse_body[ModelT: BaseModel](event: APIGatewayProxyEventV2, model: type[ModelT], max_bytes: int) -> ModelT:
    payload = parse_json(raw_body(event, max_bytes))
    if not isinstance(payload, dict):
        raise BadRequestError("body must be a JSON object")
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise validation_problem(exc) from exc


def resource_id(value: str, kind: str) -> str:
    """A path identifier; anything that is not a UUID cannot name a resource."""
    try:
        return str(uuid.UUID(value))
    except ValueError as exc:
        raise NotFoundError(f"{kind} {value!r} not found") from exc


def parse_query[ModelT: BaseModel](params: dict[str, str] | None, model: type[ModelT]) -> ModelT:
    """Query string parameters validated like a body: unknown ones, NUL characters and bad values are 422."""
    values = dict(params or {})
    refuse_nul(values)
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise validation_problem(exc) from exc
