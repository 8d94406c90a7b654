"""Agency webhooks: the signature scheme, the agencies' endpoints, one HTTP send, and the
operator's replay.

A delivery is a scheduled job of kind ``agency_webhook`` whose ``job_id`` is the delivery id;
the durable scheduler sends it with :class:`WebhookSender` and, when the send raises
:class:`WebhookFailed`, records the failure here and retries later with backoff and jitter.
``send`` itself never retries. See docs/webhooks.md for what agencies see.

Signature (``v1``): ``Refnet-Signature: v1=<hex HMAC-SHA256(secret, f"{timestamp}." + body)>``
over the exact body bytes, with the timestamp from ``Refnet-Webhook-Timestamp`` (unix seconds).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
import socket
import ssl
from datetime import UTC, date, datetime
from enum import Enum, StrEnum
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

import asyncpg
import httpx

JOB_KIND = "agency_webhook"  # scheduled_jobs.kind
CHANNEL = "webhook"  # deliveries.channel; deliveries.recipient is the agency id

HEADER_ID = "Refnet-Webhook-Id"
HEADER_TIMESTAMP = "Refnet-Webhook-Timestamp"
HEADER_SIGNATURE = "Refnet-Signature"
SIGNATURE_VERSION = "v1"
SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a secret
DEFAULT_TOLERANCE_S = 300
USER_AGENT = "refnet-webhooks/1"

# Plain http is accepted only for these hosts (local development and tests).
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
MAX_URL_LENGTH = 2048


class EventType(StrEnum):
    OFFER_CREATED = "offer.created"
    OFFER_DEADLINE_APPROACHING = "offer.deadline-approaching"
    OUTCOME_REQUESTED = "outcome.requested"
    OFFER_WITHDRAWN = "offer.withdrawn"


# --- the signature ------------------------------------------------------------------------


def _digest(secret: str, timestamp: int, body: bytes) -> str:
    signed = f"{timestamp}.".encode() + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``Refnet-Signature`` header value for this body sent at ``timestamp``."""
    return f"{SIGNATURE_VERSION}={_digest(secret, timestamp, body)}"


def verify(
    secret: str,
    timestamp_header: str,
    signature_header: str,
    body: bytes,
    now: datetime,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
) -> bool:
    """Whether ``body`` was signed with ``secret`` at a time within ``tolerance_s`` of
    ``now`` (either way). The signature header may hold several space-separated values
    (``v1=... v1=...``, e.g. during a secret rotation); one match is enough. Values of other
    versions are ignored. Comparisons take constant time."""
    try:
        timestamp = int(timestamp_header.strip())
    except (ValueError, AttributeError):
        return False
    if abs(now.timestamp() - timestamp) > tolerance_s:
        return False
    expected = _digest(secret, timestamp, body).encode()
    matched = False
    for value in signature_header.split():
        version, _, digest = value.partition("=")
        if version == SIGNATURE_VERSION and hmac.compare_digest(expected, digest.encode()):
            matched = True  # keep going: the time taken doesn't depend on which value matched
    return matched


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, Enum):
        return value.value
    raise TypeError(f"{type(value).__name__} is not JSON serialisable in a webhook body")


def body_for(
    delivery_id: UUID | str, event_type: str, data: dict[str, Any], created_at: datetime
) -> bytes:
    """The delivery's body: compact JSON with sorted keys, so the same delivery (a retry or a
    replay) is always the same bytes."""
    if created_at.tzinfo is None:
        raise ValueError("created_at must carry a time zone")
    document = {
        "id": str(delivery_id),
        "type": str(event_type),
        "created_at": created_at.astimezone(UTC).isoformat(),
        "data": data,
    }
    return json.dumps(
        document,
        separators=(",", ":"),
        sort_keys=True,
        ensure_ascii=False,
        allow_nan=False,
        default=_json_default,
    ).encode()


# --- the agencies' endpoints --------------------------------------------------------------


def validate_url(url: str) -> str:
    """The endpoint URL, or ValueError naming the field ``url``. https is required, except
    for 127.0.0.1 or localhost (local development)."""
    url = url.strip()
    if not url or len(url) > MAX_URL_LENGTH:
        raise ValueError(f"url: give an https URL of at most {MAX_URL_LENGTH} characters")
    if any(c.isspace() for c in url):
        raise ValueError("url: must not contain spaces")
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError as exc:
        raise ValueError(f"url: not a valid URL ({exc})") from None
    if parts.scheme not in ("https", "http") or not host:
        raise ValueError("url: must be an https URL with a host, e.g. https://example.org/hook")
    if parts.scheme == "http" and host not in LOCAL_HOSTS:
        raise ValueError("url: must use https (plain http only for 127.0.0.1 or localhost)")
    if parts.username is not None or parts.password is not None:
        raise ValueError("url: must not carry credentials; verify the signature instead")
    if parts.fragment:
        raise ValueError("url: must not have a #fragment")
    return url


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


