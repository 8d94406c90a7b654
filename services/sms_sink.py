"""A local fake SMS provider speaking the part of Twilio's Programmable Messaging REST API
that refnet uses (creating a message), over plain HTTP on 127.0.0.1. It keeps every message:
in memory for tests, as a JSON line under the run directory, and printed as one line. For
local runs and tests only; the real provider cannot run here."""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import re
import secrets
import threading
from datetime import UTC, datetime
from email.utils import format_datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger(__name__)

API_VERSION = "2010-04-01"
IDEMPOTENCY_HEADER = "I-Twilio-Idempotency-Token"
MAX_BODY_CHARS = 1600  # Twilio's limit for a (concatenated) message body
_MESSAGES_PATH = re.compile(rf"^/{API_VERSION}/Accounts/([^/]+)/Messages\.json$")
_E164 = re.compile(r"^\+[1-9][0-9]{7,14}$")  # "+" and 8 to 15 digits
_MAX_REQUEST_BYTES = 64 * 1024


def _error(code: int, message: str, status: int) -> dict[str, Any]:
    return {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


class _Reply(Exception):
    """Ends a request with this status and JSON body."""

    def __init__(
        self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(status)
        self.status = status
        self.payload = payload
        self.headers = headers or {}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], sink: SmsSink) -> None:
        super().__init__(address, _Handler)
        self.sink = sink


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    # HTTP/1.0: one request per connection, so stop() never waits on an idle keep-alive.
    protocol_version = "HTTP/1.0"
    timeout = 10  # a client that stalls mid-request does not hold a thread forever

    def do_POST(self) -> None:  # noqa: N802 - http.server hook name
        try:
            status, payload = self.server.sink._handle(
                self.path, dict(self.headers.items()), self._read_body()
            )
            self._send(status, payload, {})
        except _Reply as reply:
            self._send(reply.status, reply.payload, reply.headers)
        except Exception:
            log.exception("sms-sink failed on a request")
            self._send(500, _error(20500, "Internal Server Error", 500), {})

    def do_GET(self) -> None:  # noqa: N802 - http.server hook name
        self._send(404, _error(20404, f"The requested resource {self.path} was not found", 404), {})

    def _read_body(self) -> bytes:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > _MAX_REQUEST_BYTES:
            raise _Reply(400, _error(20001, "Invalid Content-Length", 400))
        return self.rfile.read(length)

    def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base signature
        log.debug("sms-sink %s", format % args)


