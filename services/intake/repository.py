"""Intake's data access: every SQL statement the intake service runs lives here."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any
from uuid import UUID

import asyncpg

from shared.events import NeedCategory, ReferralStatusChanged


async def worker_by_email(conn: asyncpg.Connection, email: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT * FROM workers WHERE lower(email) = lower($1) AND active", email
    )


async def worker_by_id(conn: asyncpg.Connection, worker_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM workers WHERE worker_id = $1 AND active", worker_id)


async def upsert_worker(
    conn: asyncpg.Connection, worker_id: UUID, email: str, name: str, password_hash: str
) -> None:
    await conn.execute(
        "INSERT INTO workers (worker_id, email, display_name, password_hash) "
        "VALUES ($1, $2, $3, $4) "
        "ON CONFLICT (email) DO UPDATE SET password_hash = EXCLUDED.password_hash, active = true",
        worker_id,
        email,
        name,
        password_hash,
    )


async def insert_person(
    conn: asyncpg.Connection,
    person_id: UUID,
    person_ref: UUID,
    pii: bytes,
    postal_code: str,
    language: str,
) -> None:
    await conn.execute(
        "INSERT INTO persons (person_id, person_ref, pii, postal_code, preferred_language) "
        "VALUES ($1, $2, $3, $4, $5)",
        person_id,
        person_ref,
        pii,
        postal_code,
        language,
    )


async def insert_consent(
    conn: asyncpg.Connection,
    consent_id: UUID,
    person_id: UUID,
    categories: frozenset[NeedCategory],
    purpose: str,
    expires_on: date,
    given_at: datetime,
    witnessed_by: UUID,
) -> None:
    await conn.execute(
        "INSERT INTO consents (consent_id, person_id, categories, recipients, purpose, "
        "expires_on, given_at, witnessed_by) VALUES ($1, $2, $3, 'network', $4, $5, $6, $7)",
        consent_id,
        person_id,
        sorted(categories),
        purpose,
        expires_on,
        given_at,
        witnessed_by,
    )


async def insert_intake(
    conn: asyncpg.Connection,
    intake_id: UUID,
    person_id: UUID,
    worker_id: UUID,
    consent_id: UUID,
    created_at: datetime,
) -> None:
    await conn.execute(
        "INSERT INTO intakes (intake_id, person_id, worker_id, consent_id, created_at) "
        "VALUES ($1, $2, $3, $4, $5)",
        intake_id,
        person_id,
        worker_id,
        consent_id,
        created_at,
    )


async def insert_need(
    conn: asyncpg.Connection,
    need_id: UUID,
    intake_id: UUID,
    position: int,
    category: str,
    urgency: str,
    at: datetime,
) -> None:
    await conn.execute(
        "INSERT INTO needs (need_id, intake_id, position, category, urgency, status_at) "
        "VALUES ($1, $2, $3, $4, $5, $6)",
        need_id,
        intake_id,
        position,
        category,
        urgency,
        at,
    )


async def apply_status(conn: asyncpg.Connection, change: ReferralStatusChanged) -> bool:
    """Move a need to the reported status unless a later change is already recorded."""
    result = await conn.execute(
        "UPDATE needs SET status = $2, status_sequence = $3, status_at = $4, agency_id = $5, "
        "agency_name = $6, status_reason = $7, respond_by = $8 "
        "WHERE need_id = $1 AND status_sequence < $3",
        change.need_id,
        change.status.value,
        change.sequence,
        change.occurred_at,
        change.agency_id,
        change.agency_name,
        change.reason,
        change.respond_by,
    )
    return bool(result != "UPDATE 0")


async def intake_with_needs(
    conn: asyncpg.Connection, intake_id: UUID, worker_id: UUID
) -> tuple[asyncpg.Record, list[asyncpg.Record]] | None:
    """The intake and its needs, only for the worker who took it (minimum necessary)."""
    intake = await conn.fetchrow(
        "SELECT i.*, p.pii, p.postal_code, c.expires_on AS consent_expires_on "
        "FROM intakes i JOIN persons p USING (person_id) JOIN consents c USING (consent_id) "
        "WHERE i.intake_id = $1 AND i.worker_id = $2",
        intake_id,
        worker_id,
    )
    if intake is None:
        return None
    needs = await conn.fetch(
        "SELECT * FROM needs WHERE intake_id = $1 ORDER BY position", intake_id
    )
    return intake, list(needs)


async def recent_intakes(conn: asyncpg.Connection, worker_id: UUID, limit: int = 20) -> list[Any]:
    return list(
        await conn.fetch(
            "SELECT i.intake_id, i.created_at, p.pii, count(n.need_id) AS need_count, "
            "count(n.need_id) FILTER (WHERE n.status = 'accepted') AS accepted "
            "FROM intakes i JOIN persons p USING (person_id) JOIN needs n USING (intake_id) "
            "WHERE i.worker_id = $1 GROUP BY i.intake_id, p.pii "
            "ORDER BY i.created_at DESC LIMIT $2",
            worker_id,
            limit,
        )
    )
