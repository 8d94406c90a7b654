"""Notifications' use cases: follow referrals, answer offers for agencies over HTTP, and run
due jobs (offer deadlines, emails to the intake worker, aftercare check-ins)."""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

import asyncpg

from services.notifications import repository as repo
from services.notifications.mailer import Email, Mailer, render
from services.notifications.settings import NotificationsSettings
from shared import outbox
from shared.clock import Clock
from shared.cloudevents import Envelope
from shared.events import (
    CATEGORY_LABELS,
    CapacityUpdated,
    ConsentRevoked,
    DeclineReason,
    NeedCategory,
    NeedSubmitted,
    OfferAccepted,
    OfferDeclined,
    OfferExpired,
    ReferralStatus,
    ReferralStatusChanged,
)
from shared.inbox import first_delivery
from shared.topics import CAPACITY_UPDATES, OFFER_RESPONSES

log = logging.getLogger(__name__)

SOURCE = "/refnet/notifications"
CONSUMER = "notifications"
RETRY_LATER = timedelta(seconds=30)


class JobKind(StrEnum):
    OFFER_DEADLINE = "offer_deadline"
    ACCEPTED_EMAIL = "accepted_email"
    UNMATCHED_EMAIL = "unmatched_email"
    AFTERCARE_REMINDER = "aftercare_reminder"


@dataclass(frozen=True)
class Deps:
    pool: asyncpg.Pool
    clock: Clock
    settings: NotificationsSettings
    mailer: Mailer


def job_id(*parts: object) -> UUID:
    return uuid5(NAMESPACE_URL, "urn:refnet:job:" + ":".join(str(p) for p in parts))


# --- consuming needs and referral events -------------------------------------------------


async def handle_event(deps: Deps, envelope: Envelope) -> None:
    async with deps.pool.acquire() as conn, conn.transaction():
        if not await first_delivery(conn, CONSUMER, envelope):
            return
        event = envelope.event
        if isinstance(event, NeedSubmitted):
            await repo.remember_referrer(conn, event)
        elif isinstance(event, ReferralStatusChanged):
            await _follow_referral(conn, deps, event)
        elif isinstance(event, ConsentRevoked):
            await _stop_for_revoked_consent(conn, deps, event)


async def _stop_for_revoked_consent(
    conn: asyncpg.Connection, deps: Deps, revoked: ConsentRevoked
) -> None:
    """Nothing more goes out for needs under a revoked consent. Matching also reports each
    open one cancelled; this stops them sooner, and the record stops later events (read in
    any order) from starting anything new."""
    await repo.record_revocation(conn, revoked)
    need_ids = await repo.needs_under_consent(conn, revoked.consent_id)
    await _stop_following(conn, deps, need_ids)
    log.info("consent %s revoked: jobs of %d need(s) cancelled", revoked.consent_id, len(need_ids))


async def _stop_following(conn: asyncpg.Connection, deps: Deps, need_ids: list[UUID]) -> None:
    await repo.close_offers(conn, need_ids, deps.clock.now())
    await repo.cancel_need_jobs(conn, need_ids)


