"""A local server speaking the Telegram Bot API's format (getMe, sendMessage), for the tests and by hand."""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.support.json_reply import send_json

# the Bot API's send methods for a file by URL, and the field that carries it
MEDIA_FIELDS = {"sendPhoto": "photo", "sendVideo": "video", "sendDocument": "document"}
BOT_PATH = re.compile(r"^/bot(?P<token>[^/]+)/(?P<method>[A-Za-z]+)$")
# where a file's bytes are, once getFile gave its path: /file/bot<token>/<file_path>
FILE_PATH = re.compile(r"^/file/bot(?P<token>[^/]+)/(?P<path>.+)$")
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
        self._next_message_id: dict[str, int] = {}
        self._failures: dict[str, list[tuple[int, dict[str, Any]]]] = {}  # chat id -> scripted answers
        # files people sent the bots: file_id -> (bot token, file_path, bytes)
        self.files: dict[str, tuple[str, str, bytes]] = {}
        self.downloads: list[str] = []  # the file paths read
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                if fake._serve_file(self):
                    return
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else {}
                except ValueError:
                    body = {}
                status, reply = fake._answer(self.path.split("?")[0], body if isinstance(body, dict) else {})
                send_json(self, status, reply)

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
        if method == "sendMessage" or method in MEDIA_FIELDS:
            return self._send_message(body, method)
        if method == "getFile":
            return self._get_file(token, str(body.get("file_id")))
        return 404, {"ok": False, "error_code": 404, "description": "Not Found: method not found"}

    def add_file(self, token: str, data: bytes, file_path: str) -> str:
        """A file a person sent to the bot of `token`: its file_id, as an Update names it."""
        file_id = f"AgACAgEAAxkBAAI{uuid.uuid4().hex}"
        with self._lock:
            self.files[file_id] = (token, file_path, data)
        return file_id

    def _get_file(self, token: str, file_id: str) -> tuple[int, dict[str, Any]]:
        """getFile: the file's path (its bytes are at /file/bot<token>/<file_path>), for the bot that got it."""
        with self._lock:
            found = self.files.get(file_id)
        if found is None or found[0] != token:
            return 400, {"ok": False, "error_code": 400, "description": "Bad Request: invalid file_id"}
        result = {"file_id": file_id, "file_unique_id": f"AQAD{file_id[-6:]}", "file_size": len(found[2])}
        return 200, {"ok": True, "result": result | {"file_path": found[1]}}

    def _serve_file(self, handler: BaseHTTPRequestHandler) -> bool:
        """GET /file/bot<token>/<file_path>: the bytes, for the bot that got the file (else 404)."""
        found = FILE_PATH.match(handler.path.split("?")[0])
        if found is None:
            return False
        with self._lock:
            self.downloads.append(found["path"])
            data = next(
                (d for t, path, d in self.files.values() if t == found["token"] and path == found["path"]), None
            )
        if data is None:
            send_json(handler, 404, {"ok": False, "error_code": 404, "description": "Not Found"})
            return True
        handler.send_response(200)
        handler.send_header("content-type", "application/octet-stream")
        handler.send_header("content-length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)
        return True

    def _send_message(self, body: dict[str, Any], method: str = "sendMessage") -> tuple[int, dict[str, Any]]:
        with self._lock:
            queue = self._failures.get(str(body.get("chat_id")))
            failure = queue.pop(0) if queue else None
        if failure is not None:
            return failure
        if "chat_id" not in body:
            return 400, {"ok": False, "error_code": 400, "description": "Bad Request: chat_id is empty"}
        field = MEDIA_FIELDS.get(method)
        if field is not None:  # a file by its URL (Telegram fetches it), with an optional caption
            if not isinstance(body.get(field), str) or not body[field].startswith(("http://", "https://")):
                return 400, {"ok": False, "error_code": 400, "description": f"Bad Request: {field} is not a URL"}
        elif not isinstance(body.get("text"), str) or not body["text"]:
            return 400, {"ok": False, "error_code": 400, "description": "Bad Request: message text is empty"}
        chat_id = body["chat_id"]
        with self._lock:  # as Telegram numbers them: per chat, so two chats both have a message 1
            message_id = self._next_message_id.get(str(chat_id), 1)
            self._next_message_id[str(chat_id)] = message_id + 1
        chat = {"id": chat_id, "type": "private"}
        result = {"message_id": message_id, "date": int(time.time()), "chat": chat, "text": body.get("text")}
        return 200, {"ok": True, "result": result}

    def incoming(self, chat_id: int, update_id: int, **message: Any) -> tuple[int, bytes]:
        """A person's message in their chat with the bot, as the Update Telegram would post to the webhook.

        Telegram numbers a chat's messages in one sequence, both directions: this takes the next number.
        """
        with self._lock:
            message_id = self._next_message_id.get(str(chat_id), 1)
            self._next_message_id[str(chat_id)] = message_id + 1
        return message_id, update(update_id, chat_id=chat_id, message_id=message_id, **message)

    def fail_next(self, chat_id: int, *failures: tuple[int, dict[str, Any]]) -> None:
        """The next sendMessage calls to the chat answer with these (status, body) pairs, in order."""
        with self._lock:
            self._failures.setdefault(str(chat_id), []).extend(failures)

    def called(self, method: str) -> list[tuple[str, dict[str, Any]]]:
        with self._lock:
            return [(token, body) for token, name, body in self.calls if name == method]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


TOO_MANY_REQUESTS = (
    429,
    {
        "ok": False,
        "error_code": 429,
        "description": "Too Many Requests: retry after 1",
        "parameters": {"retry_after": 1},
    },
)
BOT_BLOCKED = (403, {"ok": False, "error_code": 403, "description": "Forbidden: bot was blocked by the user"})


def update(
    update_id: int,
    *,
    chat_id: int,
    message_id: int,
    text: str | None = None,
    first_name: str = "Ana",
    date: int | None = None,
    photo: bool = False,
    photo_file_id: str | None = None,
    caption: str | None = None,
    location: tuple[float, float] | None = None,
    chat_type: str = "private",
) -> bytes:
    """A Telegram Bot API `Update` with a `message` as a webhook delivers it (the sender is the chat's user)."""
    sender = {"id": chat_id, "is_bot": False, "first_name": first_name, "language_code": "pt-br"}
    chat: dict[str, Any] = {"id": chat_id, "type": chat_type}
    if chat_type == "private":
        chat["first_name"] = first_name
    else:
        sender["id"] = 4242
    message: dict[str, Any] = {"message_id": message_id, "from": sender, "chat": chat, "date": date or int(time.time())}
    if text is not None:
        message["text"] = text
    if photo or photo_file_id:
        # Telegram sends a photo in several sizes, the largest last; `photo_file_id` is the largest's
        sizes = [(90, 51, 1234, f"AgACAgEAAxkBAAI{90}"), (320, 180, 15321, photo_file_id or f"AgACAgEAAxkBAAI{320}")]
        message["photo"] = [
            {"file_id": file_id, "file_unique_id": f"AQAD{w}", "width": w, "height": h, "file_size": n}
            for w, h, n, file_id in sizes
        ]
    if caption is not None:
        message["caption"] = caption
    if location is not None:
        message["location"] = {"latitude": location[0], "longitude": location[1]}
    return json.dumps({"update_id": update_id, "message": message}).encode()


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
