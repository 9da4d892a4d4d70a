"""The answer every local HTTP server of the tests writes: a JSON body with its length."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from http.server import BaseHTTPRequestHandler


def send_json(
    handler: BaseHTTPRequestHandler, status: int, body: Any, *, content_type: str = "application/json"
) -> None:
    payload = json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("content-type", content_type)
    handler.send_header("content-length", str(len(payload)))
    handler.end_headers()
    handler.wfile.write(payload)
