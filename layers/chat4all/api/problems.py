"""Every error becomes an RFC 9457 problem here, and only here."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyPersistenceLayerError,
    IdempotencyValidationError,
)
from pydantic import ValidationError

from chat4all.domain.errors import (
    Chat4AllError,
    ConflictError,
    DependencyUnavailableError,
    FieldError,
    NotFoundError,
    TooManyRequestsError,
    ValidationFailedError,
)
from chat4all.observability import logger

if TYPE_CHECKING:
    from collections.abc import Callable

    from aws_lambda_powertools.event_handler.api_gateway import ApiGatewayResolver

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "https://chat4all.dev/problems/"


# A server-side failure is described by its kind only: what went wrong inside (hosts, ports, driver messages)
# goes to the log, never into a response.
PUBLIC_5XX_DETAIL = {
    503: "a service this request depends on is unavailable; retry shortly",
    502: "an upstream platform failed to answer as expected; retry shortly",
}
GENERIC_5XX_DETAIL = "an unexpected error occurred; it has been logged"


def public_detail(error: Chat4AllError) -> str:
    if error.status < 500:
        return error.detail
    return PUBLIC_5XX_DETAIL.get(error.status, GENERIC_5XX_DETAIL)


def problem_response(error: Chat4AllError, headers: dict[str, str] | None = None) -> Response[str]:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + error.slug,
        "title": error.title,
        "status": error.status,
        "detail": public_detail(error),
    }
    if error.errors:
        body["errors"] = [{"field": e.field, "message": e.message} for e in error.errors]
    return Response(status_code=error.status, content_type=PROBLEM_CONTENT_TYPE, body=json.dumps(body), headers=headers)


def validation_problem(exc: ValidationError) -> ValidationFailedError:
    errors = [
        FieldError(".".join(str(part) for part in e["loc"]) or "body", e["msg"])
        for e in exc.errors(include_url=False, include_input=False)
    ]
    return ValidationFailedError("the request body is not valid", errors=errors)


def _domain(exc: Chat4AllError) -> Response[str]:
    headers: dict[str, str] | None = None
    if exc.status >= 500:
        cause = exc.__cause__
        logger.warning(
            "request failed",
            extra={"problem": exc.slug, "detail": exc.detail, "cause": repr(cause) if cause else None},
        )
        if exc.status == 503:
            headers = {"Retry-After": "1"}
    if exc.status == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    if isinstance(exc, TooManyRequestsError):
        headers = {"Retry-After": str(exc.retry_after_seconds)}
    return problem_response(exc, headers)


def _validation(exc: ValidationError) -> Response[str]:
    return problem_response(validation_problem(exc))


def _idempotency_mismatch(exc: IdempotencyValidationError) -> Response[str]:
    return problem_response(ConflictError("this message_id was used before with a different body"))


def _idempotency_in_progress(exc: IdempotencyAlreadyInProgressError) -> Response[str]:
    return problem_response(ConflictError("a request with this message_id is being processed; retry shortly"))


def _idempotency_store(exc: IdempotencyPersistenceLayerError) -> Response[str]:
    logger.warning("idempotency store unavailable", extra={"cause": repr(exc)})
    return problem_response(DependencyUnavailableError("the idempotency store is unavailable"), {"Retry-After": "1"})


class MethodNotAllowedError(Chat4AllError):
    status = 405
    title = "Method not allowed"
    slug = "method-not-allowed"


def _not_found_in(app: ApiGatewayResolver) -> Callable[[Exception], Response[str]]:
    """404 for a path the API does not serve; 405 with Allow for a method it does not serve on a known path."""

    def not_found(exc: Exception) -> Response[str]:
        from chat4all.api.access import allowed_methods

        path = app.current_event.path
        methods = allowed_methods(path)
        if methods:
            error = MethodNotAllowedError(f"{app.current_event.http_method} is not served on this path")
            return problem_response(error, {"Allow": ", ".join(methods)})
        return problem_response(NotFoundError("no such resource"))

    return not_found


def _unexpected(exc: Exception) -> Response[str]:
    logger.exception("unhandled error")
    return problem_response(Chat4AllError("an unexpected error occurred; it has been logged"))


PROBLEM_HANDLERS: dict[type[Exception], Callable[[Any], Response[str]]] = {
    Chat4AllError: _domain,
    ValidationError: _validation,
    IdempotencyValidationError: _idempotency_mismatch,
    IdempotencyAlreadyInProgressError: _idempotency_in_progress,
    IdempotencyPersistenceLayerError: _idempotency_store,
    Exception: _unexpected,
}


def register_problem_handlers(app: ApiGatewayResolver) -> None:
    """Map the error hierarchy, validation and anything unexpected to problem JSON."""
    for exc_type, handler in PROBLEM_HANDLERS.items():
        app.exception_handler(exc_type)(handler)
    app.not_found(_not_found_in(app))
