"""A local server speaking the WhatsApp Cloud API's send format, and a signer for its webhooks."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from tests.support.json_reply import send_json

if TYPE_CHECKING:
    from collections.abc import Callable


@dataclass(frozen=True)
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    answered: int
    platform_message_id: str | None


@dataclass(frozen=True)
class ScriptedFailure:
    status: int
    body: dict[str, Any]


FAULT_PATH = "/_fault"


class FakeWhatsApp:
    """Records every send, answers like graph.facebook.com, and can be told to fail the next calls.

    `on_request` sees every recorded send before its answer is written (a recorder that must not lose a send
    the caller was told about). `fault()` (or POST /_fault with its arguments as JSON) makes every send slow,
    or answer one status, for a while: what bench/chaos.py does to it.
    """

    def __init__(self, port: int = 0, on_request: Callable[[RecordedRequest], None] | None = None) -> None:
        self.requests: list[RecordedRequest] = []
        self.lookups: list[tuple[str, dict[str, str]]] = []  # GET /{phone_number_id}: (path, headers)
        self.refused_tokens: set[str] = set()
        # media a person sent (the Cloud API's media store): media id -> (bytes, mime type, the token that reads it)
        self.media: dict[str, tuple[bytes, str, str]] = {}
        self.missing_media: set[str] = set()  # ids the Graph API answers 404 for
        self.media_reads: list[tuple[str, str]] = []  # (path, authorization) of every media request
        self.media_delay = 0.0  # seconds each media download waits before its bytes
        self.on_request = on_request
        self._failures: dict[str, list[ScriptedFailure]] = {}
        self._fault: tuple[float, int | None, float] = (0.0, None, 0.0)  # (until, status, delay)
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                headers = {k.lower(): v for k, v in self.headers.items()}
                if fake._serve_media(self, headers.get("authorization", "")):
                    return
                with fake._lock:
                    fake.lookups.append((self.path, headers))
                status, reply = fake._lookup(self.path, headers.get("authorization", ""))
                send_json(self, status, reply)

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = {}
                if self.path == FAULT_PATH:
                    fake.fault(**body)
                    self.send_response(204)
                    self.end_headers()
                    return
                status, reply, wamid = fake._answer(self.path, body)
                recorded = RecordedRequest(
                    self.path, {k.lower(): v for k, v in self.headers.items()}, body, status, wamid
                )
                with fake._lock:
                    fake.requests.append(recorded)
                if fake.on_request is not None:
                    fake.on_request(recorded)
                send_json(self, status, reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v21.0"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add_media(self, data: bytes, mime_type: str, access_token: str) -> str:
        """A file a person sent to a number whose token is `access_token`: its media id, as a webhook names it."""
        media_id = str(uuid.uuid4().int)[:16]
        with self._lock:
            self.media[media_id] = (data, mime_type, access_token)
        return media_id

    def missing_media_id(self) -> str:
        """A media id the Graph API does not know (answers 404 for)."""
        media_id = str(uuid.uuid4().int)[:16]
        with self._lock:
            self.missing_media.add(media_id)
        return media_id

    def _serve_media(self, handler: BaseHTTPRequestHandler, authorization: str) -> bool:
        """GET /{version}/{media id} -> {url, mime_type, sha256, file_size, id}, and GET of that url -> the bytes,
        both with the number's token as a bearer (Cloud API, "Media": retrieve the URL, then download it).
        False when the request is not about media (a number's lookup)."""
        path, _, query = handler.path.partition("?")
        token = authorization.removeprefix("Bearer ").strip()
        if path == "/whatsapp_business/attachments/":
            media_id = dict(p.partition("=")[::2] for p in query.split("&")).get("mid", "")
            with self._lock:
                self.media_reads.append((handler.path, authorization))
                found = self.media.get(media_id)
            if found is None or token != found[2]:
                send_json(handler, 404 if found is None else 401, {"error": {"message": "not found", "code": 100}})
                return True
            time.sleep(self.media_delay)
            handler.send_response(200)
            handler.send_header("content-type", found[1])
            handler.send_header("content-length", str(len(found[0])))
            handler.end_headers()
            handler.wfile.write(found[0])
            return True
        media_id = path.rstrip("/").rsplit("/", 1)[-1]
        with self._lock:
            found = self.media.get(media_id)
            missing = media_id in self.missing_media
            if found is not None or missing:
                self.media_reads.append((handler.path, authorization))
        if missing:
            send_json(
                handler, 404, {"error": {"message": "(#100) Invalid parameter", "type": "OAuthException", "code": 100}}
            )
            return True
        if found is None:
            return False
        if token != found[2]:
            send_json(
                handler,
                401,
                {"error": {"message": "Invalid OAuth access token", "type": "OAuthException", "code": 190}},
            )
            return True
        host = handler.headers.get("host", "127.0.0.1")
        reply = {
            "messaging_product": "whatsapp",
            "url": f"http://{host}/whatsapp_business/attachments/?mid={media_id}&ext=1&hash=ARk",
            "mime_type": found[1],
            "sha256": hashlib.sha256(found[0]).hexdigest(),
            "file_size": len(found[0]),
            "id": media_id,
        }
        send_json(handler, 200, reply)
        return True

    def _lookup(self, path: str, authorization: str) -> tuple[int, dict[str, Any]]:
        """GET /{version}/{phone_number_id}, as the Graph API answers it for the number's access token."""
        token = authorization.removeprefix("Bearer ").strip()
        if not token or token in self.refused_tokens:
            return 401, {
                "error": {
                    "message": "Invalid OAuth access token - Cannot parse access token",
                    "type": "OAuthException",
                    "code": 190,
                }
            }
        number_id = path.split("?", maxsplit=1)[0].rstrip("/").rsplit("/", 1)[-1]
        if not number_id.isdigit():
            return 400, {"error": {"message": "Unsupported get request", "type": "GraphMethodException", "code": 100}}
        return 200, {
            "verified_name": "Chat4All Test",
            "code_verification_status": "VERIFIED",
            "display_phone_number": "+1 555-078-3881",
            "quality_rating": "GREEN",
            "id": number_id,
        }

    def fail_next(self, recipient: str, *failures: ScriptedFailure) -> None:
        """The next sends to `recipient` answer with these failures, in order."""
        with self._lock:
            self._failures.setdefault(recipient, []).extend(failures)

    def fault(self, seconds: float, status: int | None = None, delay: float = 0.0) -> None:
        """For `seconds`, every send waits `delay` seconds and then answers `status` (when given) instead."""
        with self._lock:
            self._fault = (time.monotonic() + seconds, status, delay)

    def _answer(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any], str | None]:
        recipient = str(body.get("to", ""))
        with self._lock:
            until, status, delay = self._fault
        if time.monotonic() < until:
            time.sleep(delay)
            if status == RATE_LIMITED.status:
                return RATE_LIMITED.status, RATE_LIMITED.body, None
            if status is not None:
                return status, {"error": {"message": "Internal error", "code": 1}}, None
        with self._lock:
            queue = self._failures.get(recipient)
            if queue:
                failure = queue.pop(0)
                return failure.status, failure.body, None
        if not path.endswith("/messages") or body.get("messaging_product") != "whatsapp":
            return (
                400,
                {"error": {"message": "Unsupported post request", "type": "GraphMethodException", "code": 100}},
                None,
            )
        if body.get("type") == "template" and not _template_shaped(body.get("template")):
            return 400, INVALID_TEMPLATE.body, None
        wamid = f"wamid.{uuid.uuid4().hex}"
        reply = {
            "messaging_product": "whatsapp",
            "contacts": [{"input": recipient, "wa_id": recipient}],
            "messages": [{"id": wamid}],
        }
        return 200, reply, wamid

    def sent_to(self, recipient: str) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.body.get("to") == recipient]

    def wait_for(self, recipient: str, count: int, timeout: float = 30.0) -> list[RecordedRequest]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            answered = [r for r in self.sent_to(recipient) if r.answered == 200]
            if len(answered) >= count:
                return answered
            time.sleep(0.05)
        raise AssertionError(f"{recipient} got {len(self.sent_to(recipient))} requests, expected {count} delivered")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


