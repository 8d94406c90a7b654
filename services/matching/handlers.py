"""The referral state machine, one need at a time.

    submitted -> offered(agency, attempt n, respond_by)
    offered -> accepted | declined(reason) | expired   (declined/expired -> next candidate)
    no candidate left, or attempts used up -> unmatched (with every exclusion's reason)
    any open state -> cancelled (consent revoked)

Each handler runs in one transaction with the inbox row and the outbox rows it emits, so a
redelivered event changes nothing and a crash leaves either all of a step or none of it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from services.matching import repository as repo
from services.matching.ranking import NeedView, rank
from services.matching.settings import MatchingSettings
from shared import outbox
from shared.clock import Clock
from shared.cloudevents import Envelope, PoisonMessage
from shared.events import (
    ConsentRevoked,
    ConsentScope,
    Constraints,
    Event,
    MatchFactor,
    NeedCategory,
    NeedSubmitted,
    OfferAccepted,
    OfferDeclined,
    OfferExpired,
    OfferWithdrawn,
    RecoveryStage,
    ReferralOffered,
    ReferralStatus,
    ReferralStatusChanged,
    Urgency,
    offer_id_for,
)
from shared.inbox import first_delivery
from shared.topics import REFERRAL_EVENTS, TopicSpec, agency_offers

log = logging.getLogger(__name__)

SOURCE = "/refnet/matching"
NEEDS_CONSUMER = "matching.needs"
RESPONSES_CONSUMER = "matching.offer-responses"
CONSENTS_CONSUMER = "matching.consent-events"
CONSENT_REVOKED = "consent revoked"

# Every state a referral can still leave; unmatched, completed, failed and cancelled are final.
OPEN_STATES = (
    ReferralStatus.SUBMITTED,
    ReferralStatus.OFFERED,
    ReferralStatus.DECLINED,
    ReferralStatus.EXPIRED,
    ReferralStatus.ACCEPTED,
    ReferralStatus.IN_PROGRESS,
    ReferralStatus.ON_HOLD,
)
# States in which an agency holds the referral (its offer is open, or it took the person on)
# and so has to be told on its own topic when the referral is cancelled.
HELD_BY_AGENCY = (
    ReferralStatus.OFFERED,
    ReferralStatus.ACCEPTED,
    ReferralStatus.IN_PROGRESS,
    ReferralStatus.ON_HOLD,
)


@dataclass(frozen=True)
class Deps:
    pool: asyncpg.Pool
    clock: Clock
    settings: MatchingSettings


def deadline(settings: MatchingSettings, urgency: Urgency) -> timedelta:
    hours = {
        Urgency.URGENT: settings.deadline_urgent_h,
        Urgency.SOON: settings.deadline_soon_h,
        Urgency.ROUTINE: settings.deadline_routine_h,
    }[urgency]
    return timedelta(hours=hours)


async def handle_need_submitted(deps: Deps, envelope: Envelope) -> None:
    need = envelope.event
    assert isinstance(need, NeedSubmitted)
    async with deps.pool.acquire() as conn, conn.transaction():
        if not await first_delivery(conn, NEEDS_CONSUMER, envelope):
            return
        revoked_at = await repo.consent_revoked_at(conn, need)
        ref = await repo.insert_referral(conn, need, deps.clock.now())
        if ref is None:
            log.info("need %s already known; ignoring the repeat", need.need_id)
            return
        await _emit_status(conn, deps, ref, ReferralStatus.SUBMITTED, bump=False)
        if revoked_at is not None:
            # Recorded (so a repeat or a stray answer finds it) but never offered.
            await _emit_status(conn, deps, ref, ReferralStatus.CANCELLED, reason=CONSENT_REVOKED)
        else:
            await _offer_next(conn, deps, ref)


async def handle_consent_event(deps: Deps, envelope: Envelope) -> None:
    """Cancel every open referral under a revoked consent. Keyed by person_ref, so this may
    run beside the need's own handlers: the consent row's lock orders it against needs
    arriving under the consent, each referral's row lock against answers to its offer."""
    revoked = envelope.event
    assert isinstance(revoked, ConsentRevoked)
    async with deps.pool.acquire() as conn, conn.transaction():
        if not await first_delivery(conn, CONSENTS_CONSUMER, envelope):
            return
        await repo.revoke_consent(conn, revoked)
        refs = await repo.referrals_for_update(
            conn, revoked.consent_id, [s.value for s in OPEN_STATES]
        )
        for ref in refs:
            await _cancel(conn, deps, ref, CONSENT_REVOKED)
        log.info("consent %s revoked: %d referral(s) cancelled", revoked.consent_id, len(refs))


async def handle_offer_response(deps: Deps, envelope: Envelope) -> None:
    response = envelope.event
    assert isinstance(response, OfferAccepted | OfferDeclined | OfferExpired)
    async with deps.pool.acquire() as conn, conn.transaction():
        if not await first_delivery(conn, RESPONSES_CONSUMER, envelope):
            return
        ref = await repo.referral_for_update(conn, response.need_id)
        if ref is None:
            raise PoisonMessage(f"no referral for need {response.need_id}")
        if not _answers_open_offer(ref, response):
            log.info(
                "need %s: %s for offer %s ignored; referral is %s (offer %s)",
                response.need_id,
                type(response).__name__,
                response.offer_id,
                ref["status"],
                ref["offer_id"],
            )
            return
        if isinstance(response, OfferAccepted):
            await _emit_status(conn, deps, ref, ReferralStatus.ACCEPTED)
        elif isinstance(response, OfferDeclined):
            await _emit_status(conn, deps, ref, ReferralStatus.DECLINED, reason=response.reason)
            await _offer_next(conn, deps, ref)
        else:
            await _withdraw(conn, deps, ref, "expired: no answer before the deadline")
            await _emit_status(conn, deps, ref, ReferralStatus.EXPIRED)
            await _offer_next(conn, deps, ref)


