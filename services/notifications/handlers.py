"""Notifications' use cases: follow referrals and decide who is told what and when (each a
scheduled job, see scheduler.py), answer offers and report outcomes for agencies over HTTP,
and take the person's answers to aftercare check-ins."""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any
from uuid import UUID

import asyncpg

from services.notifications import repository as repo
from services.notifications.jobs import About, JobKind, job_id
from services.notifications.links import CHECK_IN, OUTCOME, Link
from services.notifications.scheduler import SOURCE, Deps
from shared import outbox
from shared.cloudevents import Envelope
from shared.events import (
    CANCELLED_CONSENT_REVOKED,
    CapacityUpdated,
    CheckInAnswer,
    CheckInAnswered,
    ConsentRevoked,
    DeclineReason,
    NeedSubmitted,
    OfferAccepted,
    OfferDeclined,
    Outcome,
    OutcomeReported,
    ReferralStatus,
    ReferralStatusChanged,
)
from shared.inbox import first_deliveries, first_delivery
from shared.kafka import Delivery
from shared.topics import AFTERCARE, CAPACITY_UPDATES, OFFER_RESPONSES

log = logging.getLogger(__name__)

CONSUMER = "notifications"
__all__ = ["CONSUMER", "Deps", "handle_event", "handle_events"]


# --- consuming needs and referral events -------------------------------------------------


async def handle_event(deps: Deps, envelope: Envelope) -> None:
    async with deps.pool.acquire() as conn, conn.transaction():
        if await first_delivery(conn, CONSUMER, envelope):
            await _apply(conn, deps, envelope)


async def handle_events(deps: Deps, deliveries: Sequence[Delivery]) -> None:
    """The events of a topic that one fetch brought, each partition's in order, in one
    transaction: one commit for the batch instead of one per event (shared.kafka.process_batch
    handles them one at a time again if it fails)."""
    async with deps.pool.acquire() as conn, conn.transaction():
        # The inbox for the whole batch in one statement rather than one per event.
        firsts = await first_deliveries(conn, CONSUMER, [d.envelope for d in deliveries])
        for delivery, first in zip(deliveries, firsts, strict=True):
            if first:
                with delivery.context():
                    await _apply(conn, deps, delivery.envelope)


async def _apply(conn: asyncpg.Connection, deps: Deps, envelope: Envelope) -> None:
    """An event delivered for the first time (the caller checked the inbox)."""
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


async def _stop_following(
    conn: asyncpg.Connection,
    deps: Deps,
    need_ids: list[UUID],
    reason: str | None = CANCELLED_CONSENT_REVOKED,
) -> None:
    await repo.close_offers(conn, need_ids, deps.clock.now(), reason)
    await repo.cancel_need_jobs(conn, need_ids)


async def _follow_referral(
    conn: asyncpg.Connection, deps: Deps, change: ReferralStatusChanged
) -> None:
    need = await repo.referrer(conn, change.need_id)
    # A stale update read after the revocation must not open an offer or schedule a job.
    if need is not None and need["consent_revoked"]:
        await _stop_following(conn, deps, [change.need_id])
        return
    step = _STEPS.get(change.status)
    if step is not None:
        await step(conn, deps, change, need)


async def _offered(
    conn: asyncpg.Connection, deps: Deps, change: ReferralStatusChanged, need: Any
) -> None:
    offer_id, agency_id, respond_by = change.offer_id, change.agency_id, change.respond_by
    assert offer_id and agency_id and respond_by
    now = deps.clock.now()
    first = await repo.track_offer(
        conn,
        offer_id,
        change.need_id,
        agency_id,
        change.agency_name,
        respond_by,
        now,
        offered_at=change.occurred_at,
        details=change.offer.model_dump(mode="json") if change.offer else None,
    )
    jobs = [_job(JobKind.OFFER_DEADLINE, change.need_id, respond_by, offer_id=offer_id)]
    if need is not None and first:
        hours = deps.settings.stuck_after_h[need["urgency"]]
        jobs.append(
            _tell_worker(
                change,
                About.STUCK,
                change.occurred_at + timedelta(hours=hours),
                waited=_humanise(timedelta(hours=hours)),
            )
        )
    data = {
        "offer_id": str(offer_id),
        "need_id": str(change.need_id),
        "respond_by": respond_by.isoformat(),
        "attempt": change.attempt,
    }
    share = deps.settings.agency_reminder_at_share_left
    remind_at = respond_by - (respond_by - change.occurred_at) * share
    jobs += [
        _tell_agency(agency_id, "offer.created", data, now, offer_id=offer_id),
        _tell_agency(
            agency_id,
            "offer.deadline-approaching",
            data,
            remind_at,
            offer_id=offer_id,
            only_if_open=True,
        ),
    ]
    await repo.schedule_jobs(conn, jobs)