class SmsSink:
    def __init__(
        self,
        data_dir: Path,
        port: int,
        *,
        account_sid: str,
        auth_token: str,
        echo: bool = False,
    ) -> None:
        self.data_dir = data_dir
        self.port = port
        self.account_sid = account_sid
        self._auth_token = auth_token
        self._echo = echo
        self._lock = threading.Lock()
        self._messages: list[dict[str, Any]] = []
        self._by_token: dict[str, dict[str, Any]] = {}  # idempotency token -> resource
        self._repeats = 0
        self._failures: list[int] = []  # statuses the next requests fail with
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The base URL a client uses as its API URL (like https://api.twilio.com)."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        if self._server is not None:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        server = _Server(("127.0.0.1", self.port), self)
        self.port = int(server.server_address[1])  # port 0 picks a free one
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"sms-sink-{self.port}",
            daemon=True,
        )
        thread.start()
        self._server, self._thread = server, thread

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    @property
    def messages(self) -> list[dict[str, Any]]:
        """Each kept message: to, from, body, sid, idempotency_key."""
        with self._lock:
            return [dict(message) for message in self._messages]

    @property
    def repeats(self) -> int:
        """Requests answered with an earlier message because their idempotency token repeated."""
        with self._lock:
            return self._repeats

    def fail_next(self, n: int, status: int = 503) -> None:
        """Make the next n requests fail with this status (before any other check)."""
        if not 400 <= status <= 599:
            raise ValueError("status must be an HTTP error status (400-599)")
        with self._lock:
            self._failures.extend([status] * n)

    # --- the API ---

    def _handle(self, path: str, headers: dict[str, str], raw: bytes) -> tuple[int, dict[str, Any]]:
        with self._lock:
            failure = self._failures.pop(0) if self._failures else None
        if failure is not None:
            reason = HTTPStatus(failure).phrase
            extra = {"Retry-After": "1"} if failure in (429, 503) else {}
            raise _Reply(failure, _error(20000 + failure, reason, failure), extra)

        request_path = urlsplit(path).path
        match = _MESSAGES_PATH.match(request_path)
        not_found = _error(20404, f"The requested resource {request_path} was not found", 404)
        if match is None:
            raise _Reply(404, not_found)
        self._authenticate(headers)
        if match.group(1) != self.account_sid:
            raise _Reply(404, not_found)

        form = parse_qs(raw.decode("utf-8", errors="replace"), keep_blank_values=True)
        to, from_, body = (form.get(name, [""])[0] for name in ("To", "From", "Body"))
        token = _header(headers, IDEMPOTENCY_HEADER)

        with self._lock:
            if token and token in self._by_token:
                self._repeats += 1
                return 201, dict(self._by_token[token])
        if not to:
            raise _Reply(400, _error(21604, "A 'To' phone number is required.", 400))
        if not _E164.match(to):
            message = f"The 'To' number {to} is not a valid phone number."
            raise _Reply(400, _error(21211, message, 400))
        if not from_:
            message = "A 'From' or 'MessagingServiceSid' parameter is required to send a message."
            raise _Reply(400, _error(21603, message, 400))
        if not body:
            raise _Reply(400, _error(21602, "Message body is required.", 400))
        if len(body) > MAX_BODY_CHARS:
            message = f"The concatenated message body exceeds the {MAX_BODY_CHARS} character limit."
            raise _Reply(400, _error(21617, message, 400))
        return 201, self._keep(to, from_, body, token)

    def _authenticate(self, headers: dict[str, str]) -> None:
        scheme, _, encoded = (_header(headers, "Authorization") or "").partition(" ")
        try:
            user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            user = password = ""
        good = (
            scheme.lower() == "basic"
            and hmac.compare_digest(user.encode(), self.account_sid.encode())
            and hmac.compare_digest(password.encode(), self._auth_token.encode())
        )
        if not good:
            raise _Reply(
                401,
                _error(20003, "Authenticate", 401),
                {"WWW-Authenticate": 'Basic realm="Twilio API"'},
            )

    def _keep(self, to: str, from_: str, body: str, token: str | None) -> dict[str, Any]:
        sid = "SM" + secrets.token_hex(16)
        now = format_datetime(datetime.now(UTC))
        uri = f"/{API_VERSION}/Accounts/{self.account_sid}/Messages/{sid}"
        resource: dict[str, Any] = {
            "account_sid": self.account_sid,
            "api_version": API_VERSION,
            "body": body,
            "date_created": now,
            "date_sent": None,
            "date_updated": now,
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": from_,
            "messaging_service_sid": None,
            "num_media": "0",
            "num_segments": "1",
            "price": None,
            "price_unit": "USD",
            "sid": sid,
            "status": "queued",
            "subresource_uris": {"media": f"{uri}/Media.json"},
            "to": to,
            "uri": f"{uri}.json",
        }
        kept = {"to": to, "from": from_, "body": body, "sid": sid, "idempotency_key": token}
        with self._lock:
            if token and token in self._by_token:  # the same token raced in concurrently
                self._repeats += 1
                return dict(self._by_token[token])
            self._messages.append(kept)
            number = len(self._messages)
            if token:
                self._by_token[token] = resource
            with (self.data_dir / "sms.jsonl").open("a", encoding="utf-8") as file:
                file.write(json.dumps(kept) + "\n")
        line = f"sms #{number} to {to}: {' '.join(body.split())[:60]}"
        log.info(line)
        if self._echo:
            print(f"[sms-sink] {line}", flush=True)  # noqa: T201 - the operator's view of SMS
        return dict(resource)


def _header(headers: dict[str, str], name: str) -> str | None:
    wanted = name.lower()
    return next((value for key, value in headers.items() if key.lower() == wanted), None)