async def _follow_referral(
    conn: asyncpg.Connection, deps: Deps, change: ReferralStatusChanged
) -> None:
    now = deps.clock.now()
    need_id, offer_id = change.need_id, change.offer_id
    # A stale update read after the revocation must not open an offer or schedule a job.
    if change.status == ReferralStatus.CANCELLED or await repo.consent_revoked(conn, need_id):
        await _stop_following(conn, deps, [need_id])
        return
    if change.status == ReferralStatus.OFFERED:
        assert offer_id and change.agency_id and change.respond_by
        await repo.track_offer(
            conn, offer_id, need_id, change.agency_id, change.agency_name, change.respond_by, now
        )
        await repo.schedule(
            conn,
            job_id(offer_id, JobKind.OFFER_DEADLINE),
            JobKind.OFFER_DEADLINE,
            need_id,
            change.respond_by,
            offer_id=offer_id,
        )
        return
    if offer_id is not None:
        await repo.set_offer_status(conn, offer_id, "closed", now)
        await repo.cancel_jobs(conn, offer_id=offer_id, kind=JobKind.OFFER_DEADLINE)
    payload: dict[str, Any] = {"agency_name": change.agency_name, "reason": change.reason}
    if change.status == ReferralStatus.ACCEPTED and offer_id is not None:
        # Others asked at the same time (an urgent fan-out) can no longer take the person.
        for other in await repo.close_others_as_placed(conn, need_id, offer_id, now):
            await repo.cancel_jobs(conn, offer_id=other, kind=JobKind.OFFER_DEADLINE)
    if change.status == ReferralStatus.ACCEPTED:
        await repo.schedule(
            conn, job_id(need_id, JobKind.ACCEPTED_EMAIL), JobKind.ACCEPTED_EMAIL, need_id, now,
            payload={**payload, "aftercare_days": deps.settings.aftercare_days},
        )  # fmt: skip
        for day in deps.settings.aftercare_days:
            await repo.schedule(
                conn,
                job_id(need_id, JobKind.AFTERCARE_REMINDER, day),
                JobKind.AFTERCARE_REMINDER,
                need_id,
                change.occurred_at + timedelta(days=day),
                payload={**payload, "day": day},
            )
    elif change.status == ReferralStatus.UNMATCHED:
        payload["excluded"] = [e.model_dump() for e in change.excluded]
        await repo.schedule(
            conn, job_id(need_id, JobKind.UNMATCHED_EMAIL), JobKind.UNMATCHED_EMAIL, need_id, now,
            payload=payload,
        )  # fmt: skip


# --- agencies answering over HTTP ----------------------------------------------------------


class Answer(StrEnum):
    RECORDED = "recorded"
    NOT_FOUND = "not_found"
    NOT_OPEN = "not_open"
    ALREADY_PLACED = "already_placed"


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


async def issue_api_key(pool: asyncpg.Pool, agency_id: str) -> str:
    key = "rn_" + secrets.token_urlsafe(32)
    async with pool.acquire() as conn:
        await repo.add_api_key(conn, hash_api_key(key), agency_id)
    return key


async def agency_for_key(pool: asyncpg.Pool, key: str) -> str | None:
    async with pool.acquire() as conn:
        return await repo.agency_for_key(conn, hash_api_key(key))


async def answer_offer(
    deps: Deps, agency_id: str, offer_id: UUID, reason: DeclineReason | None
) -> Answer:
    """Accept (reason None) or decline an open offer on the agency's behalf."""
    now = deps.clock.now()
    async with deps.pool.acquire() as conn, conn.transaction():
        offer = await repo.offer_for_update(conn, offer_id)
        if offer is None or offer["agency_id"] != agency_id:
            return Answer.NOT_FOUND  # another agency's offer is indistinguishable from none
        if offer["status"] == "placed":
            return Answer.ALREADY_PLACED
        if offer["status"] != "open" or now > offer["respond_by"]:
            return Answer.NOT_OPEN
        await repo.set_offer_status(conn, offer_id, "answered", now)
        ids = {"offer_id": offer_id, "need_id": offer["need_id"], "agency_id": agency_id}
        response = (
            OfferAccepted(**ids, accepted_at=now)
            if reason is None
            else OfferDeclined(**ids, reason=reason, declined_at=now)
        )
        await outbox.enqueue(conn, OFFER_RESPONSES, response, source=SOURCE, clock=deps.clock)
    return Answer.RECORDED


async def report_capacity(deps: Deps, update: CapacityUpdated) -> None:
    """Pass an agency's capacity report on to the directory (matching), which checks the
    service is the agency's and dead-letters it with the reason if not."""
    async with deps.pool.acquire() as conn, conn.transaction():
        await outbox.enqueue(conn, CAPACITY_UPDATES, update, source=SOURCE, clock=deps.clock)


# --- running due jobs ----------------------------------------------------------------------