async def register(conn: asyncpg.Connection, agency_id: str, url: str, now: datetime) -> str:
    """Set the agency's endpoint with a new secret (returned, shown once), enabled and with
    its failures forgotten. Registering again replaces the URL and rotates the secret."""
    url = validate_url(url)
    secret = new_secret()
    await conn.execute(
        "INSERT INTO agency_webhooks (agency_id, url, secret, enabled, consecutive_failures, "
        "created_at, updated_at) VALUES ($1, $2, $3, true, 0, $4, $4) "
        "ON CONFLICT (agency_id) DO UPDATE SET url = EXCLUDED.url, secret = EXCLUDED.secret, "
        "enabled = true, consecutive_failures = 0, disabled_at = NULL, disabled_reason = NULL, "
        "updated_at = EXCLUDED.updated_at",
        agency_id,
        url,
        secret,
        now,
    )
    return secret


async def endpoint(conn: asyncpg.Connection, agency_id: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT * FROM agency_webhooks WHERE agency_id = $1", agency_id
    )
    return row


async def remove(conn: asyncpg.Connection, agency_id: str) -> bool:
    """Forget the endpoint; whether there was one."""
    status = await conn.execute("DELETE FROM agency_webhooks WHERE agency_id = $1", agency_id)
    return bool(status != "DELETE 0")


async def record_success(conn: asyncpg.Connection, agency_id: str, now: datetime) -> None:
    await conn.execute(
        "UPDATE agency_webhooks SET consecutive_failures = 0, updated_at = $2 "
        "WHERE agency_id = $1 AND consecutive_failures <> 0",
        agency_id,
        now,
    )


async def record_failure(
    conn: asyncpg.Connection, agency_id: str, threshold: int, reason: str, now: datetime
) -> bool:
    """Count a failed delivery; at ``threshold`` consecutive failures the endpoint is
    disabled. True if this failure disabled it (so the caller can say so once). A 410 Gone
    disables at once: pass ``threshold=1``."""
    async with conn.transaction():
        was_enabled = await conn.fetchval(
            "SELECT enabled FROM agency_webhooks WHERE agency_id = $1 FOR UPDATE", agency_id
        )
        if was_enabled is None:
            return False
        enabled = await conn.fetchval(
            "UPDATE agency_webhooks SET consecutive_failures = consecutive_failures + 1, "
            "  enabled = enabled AND consecutive_failures + 1 < $2, "
            "  disabled_at = CASE WHEN enabled AND consecutive_failures + 1 >= $2 "
            "    THEN $4 ELSE disabled_at END, "
            "  disabled_reason = CASE WHEN enabled AND consecutive_failures + 1 >= $2 "
            "    THEN $3 ELSE disabled_reason END, "
            "  updated_at = $4 "
            "WHERE agency_id = $1 RETURNING enabled",
            agency_id,
            threshold,
            reason,
            now,
        )
        return bool(was_enabled and not enabled)


async def disable(conn: asyncpg.Connection, agency_id: str, reason: str, now: datetime) -> bool:
    """Disable at once (e.g. the endpoint answered 410 Gone); True if it was enabled."""
    return await record_failure(conn, agency_id, 1, reason, now)


async def enable(conn: asyncpg.Connection, agency_id: str, now: datetime) -> bool:
    """Re-enable the endpoint and forget its failures; False if the agency has none."""
    found = await conn.fetchval(
        "UPDATE agency_webhooks SET enabled = true, consecutive_failures = 0, "
        "disabled_at = NULL, disabled_reason = NULL, updated_at = $2 "
        "WHERE agency_id = $1 RETURNING true",
        agency_id,
        now,
    )
    return bool(found)


# --- sending ------------------------------------------------------------------------------


