"""Notifications' data access: referrers, offers, API keys, the schedule, the delivery log."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg

from shared.events import ConsentRevoked, NeedSubmitted

# Stages in which an agency holds a referral: its offer is open, or it took the person on.
HELD_STAGES = ("offered", "accepted", "in_progress", "on_hold")


async def remember_referrer(conn: asyncpg.Connection, need: NeedSubmitted) -> None:
    contact = need.contact
    await conn.execute(
        "INSERT INTO need_referrers (need_id, worker_ref, notify_email, category, urgency, "
        "person_ref, consent_id, languages, contact_channel, window_from, window_until) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT DO NOTHING",
        need.need_id,
        need.referrer.worker_ref,
        need.referrer.notify_email,
        need.category.value,
        need.urgency.value,
        need.person_ref,
        need.consent.consent_id,
        list(need.languages),
        contact.channel.value if contact else "none",
        contact.window_from if contact else None,
        contact.window_until if contact else None,
    )


async def record_acceptance(
    conn: asyncpg.Connection, need_id: UUID, offer_id: UUID, agency_id: str, agency_name: str
) -> None:
    await conn.execute(
        "UPDATE need_referrers SET accepted_offer_id = $2, agency_id = $3, agency_name = $4 "
        "WHERE need_id = $1",
        need_id,
        offer_id,
        agency_id,
        agency_name,
    )


async def stop_reminders(conn: asyncpg.Connection, need_id: UUID, kind: str, at: datetime) -> int:
    """The person asked for no more check-ins: record it and cancel those still pending."""
    await conn.execute(
        "UPDATE need_referrers SET reminders_stopped_at = $2 "
        "WHERE need_id = $1 AND reminders_stopped_at IS NULL",
        need_id,
        at,
    )
    result = await conn.execute(
        "UPDATE scheduled_jobs SET status = 'cancelled', last_error = 'person stopped reminders' "
        "WHERE need_id = $1 AND kind = $2 AND status = 'pending' "
        "AND payload->>'about' = 'check-in'",
        need_id,
        kind,
    )
    return int(result.split()[-1])


async def use_link(
    conn: asyncpg.Connection, link_id: UUID, need_id: UUID, purpose: str, answer: str, at: datetime
) -> asyncpg.Record:
    """The link's first use wins; returns the recorded use (this one, or the earlier one)."""
    row = await conn.fetchrow(
        "INSERT INTO link_uses (link_id, need_id, purpose, answer, used_at) "
        "VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING *, true AS first",
        link_id,
        need_id,
        purpose,
        answer,
        at,
    )
    if row is None:
        row = await conn.fetchrow(
            "SELECT *, false AS first FROM link_uses WHERE link_id = $1", link_id
        )
    assert row is not None
    return row


