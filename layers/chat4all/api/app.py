"""The resolver every HTTP function uses, and how it is served: problem JSON for every error, JSON otherwise."""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response

from chat4all.api.access import role_table
from chat4all.api.problems import problem_response, register_problem_handlers
from chat4all.domain.errors import Chat4AllError, DependencyUnavailableError
from chat4all.observability import CORRELATION_HEADER, correlation_id_for, log_context, logger

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from types import FrameType

    from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
    from aws_lambda_powertools.utilities.typing import LambdaContext

    from chat4all.api.access import Admit, Authenticate
    from chat4all.domain.models import Principal
    from chat4all.services.notifications import EventBuffer

# A request still running this long before its function's Timeout is answered 503 by the function itself, so
# API Gateway never has to answer for a function Lambda stopped (its answer is not problem JSON).
DEADLINE_MARGIN_SECONDS = 3.0


class RequestDeadlineError(DependencyUnavailableError):
    """The request ran into its deadline (a dependency stalled): 503, retry shortly."""


def create_resolver(authenticate: Authenticate | None = None, admit: Admit | None = None) -> APIGatewayHttpResolver:
    """The one resolver of every HTTP function: authentication, request limits and the role table before any
    route, problem JSON for errors. `authenticate` checks a bearer header and `admit` the caller's request rate
    (defaults: the container's Authenticator and RequestLimits)."""
    app = APIGatewayHttpResolver(serializer=lambda body: json.dumps(body, separators=(",", ":")))
    register_problem_handlers(app)
    app.use(middlewares=[role_table(authenticate or _container_authenticator, admit or _container_limits)])
    return app


# the composition root is built on the first request rather than at import


def _container_authenticator(authorization: str | None) -> Principal:
    from chat4all import bootstrap

    return bootstrap.authenticator().authenticate(authorization)


def _container_limits(principal: Principal) -> None:
    from chat4all import bootstrap

    bootstrap.request_limits().admit(principal)


def serve(
    app: APIGatewayHttpResolver, event: dict[str, Any], context: LambdaContext, events: EventBuffer | None = None
) -> dict[str, Any]:
    """Resolve one HTTP event as one unit of work, answering it in problem JSON whatever happens.

    The events the request collected (`events`, default the container's EventBuffer) are published when it ends,
    however it ends; an unexpected exception is a 500 problem, and a request still running
    DEADLINE_MARGIN_SECONDS before the function's Timeout a 503 one. Every answer, problems included, carries
    the request's correlation id in `X-Correlation-Id` (chat4all.observability.correlation_id_for), and every
    line logged while it runs carries it as `correlation_id`.
    """
    if events is None:
        from chat4all import bootstrap

        events = bootstrap.event_buffer()
    request_id = (event.get("requestContext") or {}).get("requestId")
    correlation_id, replaced = correlation_id_for(event.get("headers"), request_id)
    with log_context(correlation_id=correlation_id):
        if replaced:  # the refused value is not logged: it is the client's, and may be anything
            logger.info("X-Correlation-Id refused (1-128 of A-Za-z0-9._-); replaced by the request id")
        result = _serve(app, event, context, events)
    result["headers"] = {**(result.get("headers") or {}), CORRELATION_HEADER: correlation_id}
    return result


def serve_or_consume(
    app: APIGatewayHttpResolver,
    event: dict[str, Any],
    context: LambdaContext,
    record_handler: Callable[[SQSRecord], None],
    *,
    queue_setting: str,
) -> dict[str, Any]:
    """A function with HTTP routes and a standard queue's event source: a batch of the queue named by the setting
    `queue_setting` goes to `record_handler` (bootstrap.consume), anything else is an HTTP event (`serve`)."""
    if "Records" not in event:
        return serve(app, event, context)
    from chat4all import bootstrap

    return bootstrap.consume(event, context, record_handler, queue_url=bootstrap.settings().require(queue_setting))


def _serve(
    app: APIGatewayHttpResolver, event: dict[str, Any], context: LambdaContext, events: EventBuffer
) -> dict[str, Any]:
    with events.unit_of_work():
        try:
            with deadline(context.get_remaining_time_in_millis() / 1000 - DEADLINE_MARGIN_SECONDS):
                return app.resolve(event, context)
        except RequestDeadlineError as exc:
            logger.error("request answered 503 before the function's timeout", extra={"route": event.get("routeKey")})
            return _as_proxy_result(problem_response(exc, {"Retry-After": "1"}))
        except Exception:
            logger.exception("unhandled error outside the routes")
            return _as_proxy_result(problem_response(Chat4AllError("an unexpected error occurred; it has been logged")))


def _as_proxy_result(response: Response[str]) -> dict[str, Any]:
    return {"statusCode": response.status_code, "headers": dict(response.headers), "body": response.body}


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise RequestDeadlineError in the invocation's thread once `seconds` have passed (at once when <= 0).

    Lambda runs the handler on the main thread, where a timer signal can interrupt a call stalled on a
    dependency; elsewhere (a test calling from another thread) there is no deadline.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: FrameType | None) -> None:
        raise RequestDeadlineError("the request took too long; retry shortly")

    previous = signal.signal(signal.SIGALRM, expire)
    started = time.monotonic()
    outer_delay, outer_interval = signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer_delay > 0:  # a timer someone else had set (a test runner's timeout) runs on
            left = max(outer_delay - (time.monotonic() - started), 0.001)
            signal.setitimer(signal.ITIMER_REAL, left, outer_interval)


def json_response(status_code: int, body: Any, headers: dict[str, str] | None = None) -> Response[str]:
    return Response(status_code=status_code, content_type="application/json", body=json.dumps(body), headers=headers)
