"""Matching's data access: the directory and the referral state per need."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from services.matching.directory import Agency, AgencyService
from shared.events import ConsentRevoked, NeedCategory, NeedSubmitted


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
        "consent, consent_id, county, age_years, recovery_stage, constraints, status, sequence, "
        "updated_at) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 'submitted', 1, $13) "
        "ON CONFLICT DO NOTHING RETURNING *",
        need.need_id,
        need.person_ref,
        need.category.value,
        need.urgency.value,
        need.postal_code,
        list(need.languages),
        need.consent.model_dump(mode="json"),
        need.consent.consent_id,
        need.county,
        need.age_years,
        need.recovery_stage.value if need.recovery_stage else None,
        need.constraints.model_dump(mode="json"),
        at,
    )
    return dict(row) if row else None


async def consent_revoked_at(conn: asyncpg.Connection, need: NeedSubmitted) -> datetime | None:
    """When the need's consent was revoked, if it was. Holds a share lock on the consent row
    until commit, so a revocation being processed elsewhere either committed before (and is
    seen here) or waits for this need's referral to commit (and then cancels it)."""
    await conn.execute(
        "INSERT INTO consents (consent_id, person_ref) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        need.consent.consent_id,
        need.person_ref,
    )
    revoked: datetime | None = await conn.fetchval(
        "SELECT revoked_at FROM consents WHERE consent_id = $1 FOR SHARE", need.consent.consent_id
    )
    return revoked


async def revoke_consent(conn: asyncpg.Connection, revoked: ConsentRevoked) -> None:
    """Record the revocation (the first one wins) and hold the consent row's lock until
    commit: needs arriving under it meanwhile wait, then see it revoked."""
    await conn.execute(
        "INSERT INTO consents (consent_id, person_ref, revoked_at) VALUES ($1, $2, $3) "
        "ON CONFLICT (consent_id) DO UPDATE "
        "SET revoked_at = coalesce(consents.revoked_at, EXCLUDED.revoked_at)",
        revoked.consent_id,
        revoked.person_ref,
        revoked.revoked_at,
    )


async def referrals_for_update(
    conn: asyncpg.Connection, consent_id: UUID, statuses: list[str]
) -> list[dict[str, Any]]:
    """The consent's referrals in these statuses, locked; in need order, so two
    transactions locking several of them cannot deadlock."""
    rows = await conn.fetch(
        "SELECT * FROM referrals WHERE consent_id = $1 AND status = ANY($2::text[]) "
        "ORDER BY need_id FOR UPDATE",
        consent_id,
        statuses,
    )
    return [dict(r) for r in rows]


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