async def _declined_or_expired(
    conn: asyncpg.Connection, deps: Deps, change: ReferralStatusChanged, need: Any
) -> None:
    await _offer_closed(conn, deps, change)
    if change.offer_id is not None:
        await repo.set_stage(conn, change.offer_id, change.status, change.reason, deps.clock.now())
    about = About.DECLINED if change.status == ReferralStatus.DECLINED else About.EXPIRED
    await repo.schedule_jobs(
        conn, [_tell_worker(change, about, deps.clock.now(), key=change.offer_id)]
    )


async def _accepted(
    conn: asyncpg.Connection, deps: Deps, change: ReferralStatusChanged, need: Any
) -> None:
    offer_id, agency_id = change.offer_id, change.agency_id
    assert offer_id and agency_id
    now = deps.clock.now()
    await _offer_closed(conn, deps, change)
    await repo.set_stage(conn, offer_id, ReferralStatus.ACCEPTED, None, now)
    # Others asked at the same time (an urgent fan-out) can no longer take the person.
    for other in await repo.close_others_as_placed(conn, change.need_id, offer_id, now):
        await repo.cancel_jobs(conn, offer_id=other, kind=JobKind.OFFER_DEADLINE)
        await repo.cancel_jobs(conn, offer_id=other, kind=JobKind.AGENCY_WEBHOOK)
    await repo.cancel_job(conn, _job_id(JobKind.WORKER_EMAIL, change.need_id, (About.STUCK, None)))
    agency_name = change.agency_name or agency_id
    await repo.record_acceptance(conn, change.need_id, offer_id, agency_id, agency_name)
    # The need's own event may not have been read yet (another topic): then the default
    # plan is scheduled and each message checks the person's choice when it falls due.
    plan = deps.settings.aftercare_plan(need["category"]) if need else deps.settings.aftercare_days
    channel = need["contact_channel"] if need else "not yet known"
    person_told = channel in ("email", "sms", "not yet known")
    jobs = [
        _tell_worker(
            change,
            About.ACCEPTED,
            now,
            agency_name=agency_name,
            aftercare_days=plan,
            person_told=person_told,
        )
    ]
    if person_told:
        jobs.append(
            _tell_person(change, About.ACCEPTED, now, agency_name=agency_name, check_in_days=plan)
        )
    for day in plan:
        due = change.occurred_at + timedelta(days=day)
        if person_told:
            jobs.append(_tell_person(change, About.CHECK_IN, due, agency_name=agency_name, day=day))
        elif channel == "phone":
            jobs.append(
                _tell_worker(
                    change, About.CALL_CHECK_IN, due, key=day, agency_name=agency_name, day=day
                )
            )
    jobs.append(_request_outcome(deps, change))
    await repo.schedule_jobs(conn, jobs)


def _request_outcome(deps: Deps, change: ReferralStatusChanged) -> repo.Job:
    """Ask the agency how it went, with a one-click link per outcome (the closed loop)."""
    offer_id, agency_id = change.offer_id, change.agency_id
    assert offer_id and agency_id
    link = Link(
        job_id(offer_id, "outcome-link"),
        change.need_id,
        OUTCOME,
        offer_id=offer_id,
        agency_id=agency_id,
    )
    data = {
        "offer_id": str(offer_id),
        "need_id": str(change.need_id),
        "outcome_url": deps.links.url(link),
        "outcomes": [o.value for o in Outcome],
    }
    due = change.occurred_at + timedelta(days=deps.settings.outcome_request_after_days)
    return _tell_agency(agency_id, "outcome.requested", data, due, offer_id=offer_id)


