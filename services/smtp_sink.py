"""A local SMTP server (aiosmtpd) that keeps every message: saved as .eml under the run
directory, printed as one line, and readable by tests. For local runs only.

Like a mail client, it shows a message once per Message-ID: a repeat (a sender that died
between the server's acceptance and its own record of it sends again under the same id) is
counted in ``repeats``, not kept twice."""

from __future__ import annotations

import email
import email.policy
import logging
import threading
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

log = logging.getLogger(__name__)


class _Handler:
    def __init__(self, sink: SmtpSink) -> None:
        self._sink = sink

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd hook name
        self._sink.keep(envelope.content)
        return "250 Message accepted for delivery"


class SmtpSink:
    def __init__(self, mail_dir: Path, port: int, *, echo: bool = False) -> None:
        self.mail_dir = mail_dir
        self.port = port
        self._echo = echo
        self._lock = threading.Lock()
        self._messages: list[EmailMessage] = []
        self._seen: set[str] = set()
        self.repeats: list[str] = []
        self._controller = Controller(_Handler(self), hostname="127.0.0.1", port=port)

    def start(self) -> None:
        self.mail_dir.mkdir(parents=True, exist_ok=True)
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()

    @property
    def messages(self) -> list[EmailMessage]:
        with self._lock:
            return list(self._messages)

    def keep(self, raw: bytes) -> None:
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        message_id = str(message["Message-ID"] or "")
        with self._lock:
            if message_id and message_id in self._seen:
                self.repeats.append(message_id)
                log.info("mail %s repeated: kept once", message_id)
                return
            self._seen.add(message_id)
            self._messages.append(message)
            number = len(self._messages)
        (self.mail_dir / f"{number:05d}.eml").write_bytes(raw)
        line = f"mail #{number} to {message['To']}: {message['Subject']}"
        log.info(line)
        if self._echo:
            print(f"[smtp-sink] {line}", flush=True)  # noqa: T201 - the operator's view of mail
