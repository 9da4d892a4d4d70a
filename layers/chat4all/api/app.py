"""The resolver every HTTP function uses: problem JSON for errors, JSON for everything else."""

from __future__ import annotations

import json
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response

from chat4all.api.access import enforce_role_table
from chat4all.api.problems import register_problem_handlers


def create_resolver() -> APIGatewayHttpResolver:
    """The one resolver of every HTTP function: the role table before any route, problem JSON for errors."""
    app = APIGatewayHttpResolver(serializer=lambda body: json.dumps(body, separators=(",", ":")))
    register_problem_handlers(app)
    app.use(middlewares=[enforce_role_table])
    return app


def json_response(status_code: int, body: Any, headers: dict[str, str] | None = None) -> Response[str]:
    return Response(status_code=status_code, content_type="application/json", body=json.dumps(body), headers=headers)