RATE_LIMITED = ScriptedFailure(
    429, {"error": {"message": "(#130429) Rate limit hit", "type": "OAuthException", "code": 130429}}
)
UNAVAILABLE = ScriptedFailure(503, {"error": {"message": "Service temporarily unavailable", "code": 2}})
INVALID_RECIPIENT = ScriptedFailure(
    400,
    {
        "error": {
            "message": "(#131030) Recipient phone number not in allowed list",
            "type": "OAuthException",
            "code": 131030,
        }
    },
)


def _template_shaped(template: Any) -> bool:
    """A template as the Cloud API requires it: a name and `language.code`, components a list when present."""
    if not isinstance(template, dict) or not isinstance(template.get("name"), str):
        return False
    language = template.get("language")
    if not isinstance(language, dict) or not isinstance(language.get("code"), str):
        return False
    return isinstance(template.get("components", []), list)


INVALID_TEMPLATE = ScriptedFailure(
    400, {"error": {"message": "(#100) Invalid parameter", "type": "OAuthException", "code": 100}}
)
# WhatsApp's answer to a free-form message outside the customer's 24-hour window (its error code 131047)
RE_ENGAGEMENT = ScriptedFailure(
    400,
    {
        "error": {
            "message": "(#131047) Re-engagement message",
            "type": "OAuthException",
            "code": 131047,
            "error_data": {
                "messaging_product": "whatsapp",
                "details": "Message failed to send because more than 24 hours have passed since the customer last "
                "replied to this number.",
            },
        }
    },
)