def _answers_open_offer(ref: dict[str, Any], response: Event) -> bool:
    return (
        ref["status"] == ReferralStatus.OFFERED
        and ref["offer_id"] == getattr(response, "offer_id", None)
        and ref["agency_id"] == getattr(response, "agency_id", None)
    )


async def _offer_next(conn: asyncpg.Connection, deps: Deps, ref: dict[str, Any]) -> None:
    now = deps.clock.now()
    need = NeedView(
        category=NeedCategory(ref["category"]),
        postal_code=ref["postal_code"],
        languages=frozenset(ref["languages"]),
        consent=ConsentScope.model_validate(ref["consent"]),
        tried=frozenset(ref["tried"]),
    )
    candidates, excluded = rank(need, await repo.services_in(conn, need.category), now.date())
    if not candidates or ref["attempt"] >= deps.settings.max_offer_attempts:
        reason = (
            f"{ref['attempt']} agencies asked, none accepted"
            if candidates
            else "no eligible agency left"
        )
        await _emit_status(
            conn, deps, ref, ReferralStatus.UNMATCHED, reason=reason, excluded=excluded
        )
        return
    best = candidates[0]
    _assign(ref, best.service.agency_id, now + deadline(deps.settings, Urgency(ref["urgency"])))
    await _enqueue(conn, deps, agency_offers(ref["agency_id"]), _offer(ref, best.factors))
    await _emit_status(conn, deps, ref, ReferralStatus.OFFERED)


def _assign(ref: dict[str, Any], agency_id: str, respond_by: datetime) -> None:
    ref["attempt"] += 1
    ref["agency_id"] = agency_id
    ref["offer_id"] = offer_id_for(ref["need_id"], ref["attempt"])
    ref["respond_by"] = respond_by
    ref["tried"] = [*ref["tried"], agency_id]


def _offer(ref: dict[str, Any], explanation: tuple[MatchFactor, ...]) -> ReferralOffered:
    """The offer as the agency sees it: the coarse facts it decides on, never who it is."""
    stage = ref["recovery_stage"]
    return ReferralOffered(
        offer_id=ref["offer_id"],
        need_id=ref["need_id"],
        agency_id=ref["agency_id"],
        attempt=ref["attempt"],
        category=NeedCategory(ref["category"]),
        urgency=Urgency(ref["urgency"]),
        postal_code=ref["postal_code"],
        county=ref["county"],
        languages=tuple(sorted(ref["languages"])),
        age_years=ref["age_years"],
        recovery_stage=RecoveryStage(stage) if stage else None,
        constraints=Constraints.model_validate(ref["constraints"]),
        respond_by=ref["respond_by"],
        explanation=explanation,
    )


async def _cancel(conn: asyncpg.Connection, deps: Deps, ref: dict[str, Any], reason: str) -> None:
    # An accepted referral is withdrawn too: the agency may have started work, and its
    # offers topic is the only channel it is sure to read.
    if ref["status"] in HELD_BY_AGENCY:
        await _withdraw(conn, deps, ref, reason)
    await _emit_status(conn, deps, ref, ReferralStatus.CANCELLED, reason=reason)


async def _withdraw(conn: asyncpg.Connection, deps: Deps, ref: dict[str, Any], reason: str) -> None:
    withdrawn = OfferWithdrawn(
        offer_id=ref["offer_id"], need_id=ref["need_id"], agency_id=ref["agency_id"], reason=reason
    )
    await _enqueue(conn, deps, agency_offers(ref["agency_id"]), withdrawn)


async def _emit_status(
    conn: asyncpg.Connection,
    deps: Deps,
    ref: dict[str, Any],
    status: ReferralStatus,
    *,
    bump: bool = True,
    **extra: Any,
) -> None:
    if bump:
        ref["sequence"] += 1
    ref["status"] = status.value
    ref["updated_at"] = deps.clock.now()
    await repo.save_referral(conn, ref)
    with_agency = status not in (ReferralStatus.SUBMITTED, ReferralStatus.UNMATCHED)
    change = ReferralStatusChanged(
        need_id=ref["need_id"],
        status=status,
        sequence=ref["sequence"],
        occurred_at=ref["updated_at"],
        agency_id=ref["agency_id"] if with_agency else None,
        agency_name=await repo.agency_name(conn, ref["agency_id"]) if with_agency else None,
        offer_id=ref["offer_id"] if with_agency else None,
        attempt=ref["attempt"] or None,
        respond_by=ref["respond_by"] if status == ReferralStatus.OFFERED else None,
        **extra,
    )
    await _enqueue(conn, deps, REFERRAL_EVENTS, change)


async def _enqueue(conn: asyncpg.Connection, deps: Deps, spec: TopicSpec, event: Event) -> None:
    await outbox.enqueue(conn, spec, event, source=SOURCE, clock=deps.clock)
