"""A local server speaking the Instagram messaging API's format (GET /me, POST /{ig_user_id}/messages)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

INVALID_TOKEN = {
    "error": {
        "message": "Invalid OAuth access token - Cannot parse access token",
        "type": "OAuthException",
        "code": 190,
    }
}


class FakeInstagram:
    """Answers like graph.instagram.com for the access tokens registered with `add_account`."""

    def __init__(self, port: int = 0) -> None:
        self.accounts: dict[str, str] = {}  # access token -> ig_user_id
        self.calls: list[tuple[str, str, dict[str, str], dict[str, Any]]] = []  # (method, path, headers, body)
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else {}
                except ValueError:
                    body = {}
                headers = {k.lower(): v for k, v in self.headers.items()}
                with fake._lock:
                    fake.calls.append((self.command, self.path, headers, body if isinstance(body, dict) else {}))
                status, reply = fake._answer(self.command, self.path, headers)
                payload = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v21.0"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add_account(self, access_token: str, ig_user_id: str) -> None:
        with self._lock:
            self.accounts[access_token] = ig_user_id

    def _answer(self, method: str, target: str, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        url = urlsplit(target)
        token = headers.get("authorization", "").removeprefix("Bearer ").strip()
        token = token or parse_qs(url.query).get("access_token", [""])[0]
        with self._lock:
            ig_user_id = self.accounts.get(token)
        if ig_user_id is None:
            return 401, INVALID_TOKEN
        path = url.path.removeprefix("/v21.0")
        if method == "GET" and path == "/me":
            return 200, {"user_id": ig_user_id, "username": f"chat4all_{ig_user_id}", "id": f"app-{ig_user_id}"}
        if method == "POST" and path == f"/{ig_user_id}/messages":
            return 200, {"recipient_id": "recipient", "message_id": f"aWdf{uuid.uuid4().hex}"}
        return 400, {"error": {"message": "Unsupported request", "type": "IGApiException", "code": 100}}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


if __name__ == "__main__":
    # `python -m tests.support.fake_instagram [port] [token ig_user_id]`: an Instagram-format server by hand
    import sys

    fake = FakeInstagram(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
    if len(sys.argv) > 3:
        fake.add_account(sys.argv[2], sys.argv[3])
    print(f"INSTAGRAM_API_BASE={fake.url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        fake.close()