async def _unmatched(
    conn: asyncpg.Connection, deps: Deps, change: ReferralStatusChanged, need: Any
) -> None:
    await repo.cancel_job(conn, _job_id(JobKind.WORKER_EMAIL, change.need_id, (About.STUCK, None)))
    excluded = [e.model_dump() for e in change.excluded]
    await repo.schedule_jobs(
        conn, [_tell_worker(change, About.UNMATCHED, deps.clock.now(), excluded=excluded)]
    )


async def _cancelled(
    conn: asyncpg.Connection, deps: Deps, change: ReferralStatusChanged, need: Any
) -> None:
    await _stop_following(conn, deps, [change.need_id], change.reason)
    # A revocation is recorded by the worker in intake: they know already.
    if change.reason != CANCELLED_CONSENT_REVOKED:
        await repo.schedule_jobs(conn, [_tell_worker(change, About.CANCELLED, deps.clock.now())])


async def _ended(
    conn: asyncpg.Connection, deps: Deps, change: ReferralStatusChanged, need: Any
) -> None:
    """Completed or failed: the outcome is in, so the request for it is not needed."""
    if change.offer_id is not None:
        await repo.cancel_jobs(conn, offer_id=change.offer_id, kind=JobKind.AGENCY_WEBHOOK)
        await repo.set_stage(conn, change.offer_id, change.status, change.reason, deps.clock.now())
    if change.status == ReferralStatus.FAILED:
        await repo.schedule_jobs(conn, [_tell_worker(change, About.FAILED, deps.clock.now())])


async def _offer_closed(
    conn: asyncpg.Connection, deps: Deps, change: ReferralStatusChanged
) -> None:
    if change.offer_id is not None:
        await repo.set_offer_status(conn, change.offer_id, "closed", deps.clock.now())
        await repo.cancel_jobs(conn, offer_id=change.offer_id, kind=JobKind.OFFER_DEADLINE)
        await repo.cancel_jobs(conn, offer_id=change.offer_id, kind=JobKind.AGENCY_WEBHOOK)


_STEPS = {
    ReferralStatus.OFFERED: _offered,
    ReferralStatus.DECLINED: _declined_or_expired,
    ReferralStatus.EXPIRED: _declined_or_expired,
    ReferralStatus.ACCEPTED: _accepted,
    ReferralStatus.UNMATCHED: _unmatched,
    ReferralStatus.CANCELLED: _cancelled,
    ReferralStatus.COMPLETED: _ended,
    ReferralStatus.FAILED: _ended,
}


# What each use case schedules is built by these, and written by repo.schedule_jobs all at
# once.


def _tell_worker(
    change: ReferralStatusChanged,
    about: About,
    due: datetime,
    *,
    key: object = None,
    **payload: Any,
) -> repo.Job:
    payload = {"agency_name": change.agency_name, "reason": change.reason, **payload}
    return _job(
        JobKind.WORKER_EMAIL,
        change.need_id,
        due,
        key=(about, key),
        payload={"about": about.value, **payload},
    )


def _tell_person(
    change: ReferralStatusChanged,
    about: About,
    due: datetime,
    **payload: Any,
) -> repo.Job:
    return _job(
        JobKind.PERSON_MESSAGE,
        change.need_id,
        due,
        key=(about, payload.get("day")),
        payload={"about": about.value, **payload},
    )


def _tell_agency(
    agency_id: str,
    kind: str,
    data: dict[str, Any],
    due: datetime,
    *,
    offer_id: UUID,
    only_if_open: bool = False,
) -> repo.Job:
    """A webhook call, scheduled only if the agency has an enabled endpoint; its Kafka topic
    and the API carry the rest."""
    # created_at is fixed now, so a retry or an operator's replay sends the same bytes.
    payload = {
        "agency_id": agency_id,
        "type": kind,
        "data": data,
        "only_if_open": only_if_open,
        "created_at": due.isoformat(),
    }
    return _job(
        JobKind.AGENCY_WEBHOOK,
        UUID(data["need_id"]),
        due,
        key=(kind,),
        offer_id=offer_id,
        payload=payload,
        webhook_of=agency_id,
    )


