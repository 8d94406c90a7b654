"""Guessing API credentials is throttled per client address, in every service that takes
them (intake's worker tokens, notifications' agency keys).

Each failure (a credential unknown or revoked) is a row of the service's own failures
table, ``(address text, failed_at timestamptz)``. While an address has ``max_failures``
of them within the window, every credential it presents is refused before it is looked
up, a valid one too, so the answers tell a guesser nothing; refused requests add no rows,
so the address is served again once its failures leave the window. A request without
any credential is no guess and is not counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import ClassVar

import asyncpg
from fastapi import HTTPException, Request
from pydantic import BaseModel, Field

# The first key of the two-key advisory lock form, which never meets the one-key form's
# locks (the outbox relays'): a client chooses its address, and a key it could make collide
# with a long-held lock would park its requests, and their pool connections, for good. The
# namespaces in use are listed in services/intake/repository.py.
LOCK_NAMESPACE = 10


def client_address(request: Request) -> str:
    """The address a throttle counts: the client's, or what a trusted proxy's
    X-Forwarded-For says it is (uvicorn's proxy headers, FORWARDED_ALLOW_IPS)."""
    return request.client.host if request.client else "unknown"


class TooManyFailures(Exception):
    """The address presented too many unknown or revoked credentials in the window."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"retry after {retry_after_s}s")
        self.retry_after_s = retry_after_s

    def http(self, detail: str) -> HTTPException:
        return HTTPException(429, detail, headers={"Retry-After": str(self.retry_after_s)})


@dataclass(frozen=True)
class AddressThrottle:
    table: str  # a constant of the calling service, never user input
    window_s: int
    max_failures: int

    async def refuse_if_blocked(
        self, conn: asyncpg.Connection, address: str, now: datetime
    ) -> None:
        """TooManyFailures while ``address`` has max_failures failures in the window; it
        says when the oldest of those that block it leaves the window."""
        since = self._window_start(now)
        blocking = await conn.fetchval(
            f"SELECT failed_at FROM {self.table} WHERE address = $1 AND failed_at > $2 "
            "ORDER BY failed_at DESC OFFSET $3 LIMIT 1",
            address,
            since,
            self.max_failures - 1,
        )
        if blocking is not None:
            raise TooManyFailures(max(1, math.ceil((blocking - since).total_seconds())))

    async def record_failure(self, conn: asyncpg.Connection, address: str, now: datetime) -> None:
        """Count a failure of ``address`` (TooManyFailures instead if it is already
        blocked) and forget those that have left the window. In a transaction of its own:
        call it on a connection outside any other."""
        async with conn.transaction():
            # One address's failures take turns, so parallel guesses cannot all pass the count.
            await conn.execute(
                "SELECT pg_advisory_xact_lock($1, hashtext($2 || ':' || $3))",
                LOCK_NAMESPACE,
                self.table,
                address,
            )
            await self.refuse_if_blocked(conn, address, now)
            await conn.execute(
                f"DELETE FROM {self.table} WHERE failed_at <= $1", self._window_start(now)
            )
            await conn.execute(
                f"INSERT INTO {self.table} (address, failed_at) VALUES ($1, $2)",
                address,
                now,
            )

    def _window_start(self, now: datetime) -> datetime:
        return now - timedelta(seconds=self.window_s)


class ApiKeyThrottleSettings(BaseModel):
    """The settings of a service that takes API credentials: the same names and defaults
    in each, one policy for all of them. The service names its failures table."""

    api_key_failures_table: ClassVar[str]
    # Requests with an unknown or revoked credential allowed per client address in the
    # window; past that, every credential from the address is answered 429, unchecked.
    api_key_window_s: int = Field(default=15 * 60, ge=1)
    api_key_max_failures_per_address: int = Field(default=20, ge=1)

    @property
    def api_key_throttle(self) -> AddressThrottle:
        return AddressThrottle(
            self.api_key_failures_table,
            self.api_key_window_s,
            self.api_key_max_failures_per_address,
        )
