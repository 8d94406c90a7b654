"""Delivery channels behind one shape: ``send`` returns the provider's id for the message
or raises ChannelError, which says whether a retry can help.

Each send carries an idempotency key (the delivery's id) that the receiving side can use to
recognise a repeat: the email's Message-ID, the SMS provider's idempotency token, the
webhook's delivery id.
"""

from __future__ import annotations

import asyncio
import logging
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

import aiosmtplib

from services.notifications.settings import NotificationsSettings

log = logging.getLogger(__name__)


class ChannelError(Exception):
    """A send that did not happen. ``permanent``: the same send will fail again (a rejected
    address, bad credentials), so the job fails at once instead of retrying."""

    def __init__(self, reason: str, *, permanent: bool = False) -> None:
        super().__init__(reason)
        self.permanent = permanent


def message_id(key: str) -> str:
    return f"<{key}@refnet.local>"


class EmailChannel:
    """SMTP over one connection kept open between sends (a batch of reminders would
    otherwise pay a handshake each), reopened when the server has dropped it."""

    def __init__(self, settings: NotificationsSettings) -> None:
        self._settings = settings
        self._smtp: aiosmtplib.SMTP | None = None
        self._lock = asyncio.Lock()

    async def send(self, to: str, subject: str, body: str, key: str) -> str:
        message = self._message(to, subject, body, key)
        async with self._lock:
            try:
                await self._send_once(message)
            except aiosmtplib.SMTPServerDisconnected:
                await self._drop()
                await self._send_once(message)  # a connection idle too long: one fresh try
            except aiosmtplib.SMTPRecipientsRefused as exc:
                raise ChannelError(f"SMTP refused {to}: {exc}", permanent=True) from exc
            except (aiosmtplib.SMTPException, OSError) as exc:
                await self._drop()
                permanent = isinstance(exc, aiosmtplib.SMTPResponseException) and exc.code >= 500
                raise ChannelError(f"SMTP: {exc}", permanent=permanent) from exc
        return str(message["Message-ID"])

    async def close(self) -> None:
        async with self._lock:
            await self._drop()

    def _message(self, to: str, subject: str, body: str, key: str) -> EmailMessage:
        s = self._settings
        message = EmailMessage()
        message["From"] = s.mail_from
        message["To"] = to
        message["Subject"] = subject
        message["Date"] = formatdate(localtime=False)
        # The delivery's key: a repeat after a crash carries the same Message-ID, which mail
        # clients and our sink recognise as the same message.
        message["Message-ID"] = message_id(key) if key else make_msgid()
        message.set_content(body)
        return message

    async def _send_once(self, message: EmailMessage) -> None:
        if self._smtp is None or not self._smtp.is_connected:
            self._smtp = await self._connect()
        await self._smtp.send_message(message)

    async def _connect(self) -> aiosmtplib.SMTP:
        s = self._settings
        smtp = aiosmtplib.SMTP(
            hostname=s.smtp_host,
            port=s.smtp_port,
            use_tls=s.smtp_use_tls,
            start_tls=s.smtp_starttls,
            timeout=s.smtp_timeout_s,
            username=s.smtp_username,  # connect() logs in when these are set
            password=s.smtp_password.get_secret_value() if s.smtp_password else None,
        )
        await smtp.connect()
        return smtp

    async def _drop(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is not None and smtp.is_connected:
            try:
                await smtp.quit()
            except (aiosmtplib.SMTPException, OSError):
                smtp.close()
