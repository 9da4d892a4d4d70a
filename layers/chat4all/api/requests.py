"""Request parsing: size limit, JSON, pydantic validation, identifiers and the caller's key."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError

from chat4all.api.problems import validation_problem
from chat4all.domain.errors import BadRequestError, NotFoundError, PayloadTooLargeError

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEventV2

    from chat4all.domain.models import Principal
    from chat4all.services.auth import Authenticator

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
    if not data.strip():
        raise BadRequestError("a JSON body is required")
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequestError(f"body is not valid JSON: {exc}") from exc


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


def authenticate(event: APIGatewayProxyEventV2, authenticator: Authenticator) -> Principal:
    return authenticator.authenticate(event.headers.get("authorization"))