def status_webhook(
    phone_number_id: str, wamid: str, status: str, recipient: str, timestamp: int | None = None
) -> bytes:
    """A WhatsApp Cloud API status webhook body (entry[].changes[].value.statuses)."""
    payload = {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "102290129340398",
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {"display_phone_number": "15550783881", "phone_number_id": phone_number_id},
                            "statuses": [
                                {
                                    "id": wamid,
                                    "status": status,
                                    "timestamp": str(timestamp or int(time.time())),
                                    "recipient_id": recipient,
                                    "conversation": {"id": "CONVERSATION_ID", "origin": {"type": "service"}},
                                    "pricing": {"billable": True, "pricing_model": "CBP", "category": "service"},
                                }
                            ],
                        },
                    }
                ],
            }
        ],
    }
    return json.dumps(payload).encode()


def message_webhook(
    phone_number_id: str,
    wamid: str,
    sender: str,
    name: str,
    text: str,
    timestamp: int | None = None,
    *,
    media: tuple[str, str, str] | None = None,
) -> bytes:
    """A WhatsApp Cloud API inbound message webhook body (entry[].changes[].value.messages): a text, or with
    `media` (type, media id, mime type) an image, document or video whose caption is `text`."""
    message: dict[str, Any] = {"from": sender, "id": wamid, "timestamp": str(timestamp or int(time.time()))}
    if media is None:
        message |= {"type": "text", "text": {"body": text}}
    else:
        kind, media_id, mime_type = media
        message |= {"type": kind, kind: {"id": media_id, "mime_type": mime_type, "sha256": "x", "caption": text}}
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": phone_number_id},
        "contacts": [{"profile": {"name": name}, "wa_id": sender}],
        "messages": [message],
    }
    payload = {
        "object": "whatsapp_business_account",
        "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": value}]}],
    }
    return json.dumps(payload).encode()


def sign(app_secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


if __name__ == "__main__":
    # `python -m tests.support.fake_whatsapp [port]`: a WhatsApp-format server for trying the platform by hand
    import sys

    def show(request: RecordedRequest) -> None:
        # printed before the answer is written: a send the caller was told about is never missing from the output
        auth = request.headers.get("authorization")
        line = {
            "path": request.path,
            "authorization": auth,
            "body": request.body,
            "answered": request.answered,
            "platform_message_id": request.platform_message_id,
        }
        with printing:
            print(json.dumps(line), flush=True)

    printing = threading.Lock()
    fake = FakeWhatsApp(int(sys.argv[1]) if len(sys.argv) > 1 else 0, on_request=show)
    print(f"WHATSAPP_API_BASE={fake.url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        fake.close()
