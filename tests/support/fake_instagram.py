"""A local server speaking the Instagram messaging API's format (GET /me, POST /{ig_user_id}/messages)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.support.json_reply import send_json

# where the fake serves attachments, as Meta's CDN would (no token asked)
CDN_PREFIX = "/cdn/ig/"
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
        self.sent: list[tuple[str, str, str]] = []  # messages accepted: (recipient id, text, message_id)
        # files accepted by URL: (recipient id, {type, payload: {url}}, message_id)
        self.attachments: list[tuple[str, dict[str, Any], str]] = []
        self._failures: dict[str, list[tuple[int, dict[str, Any]]]] = {}  # recipient id -> scripted answers
        # what people attached (Meta's CDN): path -> (bytes, content type); served to anyone, as a CDN link is
        self.cdn: dict[str, tuple[bytes, str]] = {}
        self.cdn_reads: list[tuple[str, dict[str, str]]] = []  # (path, headers)
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                if self.path.startswith(CDN_PREFIX):
                    fake._serve_cdn(self)
                    return
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else {}
                except ValueError:
                    body = {}
                headers = {k.lower(): v for k, v in self.headers.items()}
                with fake._lock:
                    fake.calls.append((self.command, self.path, headers, body if isinstance(body, dict) else {}))
                status, reply = fake._answer(self.command, self.path, headers, body if isinstance(body, dict) else {})
                send_json(self, status, reply)

            do_GET = do_POST = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v21.0"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add_attachment(self, data: bytes, content_type: str) -> str:
        """A file a person attached: its CDN URL (`attachments[].payload.url`), which needs no token."""
        path = f"{CDN_PREFIX}{uuid.uuid4().hex}?stp=dst-jpg&oh=00_AY&oe=6800"
        with self._lock:
            self.cdn[path.partition("?")[0]] = (data, content_type)
        return f"{self.url.removesuffix('/v21.0')}{path}"

    def missing_attachment(self) -> str:
        """A CDN URL that answers 404 (an expired attachment)."""
        return f"{self.url.removesuffix('/v21.0')}{CDN_PREFIX}{uuid.uuid4().hex}"

    def _serve_cdn(self, handler: BaseHTTPRequestHandler) -> None:
        path = handler.path.split("?")[0]
        with self._lock:
            self.cdn_reads.append((path, {k.lower(): v for k, v in handler.headers.items()}))
            found = self.cdn.get(path)
        if found is None:
            handler.send_response(404)
            handler.send_header("content-length", "0")
            handler.end_headers()
            return
        handler.send_response(200)
        handler.send_header("content-type", found[1])
        handler.send_header("content-length", str(len(found[0])))
        handler.end_headers()
        handler.wfile.write(found[0])

    def add_account(self, access_token: str, ig_user_id: str) -> None:
        with self._lock:
            self.accounts[access_token] = ig_user_id

    def _answer(
        self, method: str, target: str, headers: dict[str, str], body: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
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
            recipient, message = body.get("recipient"), body.get("message")
            if not isinstance(recipient, dict) or not isinstance(message, dict) or not _sendable(message):
                return 400, {"error": {"message": "(#100) Invalid parameter", "type": "IGApiException", "code": 100}}
            with self._lock:
                queue = self._failures.get(str(recipient.get("id")))
                failure = queue.pop(0) if queue else None
            if failure is not None:
                return failure
            mid = f"aWdf{uuid.uuid4().hex}"
            with self._lock:
                if "attachment" in message:  # a file by URL
                    self.attachments.append((str(recipient.get("id")), message["attachment"], mid))
                else:
                    self.sent.append((str(recipient.get("id")), str(message["text"]), mid))
            return 200, {"recipient_id": recipient.get("id"), "message_id": mid}
        return 400, {"error": {"message": "Unsupported request", "type": "IGApiException", "code": 100}}

    def fail_next(self, recipient: str, *failures: tuple[int, dict[str, Any]]) -> None:
        """The next sends to `recipient` answer with these (status, body) pairs, in order."""
        with self._lock:
            self._failures.setdefault(recipient, []).extend(failures)

    def sent_to(self, recipient: str) -> list[tuple[str, str, str]]:
        with self._lock:
            return [s for s in self.sent if s[0] == recipient]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _sendable(message: dict[str, Any]) -> bool:
    """A text, or one attachment by URL (image, video, audio, file)."""
    if message.get("text"):
        return True
    attachment = message.get("attachment")
    if not isinstance(attachment, dict) or attachment.get("type") not in ("image", "video", "audio", "file"):
        return False
    payload = attachment.get("payload")
    return isinstance(payload, dict) and str(payload.get("url", "")).startswith(("http://", "https://"))


SERVER_ERROR = (500, {"error": {"message": "An unexpected error has occurred.", "type": "OAuthException", "code": 2}})


def _envelope(ig_user_id: str, item: dict[str, Any]) -> bytes:
    payload = {
        "object": "instagram",
        "entry": [{"id": ig_user_id, "time": int(time.time() * 1000), "messaging": [item]}],
    }
    return json.dumps(payload).encode()


def messaging_webhook(
    ig_user_id: str,
    sender: str,
    mid: str,
    *,
    text: str | None = None,
    attachment: str | None = None,
    attachment_url: str | None = None,
    timestamp_ms: int | None = None,
) -> bytes:
    """An Instagram messaging webhook body with one message (entry[].messaging[].message); an attachment's
    payload.url is `attachment_url` (FakeInstagram.add_attachment), else a made-up CDN link."""
    message: dict[str, Any] = {"mid": mid}
    if text is not None:
        message["text"] = text
    if attachment is not None:
        url = attachment_url or f"https://lookaside.example/{mid}"
        message["attachments"] = [{"type": attachment, "payload": {"url": url}}]
    if sender == ig_user_id:
        message["is_echo"] = True
    recipient = "9001" if sender == ig_user_id else ig_user_id
    item = {
        "sender": {"id": sender},
        "recipient": {"id": recipient},
        "timestamp": timestamp_ms or int(time.time() * 1000),
        "message": message,
    }
    return _envelope(ig_user_id, item)


def read_webhook(ig_user_id: str, reader: str, mid: str, *, timestamp_ms: int | None = None) -> bytes:
    """An Instagram messaging webhook body saying `reader` has read our message `mid` (messaging[].read)."""
    item = {
        "sender": {"id": reader},
        "recipient": {"id": ig_user_id},
        "timestamp": timestamp_ms or int(time.time() * 1000),
        "read": {"mid": mid},
    }
    return _envelope(ig_user_id, item)


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