class WebhookFailed(Exception):
    """A delivery the endpoint did not take. ``gone``: it answered 410 Gone, so it should be
    disabled now rather than retried."""

    def __init__(self, reason: str, gone: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.gone = gone


def _connect_reason(exc: BaseException) -> str:
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, socket.gaierror):
            return f"host not found ({cause.strerror or cause})"
        if isinstance(cause, ssl.SSLError):
            return f"TLS failed ({cause.reason or cause})"
        cause = cause.__cause__ or cause.__context__
    return f"connection failed ({exc or type(exc).__name__})"


class WebhookSender:
    """POSTs signed deliveries over one pooled HTTP client. One attempt per ``send``, bounded
    by ``timeout_s`` in all (connect, send and response headers); the response body is never
    read. Redirects are not followed: they count as failures."""

    def __init__(self, timeout_s: float, *, transport: httpx.AsyncBaseTransport | None = None):
        self.timeout_s = timeout_s
        self._client = httpx.AsyncClient(
            timeout=timeout_s,
            follow_redirects=False,
            headers={"User-Agent": USER_AGENT},
            transport=transport,
        )

    async def close(self) -> None:
        await self._client.aclose()

    def headers(self, secret: str, delivery_id: str, body: bytes, now: datetime) -> dict[str, str]:
        timestamp = int(now.timestamp())
        return {
            "Content-Type": "application/json",
            HEADER_ID: str(delivery_id),
            HEADER_TIMESTAMP: str(timestamp),
            HEADER_SIGNATURE: sign(secret, timestamp, body),
        }

    async def send(
        self, url: str, secret: str, delivery_id: str, body: bytes, now: datetime
    ) -> int:
        """The endpoint's 2xx status, or WebhookFailed."""
        headers = self.headers(secret, str(delivery_id), body, now)
        try:
            async with (
                asyncio.timeout(self.timeout_s),
                self._client.stream("POST", url, content=body, headers=headers) as response,
            ):
                status = response.status_code
        except (TimeoutError, httpx.TimeoutException):
            raise WebhookFailed(f"timed out after {self.timeout_s:g}s") from None
        except httpx.ConnectError as exc:
            raise WebhookFailed(_connect_reason(exc)) from None
        except httpx.TransportError as exc:  # the connection broke, a bad response...
            detail = str(exc) or type(exc).__name__
            raise WebhookFailed(f"HTTP transport error ({detail})") from None
        if 200 <= status < 300:
            return status
        if status == 410:
            raise WebhookFailed("HTTP 410 Gone", gone=True)
        if 300 <= status < 400:
            raise WebhookFailed(f"HTTP {status} (redirects are not followed)")
        raise WebhookFailed(f"HTTP {status}")


# --- operator replay ----------------------------------------------------------------------


async def replay(conn: asyncpg.Connection, delivery_id: UUID, now: datetime) -> bool:
    """Put a finished (done or failed) webhook delivery back in the schedule, due now, with
    its attempts reset. It is sent again with the same id and body, signed afresh. False if
    there is no finished webhook delivery with that id (unknown, or still pending)."""
    async with conn.transaction():
        status = await conn.execute(
            "UPDATE scheduled_jobs SET status = 'pending', due_at = $2, lease_until = NULL, "
            "attempts = 0, last_error = NULL, done_at = NULL "
            "WHERE job_id = $1 AND kind = $3 AND status IN ('done', 'failed')",
            delivery_id,
            now,
            JOB_KIND,
        )
        if status == "UPDATE 0":
            return False
        await conn.execute(
            "UPDATE deliveries SET status = 'replayed', updated_at = $2 WHERE idempotency_key = $1",
            str(delivery_id),
            now,
        )
    return True


async def recent_deliveries(
    conn: asyncpg.Connection, agency_id: str, limit: int
) -> list[asyncpg.Record]:
    """The agency's latest webhook deliveries, newest first, with the job's next attempt
    when one is still to come."""
    return list(
        await conn.fetch(
            "SELECT d.idempotency_key, d.job_id, d.kind, d.subject, d.status, d.attempts, "
            "  d.error, d.sent_at, COALESCE(d.updated_at, d.sent_at) AS updated_at, "
            "  CASE WHEN j.status = 'pending' THEN j.due_at END AS next_attempt_at "
            "FROM deliveries d LEFT JOIN scheduled_jobs j ON j.job_id = d.job_id "
            "WHERE d.channel = $1 AND d.recipient = $2 "
            "ORDER BY d.updated_at DESC NULLS LAST, d.idempotency_key "
            "LIMIT $3",
            CHANNEL,
            agency_id,
            limit,
        )
    )
