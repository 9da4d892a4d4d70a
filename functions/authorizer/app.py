"""Authorizer: the one place a bearer credential (API key or OAuth2 JWT) is verified, for every /v1 route.

It always answers isAuthorized=true and hands on, in the context, the verified caller or why there is none:
API Gateway's own refusals are not problem JSON, so the functions refuse, through the role table in
chat4all.api.access. API Gateway does not cache its answers (a revoked key must stop at once); see docs/AUTH.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.utilities.data_classes import event_source
from aws_lambda_powertools.utilities.data_classes.api_gateway_authorizer_event import (
    APIGatewayAuthorizerEventV2,
    APIGatewayAuthorizerResponseV2,
)

from chat4all import bootstrap
from chat4all.api.access import caller_context, refusal_context
from chat4all.domain.errors import DependencyUnavailableError, UnauthorizedError
from chat4all.observability import logger

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext


@logger.inject_lambda_context
@event_source(data_class=APIGatewayAuthorizerEventV2)
def lambda_handler(event: APIGatewayAuthorizerEventV2, context: LambdaContext) -> dict[str, Any]:
    try:
        principal = bootstrap.authenticator().authenticate(event.headers.get("authorization"))
    except (UnauthorizedError, DependencyUnavailableError) as refusal:
        return APIGatewayAuthorizerResponseV2(authorize=True, context=refusal_context(refusal)).asdict()
    return APIGatewayAuthorizerResponseV2(authorize=True, context=caller_context(principal)).asdict()
