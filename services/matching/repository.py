"""Matching's data access: the directory and the referral state per need."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from services.matching.directory import Agency, AgencyService
from shared.events import NeedCategory, NeedSubmitted


async def replace_directory(
    conn: asyncpg.Connection, agencies: list[Agency], services: list[AgencyService]
) -> None:
    # Replicas starting together would otherwise interleave their delete and inserts.
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext('matching.directory'))")
    await conn.execute("DELETE FROM agency_services")
    await conn.executemany(
        "INSERT INTO agencies (agency_id, name, email) VALUES ($1, $2, $3) "
        "ON CONFLICT (agency_id) DO UPDATE SET name = EXCLUDED.name, email = EXCLUDED.email",
        [(a.agency_id, a.name, a.email) for a in agencies],
    )
    await conn.executemany(
        "INSERT INTO agency_services (service_id, agency_id, name, category, postal_codes, "
        "languages) VALUES ($1, $2, $3, $4, $5, $6)",
        [
            (
                s.service_id,
                s.agency_id,
                s.name,
                s.category.value,
                sorted(s.postal_codes),
                sorted(s.languages),
            )
            for s in services
        ],
    )


async def services_in(conn: asyncpg.Connection, category: NeedCategory) -> list[AgencyService]:
    rows = await conn.fetch("SELECT * FROM agency_services WHERE category = $1", category.value)
    return [
        AgencyService(
            service_id=r["service_id"],
            agency_id=r["agency_id"],
            name=r["name"],
            category=NeedCategory(r["category"]),
            postal_codes=frozenset(r["postal_codes"]),
            languages=frozenset(r["languages"]),
        )
        for r in rows
    ]


async def agency_name(conn: asyncpg.Connection, agency_id: str) -> str | None:
    name = await conn.fetchval("SELECT name FROM agencies WHERE agency_id = $1", agency_id)
    return str(name) if name is not None else None


async def insert_referral(
    conn: asyncpg.Connection, need: NeedSubmitted, at: datetime
) -> dict[str, Any] | None:
    """The new referral row, or None when the need is already known."""
    row = await conn.fetchrow(
        "INSERT INTO referrals (need_id, person_ref, category, urgency, postal_code, languages, "
        "consent, status, sequence, updated_at) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, 'submitted', 1, $8) ON CONFLICT DO NOTHING "
        "RETURNING *",
        need.need_id,
        need.person_ref,
        need.category.value,
        need.urgency.value,
        need.postal_code,
        list(need.languages),
        need.consent.model_dump(mode="json"),
        at,
    )
    return dict(row) if row else None


async def referral_for_update(conn: asyncpg.Connection, need_id: UUID) -> dict[str, Any] | None:
    row = await conn.fetchrow("SELECT * FROM referrals WHERE need_id = $1 FOR UPDATE", need_id)
    return dict(row) if row else None


async def save_referral(conn: asyncpg.Connection, ref: dict[str, Any]) -> None:
    await conn.execute(
        "UPDATE referrals SET status = $2, sequence = $3, attempt = $4, agency_id = $5, "
        "offer_id = $6, respond_by = $7, tried = $8, updated_at = $9 WHERE need_id = $1",
        ref["need_id"],
        ref["status"],
        ref["sequence"],
        ref["attempt"],
        ref["agency_id"],
        ref["offer_id"],
        ref["respond_by"],
        ref["tried"],
        ref["updated_at"],
    )
