"""People at partner agencies who use the web inbox: their accounts and their logins.

Passwords are argon2 hashes; failed logins are counted per account and per client address
over a window, and a login is refused without checking the password while either is over
its limit, so guessing cannot go on.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import uuid4

import asyncpg

from services.notifications.settings import NotificationsSettings
from shared.clock import SystemClock
from shared.db import create_pool
from shared.hsds import AGENCY_ID_PATTERN
from shared.passwords import hash_password, verify_password

SCHEMA = "notifications"
MIN_PASSWORD_LENGTH = 12


class AccountError(Exception):
    """A problem with an account command, in words the operator can act on."""


class TooManyAttempts(Exception):
    pass


@dataclass(frozen=True)
class AgencyUser:
    user_id: str
    agency_id: str
    email: str
    name: str


async def add_user(database_url: str, agency_id: str, email: str, name: str, password: str) -> None:
    """Add an agency user, or reset an existing one's name, agency and password."""
    if not re.fullmatch(AGENCY_ID_PATTERN, agency_id):
        raise AccountError(f"{agency_id!r} is not an agency id")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"the password needs at least {MIN_PASSWORD_LENGTH} characters")
    if "@" not in email:
        raise AccountError(f"{email!r} is not an email address")
    pool = await create_pool(database_url, SCHEMA, max_size=1)
    try:
        async with pool.acquire() as conn:
            await upsert_user(conn, agency_id, email, name, hash_password(password))
    finally:
        await pool.close()


async def disable_user(database_url: str, email: str) -> None:
    pool = await create_pool(database_url, SCHEMA, max_size=1)
    try:
        async with pool.acquire() as conn:
            result = await conn.execute(
                "UPDATE agency_users SET disabled_at = $2 WHERE email = $1",
                email.strip().lower(),
                SystemClock().now(),
            )
    finally:
        await pool.close()
    if result == "UPDATE 0":
        raise AccountError(f"no agency user {email}")


async def upsert_user(
    conn: asyncpg.Connection, agency_id: str, email: str, name: str, password_hash: str
) -> None:
    await conn.execute(
        "INSERT INTO agency_users (user_id, agency_id, email, name, password_hash, created_at) "
        "VALUES ($1, $2, $3, $4, $5, now()) ON CONFLICT (email) DO UPDATE SET "
        "agency_id = $2, name = $4, password_hash = $5, disabled_at = NULL",
        uuid4(),
        agency_id,
        email.strip().lower(),
        name,
        password_hash,
    )


async def ensure_demo_user(pool: asyncpg.Pool, settings: NotificationsSettings) -> None:
    """Local runs: a ready inbox account for the demo agency."""
    assert settings.demo_agency_user_password is not None
    async with pool.acquire() as conn:
        await upsert_user(
            conn,
            settings.demo_agency_id,
            settings.demo_agency_user_email,
            "Demo Agency User",
            hash_password(settings.demo_agency_user_password.get_secret_value()),
        )


async def user_by_id(
    conn: asyncpg.Connection, user_id: str, logged_in_at: float | None = None
) -> AgencyUser | None:
    """The active user; with ``logged_in_at`` (epoch seconds), only if a session that
    logged in then has not been ended since (end_sessions)."""
    row = await conn.fetchrow(
        "SELECT * FROM agency_users WHERE user_id = $1::uuid AND disabled_at IS NULL "
        "AND ($2::float8 IS NULL OR sessions_revoked_at IS NULL "
        "OR sessions_revoked_at < to_timestamp($2::float8))",
        user_id,
        logged_in_at,
    )
    return _user(row) if row else None


async def end_sessions(conn: asyncpg.Connection, user_id: str, at: datetime) -> None:
    """Every session of the user that logged in at or before ``at`` is over."""
    await conn.execute(
        "UPDATE agency_users SET sessions_revoked_at = $2 WHERE user_id = $1::uuid", user_id, at
    )


# Two-key form, its own namespace (see services/intake/repository.py): the account is typed
# by whoever logs in, and must not be able to name another lock.
_LOCK_INBOX_LOGIN = 11


async def authenticate(
    pool: asyncpg.Pool,
    settings: NotificationsSettings,
    now: datetime,
    email: str,
    password: str,
    address: str,
) -> AgencyUser | None:
    """The user these credentials belong to, or None; TooManyAttempts while the account or
    the address has failed too often in the window."""
    account = email.strip().lower()
    since = now - timedelta(seconds=settings.login_window_s)
    async with pool.acquire() as conn, conn.transaction():
        # One account's attempts take turns, so parallel guesses cannot all pass the count.
        await conn.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))", _LOCK_INBOX_LOGIN, account
        )
        by_account, by_address = await _failures_since(conn, account, address, since)
        if (
            by_account >= settings.login_max_failures_per_account
            or by_address >= settings.login_max_failures_per_address
        ):
            raise TooManyAttempts
        row = await conn.fetchrow(
            "SELECT * FROM agency_users WHERE email = $1 AND disabled_at IS NULL", account
        )
        # argon2 is deliberately slow: keep it off the event loop.
        hashed = row["password_hash"] if row else None
        if await asyncio.to_thread(verify_password, hashed, password):
            await conn.execute(
                "DELETE FROM agency_login_failures WHERE account = $1 AND failed_at >= $2",
                account,
                since,
            )
            assert row is not None
            return _user(row)
        await conn.execute(
            "INSERT INTO agency_login_failures (account, address, failed_at) VALUES ($1, $2, $3)",
            account,
            address,
            now,
        )
        return None


async def _failures_since(
    conn: asyncpg.Connection, account: str, address: str, since: datetime
) -> tuple[int, int]:
    row = await conn.fetchrow(
        "SELECT count(*) FILTER (WHERE account = $1) AS by_account, "
        "count(*) FILTER (WHERE address = $2) AS by_address "
        "FROM agency_login_failures WHERE failed_at >= $3 AND (account = $1 OR address = $2)",
        account,
        address,
        since,
    )
    return int(row["by_account"]), int(row["by_address"])


def _user(row: asyncpg.Record) -> AgencyUser:
    return AgencyUser(str(row["user_id"]), row["agency_id"], row["email"], row["name"])