async def link_use(conn: asyncpg.Connection, link_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM link_uses WHERE link_id = $1", link_id)


async def record_revocation(conn: asyncpg.Connection, revoked: ConsentRevoked) -> None:
    await conn.execute(
        "INSERT INTO revoked_consents (consent_id, person_ref, revoked_at) VALUES ($1, $2, $3) "
        "ON CONFLICT DO NOTHING",
        revoked.consent_id,
        revoked.person_ref,
        revoked.revoked_at,
    )


async def needs_under_consent(conn: asyncpg.Connection, consent_id: UUID) -> list[UUID]:
    rows = await conn.fetch("SELECT need_id FROM need_referrers WHERE consent_id = $1", consent_id)
    return [r["need_id"] for r in rows]


async def referrer(conn: asyncpg.Connection, need_id: UUID) -> asyncpg.Record | None:
    """The need as notifications knows it, with whether its consent has been revoked."""
    return await conn.fetchrow(
        "SELECT n.*, r.consent_id IS NOT NULL AS consent_revoked FROM need_referrers n "
        "LEFT JOIN revoked_consents r USING (consent_id) WHERE n.need_id = $1",
        need_id,
    )


async def track_offer(
    conn: asyncpg.Connection,
    offer_id: UUID,
    need_id: UUID,
    agency_id: str,
    agency_name: str | None,
    respond_by: datetime,
    at: datetime,
    *,
    offered_at: datetime,
    details: dict[str, Any] | None = None,
) -> bool:
    """Record the open offer and, the first time the need is offered, when that was: True
    only then. One statement, so one round trip."""
    first: bool = await conn.fetchval(
        "WITH offer AS (INSERT INTO offers (offer_id, need_id, agency_id, agency_name, "
        "respond_by, status, updated_at, details, offered_at, stage, stage_at) "
        "VALUES ($1, $2, $3, $4, $5, 'open', $6, $7, $8, 'offered', $6) "
        "ON CONFLICT (offer_id) DO UPDATE SET details = coalesce(offers.details, $7)), "
        "first AS (UPDATE need_referrers SET first_offered_at = $8 "
        "WHERE need_id = $2 AND first_offered_at IS NULL RETURNING 1) "
        "SELECT EXISTS (SELECT FROM first)",
        offer_id,
        need_id,
        agency_id,
        agency_name,
        respond_by,
        at,
        details,
        offered_at,
    )
    return first


async def set_stage(
    conn: asyncpg.Connection, offer_id: UUID, stage: str, reason: str | None, at: datetime
) -> None:
    """Where the referral now stands for the agency this offer went to."""
    await conn.execute(
        "UPDATE offers SET stage = $2, stage_reason = $3, stage_at = $4 WHERE offer_id = $1",
        offer_id,
        stage,
        reason,
        at,
    )


async def set_offer_status(
    conn: asyncpg.Connection,
    offer_id: UUID,
    status: str,
    at: datetime,
    *,
    only_if: str | None = None,
) -> bool:
    result = await conn.execute(
        "UPDATE offers SET status = $2, updated_at = $3 "
        "WHERE offer_id = $1 AND ($4::text IS NULL OR status = $4)",
        offer_id,
        status,
        at,
        only_if,
    )
    return bool(result != "UPDATE 0")


async def close_offers(
    conn: asyncpg.Connection, need_ids: list[UUID], at: datetime, reason: str | None
) -> None:
    """Close the needs' offers, so the HTTP API neither lists nor takes answers to them; an
    agency still holding one (offered or taken on) sees it cancelled."""
    await conn.execute(
        "UPDATE offers SET status = 'closed', updated_at = $2 "
        "WHERE need_id = ANY($1::uuid[]) AND status <> 'closed'",
        need_ids,
        at,
    )
    await conn.execute(
        "UPDATE offers SET stage = 'cancelled', stage_reason = $3, stage_at = $2 "
        "WHERE need_id = ANY($1::uuid[]) AND stage = ANY($4::text[])",
        need_ids,
        at,
        reason,
        list(HELD_STAGES),
    )


async def close_others_as_placed(
    conn: asyncpg.Connection, need_id: UUID, accepted_offer_id: UUID, at: datetime
) -> list[UUID]:
    """The need is placed: every other offer of it is closed, and an answer to one of them
    is told so. Returns the offers closed."""
    rows = await conn.fetch(
        "UPDATE offers SET status = 'placed', updated_at = $3, stage = 'placed_elsewhere', "
        "stage_at = $3 WHERE need_id = $1 AND offer_id <> $2 AND status IN ('open', 'answered') "
        "RETURNING offer_id",
        need_id,
        accepted_offer_id,
        at,
    )
    return [r["offer_id"] for r in rows]


async def agency_offer(
    conn: asyncpg.Connection, agency_id: str, offer_id: UUID
) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT * FROM offers WHERE offer_id = $1 AND agency_id = $2", offer_id, agency_id
    )


