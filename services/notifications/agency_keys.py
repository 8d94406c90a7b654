"""Agency API keys as an operator manages them: list, issue, rotate and revoke.

A key is shown once, when issued, and stored only as its SHA-256 (notifications.
agency_api_keys). An operator names a key by its fingerprint: the first 8 hex digits of that
hash, which says nothing usable about the key. Revocation takes effect at the agency's next
request: the API looks each key up on every call.

Rotation issues a new key and revokes every older active key of the agency at once, unless
asked to keep them: there is no column for a scheduled revocation, so a grace period is
"rotate with keep_old, let the agency switch, then revoke the old fingerprint".

Guessing is throttled per client address (shared/throttle.py): each request with an unknown
or revoked key is counted in notifications.api_key_failures.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from services.notifications import repository as repo
from services.notifications.handlers import hash_api_key, issue_api_key
from shared.throttle import AddressThrottle

FINGERPRINT_LENGTH = 8
_FINGERPRINT = re.compile(r"^[0-9a-f]{8,64}$")


class KeyProblem(ValueError):
    """An operator's request about keys that cannot be done; the message says why."""


@dataclass(frozen=True)
class ApiKey:
    fingerprint: str
    created_at: datetime
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def fingerprint(key: str) -> str:
    """The fingerprint of a key as issued (``rn_...``)."""
    return hash_api_key(key)[:FINGERPRINT_LENGTH]


async def list_keys(pool: asyncpg.Pool, agency_id: str) -> list[ApiKey]:
    """Every key the agency was ever issued, oldest first."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT key_hash, created_at, revoked_at FROM agency_api_keys WHERE agency_id = $1 "
            "ORDER BY created_at, key_hash",
            agency_id,
        )
    return [
        ApiKey(r["key_hash"][:FINGERPRINT_LENGTH], r["created_at"], r["revoked_at"]) for r in rows
    ]


async def active_count(pool: asyncpg.Pool, agency_id: str) -> int:
    async with pool.acquire() as conn:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM agency_api_keys WHERE agency_id = $1 AND revoked_at IS NULL",
            agency_id,
        )
    return count


async def issue(pool: asyncpg.Pool, agency_id: str) -> str:
    """A new key, in addition to any the agency has."""
    return await issue_api_key(pool, agency_id)


async def rotate(
    pool: asyncpg.Pool, agency_id: str, *, keep_old: bool = False
) -> tuple[str, list[str]]:
    """Issue a new key and revoke every other active key of the agency (none with
    ``keep_old``); return the new key and the fingerprints revoked. The new key exists
    before the old ones go, so a failure in between never leaves the agency without one."""
    key = await issue_api_key(pool, agency_id)
    if keep_old:
        return key, []
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "UPDATE agency_api_keys SET revoked_at = now() "
            "WHERE agency_id = $1 AND revoked_at IS NULL AND key_hash <> $2 RETURNING key_hash",
            agency_id,
            hash_api_key(key),
        )
    return key, sorted(r["key_hash"][:FINGERPRINT_LENGTH] for r in rows)


async def revoke(pool: asyncpg.Pool, agency_id: str, key_fingerprint: str) -> str:
    """Revoke the agency's active key with this fingerprint (or a longer prefix of its hash);
    return the fingerprint. KeyProblem if there is no such active key."""
    wanted = key_fingerprint.strip().lower()
    if not _FINGERPRINT.match(wanted):
        raise KeyProblem(
            f"{key_fingerprint!r} is not a key fingerprint: give the 8 hex digits "
            f"`refnet agency keys {agency_id}` shows"
        )
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(
            "SELECT key_hash, revoked_at FROM agency_api_keys "
            "WHERE agency_id = $1 AND starts_with(key_hash, $2) FOR UPDATE",
            agency_id,
            wanted,
        )
        active = [r["key_hash"] for r in rows if r["revoked_at"] is None]
        if not rows:
            raise KeyProblem(f"agency {agency_id} has no key with fingerprint {wanted}")
        if not active:
            raise KeyProblem(f"the key {wanted} of agency {agency_id} is already revoked")
        if len(active) > 1:
            raise KeyProblem(
                f"{len(active)} active keys of agency {agency_id} start with {wanted}; "
                "use `refnet agency rotate-key` or `revoke-key --all`"
            )
        await conn.execute(
            "UPDATE agency_api_keys SET revoked_at = now() WHERE key_hash = $1", active[0]
        )
    return str(active[0])[:FINGERPRINT_LENGTH]


async def revoke_all(pool: asyncpg.Pool, agency_id: str) -> list[str]:
    """Revoke every active key of the agency; return their fingerprints."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "UPDATE agency_api_keys SET revoked_at = now() "
            "WHERE agency_id = $1 AND revoked_at IS NULL RETURNING key_hash",
            agency_id,
        )
    return sorted(r["key_hash"][:FINGERPRINT_LENGTH] for r in rows)


async def agency_for_key_from(
    pool: asyncpg.Pool, key: str, address: str, now: datetime, throttle: AddressThrottle
) -> str | None:
    """The agency of an active ``key`` presented from ``address``, or None, which counts as
    a failure of the address; TooManyFailures, before the key is looked up, while the
    address is blocked (shared/throttle.py)."""
    async with pool.acquire() as conn:
        await throttle.refuse_if_blocked(conn, address, now)
        agency_id = await repo.agency_for_key(conn, hash_api_key(key))
        if agency_id is None:
            await throttle.record_failure(conn, address, now)
        return agency_id