async def run_due_jobs(deps: Deps) -> int:
    s = deps.settings
    now = deps.clock.now()
    async with deps.pool.acquire() as conn:
        jobs = await repo.claim_due_jobs(
            conn, now, timedelta(seconds=s.scheduler_lease_s), s.scheduler_batch_size
        )
    for job in jobs:
        try:
            await _run_job(deps, job)
        except Exception as exc:  # one failing job must not stop the others
            log.warning(
                "job %s (%s) attempt %d failed: %s",
                job["job_id"],
                job["kind"],
                job["attempts"],
                exc,
            )
            retry_at = deps.clock.now() + RETRY_LATER * job["attempts"]
            async with deps.pool.acquire() as conn:
                await repo.fail_job(conn, job, str(exc), retry_at, s.scheduler_max_attempts)
    return len(jobs)


async def _run_job(deps: Deps, job: asyncpg.Record) -> None:
    async with deps.pool.acquire() as conn:
        # Scheduled by a handler that had not yet seen the revocation (another replica, or
        # the need's events read before the consent's).
        if await repo.consent_revoked(conn, job["need_id"]):
            await repo.cancel_need_jobs(conn, [job["need_id"]])
            log.info("job %s (%s) cancelled: consent revoked", job["job_id"], job["kind"])
            return
    if job["kind"] == JobKind.OFFER_DEADLINE:
        await _expire_offer(deps, job)
    else:
        await _send_email_job(deps, job)


async def _expire_offer(deps: Deps, job: asyncpg.Record) -> None:
    now = deps.clock.now()
    async with deps.pool.acquire() as conn, conn.transaction():
        offer = await repo.offer_for_update(conn, job["offer_id"])
        if offer is not None and offer["status"] == "open":
            await repo.set_offer_status(conn, offer["offer_id"], "expiring", now)
            expired = OfferExpired(
                offer_id=offer["offer_id"],
                need_id=offer["need_id"],
                agency_id=offer["agency_id"],
                expired_at=now,
            )
            await outbox.enqueue(
                conn, OFFER_RESPONSES, expired, source=SOURCE, clock=deps.clock,
                event_id=job_id(job["job_id"], "event"),
            )  # fmt: skip
        await repo.finish_job(conn, job, now)


async def _send_email_job(deps: Deps, job: asyncpg.Record) -> None:
    key = str(job["job_id"])
    async with deps.pool.acquire() as conn:
        referrer = await repo.referrer(conn, job["need_id"])
        already_sent = await repo.delivered(conn, key)
    if referrer is None:
        raise LookupError(f"need {job['need_id']} not yet known to notifications")
    if not already_sent:
        email = _compose(job, referrer)
        await deps.mailer.send(email)
    async with deps.pool.acquire() as conn, conn.transaction():
        if not already_sent:
            await repo.log_delivery(
                conn, key, "email", referrer["notify_email"], email.subject, job["attempts"],
                deps.clock.now(),
            )  # fmt: skip
        await repo.finish_job(conn, job, deps.clock.now())
    log.info("job %s (%s) delivered", key, job["kind"])


def _compose(job: asyncpg.Record, referrer: asyncpg.Record) -> Email:
    payload = job["payload"]
    category = CATEGORY_LABELS[NeedCategory(referrer["category"])]
    context = {
        **payload,
        "need_id": job["need_id"],
        "category_label": category,
        "urgency": referrer["urgency"],
        "aftercare_days": ", ".join(str(d) for d in payload.get("aftercare_days", [])),
    }
    kind = JobKind(job["kind"])
    subject = {
        JobKind.ACCEPTED_EMAIL: f"Referral accepted: {category} by {payload.get('agency_name')}",
        JobKind.UNMATCHED_EMAIL: f"Referral needs your attention: no agency for {category}",
        JobKind.AFTERCARE_REMINDER: f"Aftercare check-in (day {payload.get('day')}): {category}",
    }[kind]
    template = {
        JobKind.ACCEPTED_EMAIL: "accepted",
        JobKind.UNMATCHED_EMAIL: "unmatched",
        JobKind.AFTERCARE_REMINDER: "aftercare",
    }[kind]
    return Email(
        to=referrer["notify_email"],
        subject=subject,
        body=render(template, **context),
        message_id=f"<{job['job_id']}@refnet.local>",
    )
