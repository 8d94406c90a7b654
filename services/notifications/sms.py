"""SMS through a Twilio-compatible Programmable Messaging REST API, with httpx.

Failures are sorted for the scheduler: `SmsRejected` is permanent (sending the same
request again will fail the same way), `SmsUnavailable` is transient (retry later with the
same idempotency key)."""

from __future__ import annotations

import re
from typing import Any, Self
from urllib.parse import quote

import httpx

from services.notifications.channels import ChannelError
from services.notifications.settings import NotificationsSettings

API_VERSION = "2010-04-01"
IDEMPOTENCY_HEADER = "I-Twilio-Idempotency-Token"
_E164 = re.compile(r"^\+[1-9][0-9]{7,14}$")  # "+" and 8 to 15 digits
_SEPARATORS = re.compile(r"[\s().-]")


class SmsRejected(ChannelError):
    """The provider refused the message (a 4xx other than 408/429), or it cannot be sent."""

    def __init__(self, message: str, *, status: int | None = None, code: int | None = None) -> None:
        super().__init__(message, permanent=True)
        self.status = status
        self.code = code


class SmsUnavailable(ChannelError):
    """The provider could not be reached or asked to try later (429, 5xx, timeouts)."""

    def __init__(self, message: str, *, status: int | None = None, code: int | None = None) -> None:
        super().__init__(message, permanent=False)
        self.status = status
        self.code = code


def to_e164(phone: str) -> str:
    """refnet's stored US numbers ("503-555-0142") as E.164 ("+15035550142"); a number
    already in E.164 is kept. Raises ValueError for anything else."""
    compact = _SEPARATORS.sub("", phone.strip())
    if compact.startswith("+"):
        candidate = compact
    elif compact.isascii() and compact.isdigit() and len(compact) == 10:
        candidate = "+1" + compact
    elif compact.isascii() and compact.isdigit() and len(compact) == 11 and compact[0] == "1":
        candidate = "+" + compact
    else:
        candidate = ""
    if not _E164.match(candidate):
        raise ValueError("not a US 10-digit or E.164 phone number")
    return candidate


class SmsChannel:
    def __init__(
        self,
        api_url: str,
        account_sid: str,
        auth_token: str,
        from_number: str,
        timeout_s: float,
    ) -> None:
        if not api_url.startswith(("http://", "https://")):
            raise ValueError("the SMS API URL must start with http:// or https://")
        if not account_sid or not auth_token:
            raise ValueError("the SMS account SID and auth token are required")
        self.api_url = api_url.rstrip("/")
        self.account_sid = account_sid
        self._auth_token = auth_token
        self.from_number = to_e164(from_number)
        self.timeout_s = timeout_s
        self._client: httpx.AsyncClient | None = None

    @classmethod
    def from_settings(cls, settings: NotificationsSettings) -> SmsChannel | None:
        """None when SMS is not configured; ValueError when it is configured incompletely."""
        if not settings.sms_configured:
            return None
        assert settings.sms_api_url and settings.sms_account_sid and settings.sms_auth_token
        if not settings.sms_from:
            raise ValueError("SMS_FROM (the sending number) must be set when SMS is configured")
        return cls(
            api_url=settings.sms_api_url,
            account_sid=settings.sms_account_sid,
            auth_token=settings.sms_auth_token.get_secret_value(),
            from_number=settings.sms_from,
            timeout_s=settings.sms_timeout_s,
        )

    @property
    def messages_url(self) -> str:
        account = quote(self.account_sid, safe="")
        return f"{self.api_url}/{API_VERSION}/Accounts/{account}/Messages.json"

    async def start(self) -> None:
        self._ensure_client()

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _ensure_client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                auth=httpx.BasicAuth(self.account_sid, self._auth_token),
                timeout=self.timeout_s,
                follow_redirects=False,
                headers={"Accept": "application/json", "User-Agent": "refnet-notifications"},
            )
        return self._client

    async def send(self, to: str, body: str, idempotency_key: str) -> str:
        """Send one SMS; returns the provider's message SID. The idempotency key must be the
        same on every attempt of one message, so a provider honouring it sends it once."""
        if not idempotency_key:
            raise ValueError("an idempotency key is required")
        try:
            to_number = to_e164(to)
        except ValueError as exc:
            # The number itself is left out: error texts end up in logs and job records.
            raise SmsRejected(f"cannot send SMS: the recipient's number is {exc}") from None
        client = self._ensure_client()
        try:
            response = await client.post(
                self.messages_url,
                data={"To": to_number, "From": self.from_number, "Body": body},
                headers={IDEMPOTENCY_HEADER: idempotency_key},
            )
        except httpx.TimeoutException as exc:
            raise SmsUnavailable(f"SMS provider timed out ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise SmsUnavailable(f"SMS provider unreachable ({type(exc).__name__})") from exc
        return _message_sid(response)


def _message_sid(response: httpx.Response) -> str:
    status = response.status_code
    if response.is_success:
        sid = _json(response).get("sid")
        if not isinstance(sid, str) or not sid:
            # It may have been accepted: a retry with the same idempotency key is the safe way on.
            raise SmsUnavailable(f"SMS provider answered HTTP {status} without a message SID")
        return sid
    problem = _json(response)
    code = problem.get("code") if isinstance(problem.get("code"), int) else None
    detail = problem.get("message") or response.text[:200].strip() or response.reason_phrase
    text = f"HTTP {status}" + (f", code {code}" if code is not None else "") + f": {detail}"
    if status == 429 or status == 408 or status >= 500:
        raise SmsUnavailable(f"SMS provider unavailable: {text}", status=status, code=code)
    raise SmsRejected(f"SMS provider rejected the message: {text}", status=status, code=code)


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        payload = response.json()
    except ValueError:
        return {}
    return payload if isinstance(payload, dict) else {}
