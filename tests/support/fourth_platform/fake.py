"""A local server speaking Pigeon's API (tests.support.fourth_platform.connector), for the tests and by hand."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.support.json_reply import send_json

ACCOUNT = re.compile(r"^/v1/accounts/(?P<account>[a-z0-9-]+)(?P<send>/messages)?$")


class FakePigeon:
    """Answers like Pigeon's API for the keys it was told about; records every message sent."""

    def __init__(self, port: int = 0) -> None:
        self.keys: dict[str, str] = {}  # account id -> its api key
        self.sent: list[tuple[str, dict[str, Any]]] = []  # (account id, body)
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else {}
                except ValueError:
                    body = None
                status, reply = fake._answer(self.command, self.path.split("?")[0], self.headers, body)
                send_json(self, status, reply)

            do_GET = do_POST = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _answer(self, method: str, path: str, headers: Any, body: Any) -> tuple[int, dict[str, Any]]:
        found = ACCOUNT.match(path)
        if found is None:
            return 404, {"error": "not_found"}
        account = found["account"]
        with self._lock:
            key = self.keys.get(account)
        if key is None or headers.get("authorization") != f"Bearer {key}":
            return 401, {"error": "unauthorized"}
        if not found["send"]:
            return (200, {"id": account, "name": f"Pigeon {account}"}) if method == "GET" else (405, {})
        if method != "POST" or not isinstance(body, dict) or not body.get("to") or not body.get("text"):
            return 400, {"error": "to and text are required"}
        with self._lock:
            self.sent.append((account, body))
        return 200, {"id": f"pg-{uuid.uuid4().hex[:16]}"}

    def messages_to(self, account: str, recipient: str) -> list[dict[str, Any]]:
        with self._lock:
            return [body for a, body in self.sent if a == account and body.get("to") == recipient]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def webhook(account: str, secret: str, *events: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    """A Pigeon webhook's body and its signature header."""
    body = json.dumps({"account": account, "events": list(events)}).encode()
    signature = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return body, {"X-Pigeon-Signature": f"sha256={signature}", "Content-Type": "application/json"}


def message_event(message_id: str, sender: str, text: str, name: str = "Ana") -> dict[str, Any]:
    return {
        "type": "message",
        "id": message_id,
        "from": {"id": sender, "name": name},
        "text": text,
        "ts": int(time.time()),
    }


def status_event(message_id: str, status: str) -> dict[str, Any]:
    return {"type": "status", "id": message_id, "status": status, "ts": int(time.time())}