async def offer_for_update(conn: asyncpg.Connection, offer_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM offers WHERE offer_id = $1 FOR UPDATE", offer_id)


async def open_offers(conn: asyncpg.Connection, agency_id: str) -> list[asyncpg.Record]:
    return list(
        await conn.fetch(
            "SELECT * FROM offers WHERE agency_id = $1 AND status = 'open' ORDER BY respond_by",
            agency_id,
        )
    )


async def add_api_key(conn: asyncpg.Connection, key_hash: str, agency_id: str) -> None:
    await conn.execute(
        "INSERT INTO agency_api_keys (key_hash, agency_id) VALUES ($1, $2)", key_hash, agency_id
    )


async def agency_for_key(conn: asyncpg.Connection, key_hash: str) -> str | None:
    value = await conn.fetchval(
        "SELECT agency_id FROM agency_api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
        key_hash,
    )
    return str(value) if value else None


@dataclass(frozen=True)
class Job:
    """A job to schedule. One whose ``webhook_of`` names an agency is a call to that
    agency's webhook, and is scheduled only while the agency has an enabled endpoint."""

    job_id: UUID
    kind: str
    need_id: UUID
    due_at: datetime
    offer_id: UUID | None = None
    payload: dict[str, Any] = field(default_factory=dict)
    webhook_of: str | None = None


# Every job of an event in one statement (one round trip, where one per job and one per
# webhook lookup cost more than the work); a job already scheduled stays as it is.
_SCHEDULE_JOBS = (
    "INSERT INTO scheduled_jobs (job_id, kind, need_id, offer_id, due_at, payload) "
    "SELECT j.job_id, j.kind, j.need_id, j.offer_id, j.due_at, j.payload::jsonb "
    "FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::uuid[], $5::timestamptz[], "
    "$6::text[], $7::text[]) WITH ORDINALITY "
    "AS j (job_id, kind, need_id, offer_id, due_at, payload, webhook_of, position) "
    "WHERE j.webhook_of IS NULL OR EXISTS (SELECT FROM agency_webhooks w "
    "WHERE w.agency_id = j.webhook_of AND w.enabled) "
    "ORDER BY j.position ON CONFLICT DO NOTHING"
)


async def schedule_jobs(conn: asyncpg.Connection, jobs: Sequence[Job]) -> None:
    if not jobs:
        return
    await conn.execute(
        _SCHEDULE_JOBS,
        [j.job_id for j in jobs],
        [j.kind for j in jobs],
        [j.need_id for j in jobs],
        [j.offer_id for j in jobs],
        [j.due_at for j in jobs],
        [json.dumps(j.payload) for j in jobs],  # as the pool's jsonb codec would
        [j.webhook_of for j in jobs],
    )


async def cancel_jobs(conn: asyncpg.Connection, *, offer_id: UUID, kind: str) -> None:
    await conn.execute(
        "UPDATE scheduled_jobs SET status = 'cancelled' "
        "WHERE offer_id = $1 AND kind = $2 AND status = 'pending'",
        offer_id,
        kind,
    )


async def cancel_need_jobs(conn: asyncpg.Connection, need_ids: list[UUID]) -> None:
    """Cancel every pending job of the needs, including one a sender has claimed: finishing
    it then changes nothing (see finish_job)."""
    await conn.execute(
        "UPDATE scheduled_jobs SET status = 'cancelled' "
        "WHERE need_id = ANY($1::uuid[]) AND status = 'pending'",
        need_ids,
    )


async def due_jobs_by_kind(conn: asyncpg.Connection, now: datetime) -> dict[str, int]:
    rows = await conn.fetch(
        "SELECT kind, count(*) AS n FROM scheduled_jobs "
        "WHERE status = 'pending' AND due_at <= $1 GROUP BY kind",
        now,
    )
    return {row["kind"]: int(row["n"]) for row in rows}


async def claim_due_jobs(
    conn: asyncpg.Connection, now: datetime, lease: timedelta, limit: int
) -> list[asyncpg.Record]:
    """Lease due jobs to this sender. SKIP LOCKED lets several senders share the table without
    taking the same row; an expired lease (a crashed sender) makes a row claimable again."""
    return list(
        await conn.fetch(
            "UPDATE scheduled_jobs SET lease_until = $2, attempts = attempts + 1 "
            "WHERE job_id IN ("
            "  SELECT job_id FROM scheduled_jobs WHERE status = 'pending' AND due_at <= $1 "
            "  AND (lease_until IS NULL OR lease_until < $1) "
            "  ORDER BY due_at LIMIT $3 FOR UPDATE SKIP LOCKED) "
            "RETURNING *",
            now,
            now + lease,
            limit,
        )
    )


async def finish_job(conn: asyncpg.Connection, job: asyncpg.Record, at: datetime) -> None:
    """Mark done, fenced by the claim: a sender whose lease was taken over changes nothing,
    and a job cancelled while it ran stays cancelled."""
    await conn.execute(
        "UPDATE scheduled_jobs SET status = 'done', done_at = $3, lease_until = NULL "
        "WHERE job_id = $1 AND attempts = $2 AND status = 'pending'",
        job["job_id"],
        job["attempts"],
        at,
    )


async def fail_job(
    conn: asyncpg.Connection, job: asyncpg.Record, error: str, retry_at: datetime, max_attempts: int
) -> None:
    await conn.execute(
        "UPDATE scheduled_jobs SET last_error = $3, lease_until = $4, "
        "status = CASE WHEN attempts >= $5 THEN 'failed' ELSE status END "
        "WHERE job_id = $1 AND attempts = $2 AND status = 'pending'",
        job["job_id"],
        job["attempts"],
        error,
        retry_at,
        max_attempts,
    )


async def postpone_job(conn: asyncpg.Connection, job: asyncpg.Record, due_at: datetime) -> None:
    """Not now (quiet hours): due later, and the claim does not count as an attempt."""
    await conn.execute(
        "UPDATE scheduled_jobs SET due_at = $3, lease_until = NULL, attempts = attempts - 1 "
        "WHERE job_id = $1 AND attempts = $2 AND status = 'pending'",
        job["job_id"],
        job["attempts"],
        due_at,
    )


async def give_up_job(
    conn: asyncpg.Connection, job: asyncpg.Record, status: str, reason: str, at: datetime
) -> None:
    """End a job that must not be retried: 'failed' (a retry cannot help) or 'cancelled'."""
    await conn.execute(
        "UPDATE scheduled_jobs SET status = $3, last_error = $4, done_at = $5, lease_until = NULL "
        "WHERE job_id = $1 AND attempts = $2 AND status = 'pending'",
        job["job_id"],
        job["attempts"],
        status,
        reason,
        at,
    )


async def begin_delivery(
    conn: asyncpg.Connection,
    job: asyncpg.Record,
    channel: str,
    recipient: str,
    subject: str,
    at: datetime,
) -> str | None:
    """Log the send as in flight before it starts, committed. Returns the earlier status:
    'sent' means done already; 'sending' means a sender died mid-send, so this send repeats
    it under the same key (and is counted as a repeat)."""
    key = str(job["job_id"])
    before = await conn.fetchval(
        "SELECT status FROM deliveries WHERE idempotency_key = $1 FOR UPDATE", key
    )
    if before == "sent":
        return before
    await conn.execute(
        "INSERT INTO deliveries (idempotency_key, job_id, kind, channel, recipient, subject, "
        "status, attempts, updated_at) VALUES ($1, $2, $3, $4, $5, $6, 'sending', 1, $7) "
        "ON CONFLICT (idempotency_key) DO UPDATE SET status = 'sending', "
        "attempts = deliveries.attempts + 1, error = NULL, updated_at = $7, "
        "repeats = deliveries.repeats + (deliveries.status = 'sending')::int",
        key,
        job["job_id"],
        job["kind"],
        channel,
        recipient,
        subject,
        at,
    )
    return str(before) if before else None


async def delivery_sent(
    conn: asyncpg.Connection, job: asyncpg.Record, provider_id: str, at: datetime
) -> None:
    await conn.execute(
        "UPDATE deliveries SET status = 'sent', provider_id = $2, sent_at = $3, updated_at = $3 "
        "WHERE idempotency_key = $1",
        str(job["job_id"]),
        provider_id,
        at,
    )


async def delivery_failed(
    conn: asyncpg.Connection, job: asyncpg.Record, error: str, at: datetime
) -> None:
    await conn.execute(
        "UPDATE deliveries SET status = 'failed', error = $2, updated_at = $3 "
        "WHERE idempotency_key = $1",
        str(job["job_id"]),
        error,
        at,
    )


async def delivery(conn: asyncpg.Connection, key: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM deliveries WHERE idempotency_key = $1", key)


async def cancel_job(conn: asyncpg.Connection, job_id: UUID) -> None:
    await conn.execute(
        "UPDATE scheduled_jobs SET status = 'cancelled' WHERE job_id = $1 AND status = 'pending'",
        job_id,
    )


# --- the agency's view of its referrals (API and inbox) ------------------------------------


async def agency_referrals(
    conn: asyncpg.Connection, agency_id: str, limit: int = 100
) -> list[asyncpg.Record]:
    """The agency's offers, newest first: open ones, those it took on, and what became of
    the rest."""
    return list(
        await conn.fetch(
            "SELECT * FROM offers WHERE agency_id = $1 "
            "ORDER BY coalesce(offered_at, updated_at) DESC LIMIT $2",
            agency_id,
            limit,
        )
    )


async def log_contact_view(conn: asyncpg.Connection, view: dict[str, Any]) -> None:
    await conn.execute(
        "INSERT INTO contact_views (view_id, agency_id, viewer, offer_id, need_id, shown, "
        "reason, viewed_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        *(
            view[k]
            for k in (
                "view_id",
                "agency_id",
                "viewer",
                "offer_id",
                "need_id",
                "shown",
                "reason",
                "viewed_at",
            )
        ),
    )