def _job(
    kind: JobKind,
    need_id: UUID,
    due: datetime,
    *,
    key: tuple[object, ...] = (),
    offer_id: UUID | None = None,
    payload: dict[str, Any] | None = None,
    webhook_of: str | None = None,
) -> repo.Job:
    job_id = _job_id(kind, need_id, key, offer_id)
    return repo.Job(job_id, kind, need_id, due, offer_id, payload or {}, webhook_of)


def _job_id(
    kind: JobKind, need_id: UUID, key: tuple[object, ...], offer_id: UUID | None = None
) -> UUID:
    parts = (need_id, offer_id, kind, *key) if offer_id else (need_id, kind, *key)
    return job_id(*parts)


def _humanise(elapsed: timedelta) -> str:
    hours = elapsed.total_seconds() / 3600
    return f"{hours:.0f} hours" if hours < 48 else f"{hours / 24:.0f} days"


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


async def report_outcome(deps: Deps, agency_id: str, offer_id: UUID, outcome: Outcome) -> Answer:
    """The accepting agency says how the referral ended; matching completes or fails it."""
    async with deps.pool.acquire() as conn, conn.transaction():
        return await _report_outcome(conn, deps, agency_id, offer_id, outcome)


async def _report_outcome(
    conn: asyncpg.Connection, deps: Deps, agency_id: str, offer_id: UUID, outcome: Outcome
) -> Answer:
    offer = await repo.offer_for_update(conn, offer_id)
    if offer is None or offer["agency_id"] != agency_id:
        return Answer.NOT_FOUND
    need = await repo.referrer(conn, offer["need_id"])
    if need is None or need["accepted_offer_id"] != offer_id:
        return Answer.NOT_OPEN  # only the offer the need was placed through has an outcome
    report = OutcomeReported(
        offer_id=offer_id,
        need_id=offer["need_id"],
        agency_id=agency_id,
        outcome=outcome,
        reported_at=deps.clock.now(),
    )
    await outbox.enqueue(conn, OFFER_RESPONSES, report, source=SOURCE, clock=deps.clock)
    return Answer.RECORDED


# --- one-click links -----------------------------------------------------------------------


class LinkAnswer(StrEnum):
    RECORDED = "recorded"
    ALREADY_USED = "already_used"


class LinkRefused(Exception):
    pass


async def answer_link(deps: Deps, link: Link, answer: str) -> tuple[LinkAnswer, str]:
    """Record the answer given through a check-in or outcome link, with its effect, in one
    transaction; a link works once. Returns whether this use counted, and the answer that
    stands."""
    Outcome(answer) if link.purpose == OUTCOME else CheckInAnswer(answer)  # ValueError if not
    now = deps.clock.now()
    async with deps.pool.acquire() as conn, conn.transaction():
        use = await repo.use_link(conn, link.link_id, link.need_id, link.purpose, answer, now)
        if not use["first"]:
            return LinkAnswer.ALREADY_USED, use["answer"]
        if link.purpose == CHECK_IN:
            await _checked_in(conn, deps, link, CheckInAnswer(answer))
        else:
            assert link.offer_id and link.agency_id
            result = await _report_outcome(
                conn, deps, link.agency_id, link.offer_id, Outcome(answer)
            )
            if result != Answer.RECORDED:
                raise LinkRefused("this referral is no longer with your agency")
    return LinkAnswer.RECORDED, answer


async def _checked_in(
    conn: asyncpg.Connection, deps: Deps, link: Link, answer: CheckInAnswer
) -> None:
    """Tell intake (the worker's tracker); "stop" also ends the remaining check-ins."""
    now = deps.clock.now()
    if answer == CheckInAnswer.STOP:
        stopped = await repo.stop_reminders(conn, link.need_id, JobKind.PERSON_MESSAGE, now)
        log.info("need %s: the person stopped reminders (%d cancelled)", link.need_id, stopped)
    event = CheckInAnswered(need_id=link.need_id, day=link.day or 0, answer=answer, answered_at=now)
    await outbox.enqueue(
        conn,
        AFTERCARE,
        event,
        source=SOURCE,
        clock=deps.clock,
        event_id=job_id(link.link_id, "answer"),
    )
