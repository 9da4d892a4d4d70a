"""A local server speaking the Telegram Bot API's format (getMe, sendMessage), for the tests and by hand."""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

BOT_PATH = re.compile(r"^/bot(?P<token>[^/]+)/(?P<method>[A-Za-z]+)$")
UNAUTHORIZED = {"ok": False, "error_code": 401, "description": "Unauthorized"}


def bot_token(bot_id: int, secret: str) -> str:
    """A token in Telegram's shape: "<bot id>:<secret>"."""
    return f"{bot_id}:{secret}"


class FakeTelegram:
    """Answers like api.telegram.org for any well-formed token not refused; records every call."""

    def __init__(self, port: int = 0) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []  # (token, method, body)
        self.refused_tokens: set[str] = set()
        self._lock = threading.Lock()
        self._next_message_id = 1
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else {}
                except ValueError:
                    body = {}
                status, reply = fake._answer(self.path.split("?")[0], body if isinstance(body, dict) else {})
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
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _answer(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        found = BOT_PATH.match(path)
        if found is None:
            return 404, {"ok": False, "error_code": 404, "description": "Not Found"}
        token, method = found["token"], found["method"]
        with self._lock:
            self.calls.append((token, method, body))
        bot_id, _, secret = token.partition(":")
        if not bot_id.isdigit() or len(secret) < 30 or token in self.refused_tokens:
            return 401, UNAUTHORIZED
        if method == "getMe":
            return 200, {
                "ok": True,
                "result": {
                    "id": int(bot_id),
                    "is_bot": True,
                    "first_name": "Chat4All Test",
                    "username": f"chat4all_{bot_id}_bot",
                    "can_join_groups": True,
                    "can_read_all_group_messages": False,
                    "supports_inline_queries": False,
                },
            }
        if method == "sendMessage":
            with self._lock:
                message_id, self._next_message_id = self._next_message_id, self._next_message_id + 1
            chat = {"id": body.get("chat_id"), "type": "private"}
            result = {"message_id": message_id, "date": int(time.time()), "chat": chat, "text": body.get("text")}
            return 200, {"ok": True, "result": result}
        return 404, {"ok": False, "error_code": 404, "description": "Not Found: method not found"}

    def called(self, method: str) -> list[tuple[str, dict[str, Any]]]:
        with self._lock:
            return [(token, body) for token, name, body in self.calls if name == method]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


if __name__ == "__main__":
    # `python -m tests.support.fake_telegram [port]`: a Telegram-format server for trying the platform by hand
    import sys

    fake = FakeTelegram(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
    print(f"TELEGRAM_API_BASE={fake.url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        fake.close()
