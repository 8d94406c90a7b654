"""The referral state machine, for each need.

    submitted -> offered(agency, attempt n, respond_by)
    offered -> accepted | declined(reason) | expired   (declined/expired -> next candidate)
    accepted -> completed (got help) | failed(outcome)  (the agency's reported outcome)
    no candidate left, or attempts used up -> unmatched (with every exclusion's reason)
    any open state -> cancelled (consent revoked)

An urgent need may be offered to several agencies at once (URGENT_FANOUT): the first to
accept wins, the others are withdrawn, and a late acceptance is refused as already placed.
Each open offer holds a place at its service until it is answered.

Each handler runs in one transaction (a step.Step) with the inbox rows and the outbox rows it
emits, so a redelivered event changes nothing and a crash leaves either all of a step or
none of it. Needs come in batches, one step each; answers, revocations and profiles one at a
time.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import asyncpg

from services.matching import repository as repo
from services.matching.directory import owner as directory
from services.matching.geo import PostalArea
from services.matching.ranking import Candidate, NeedView, Ranking, rank
from services.matching.repository import Area, PlaceChange
from services.matching.settings import MatchingSettings
from services.matching.step import Step
from shared import metrics
from shared.clock import Clock
from shared.cloudevents import MAX_VALUE_BYTES, Envelope, PoisonMessage
from shared.events import (
    CANCELLED_CONSENT_REVOKED,
    AcceptanceRefused,
    CapacityUpdated,
    ConsentRevoked,
    ConsentScope,
    Constraints,
    DeclineReason,
    Event,
    ExcludedAgency,
    Gender,
    NeedCategory,
    NeedSubmitted,
    OfferAccepted,
    OfferDeclined,
    OfferExpired,
    OfferWithdrawn,
    Outcome,
    OutcomeReported,
    RecoveryStage,
    ReferralOffered,
    ReferralStatus,
    ReferralStatusChanged,
    Urgency,
    offer_id_for,
)
from shared.hsds import AgencyProfile
from shared.inbox import first_deliveries, first_delivery
from shared.kafka import Delivery
from shared.topics import REFERRAL_EVENTS, agency_offers

log = logging.getLogger(__name__)

NEEDS_CONSUMER = "matching.needs"
RESPONSES_CONSUMER = "matching.offer-responses"
CONSENTS_CONSUMER = "matching.consent-events"
AGENCIES_CONSUMER = "matching.agencies"
CAPACITY_CONSUMER = "matching.capacity-updates"
CONSENT_REVOKED = CANCELLED_CONSENT_REVOKED

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
# States in which an agency took the person on through its accepted offer: the only ones an
# outcome can close.
TAKEN_ON = (ReferralStatus.ACCEPTED, ReferralStatus.IN_PROGRESS, ReferralStatus.ON_HOLD)
# An unmatched need lists the services it considered and why each was left out, but no
# more than this many, in no more than half the size every reader accepts
# (cloudevents.MAX_VALUE_BYTES): a county served by thousands of full services would
# otherwise make an event no reader could take. The reason says how many more there were.
MAX_LISTED_EXCLUSIONS = 500
_EXCLUSIONS_BUDGET_BYTES = MAX_VALUE_BYTES // 2


@dataclass(frozen=True)
class Deps:
    pool: asyncpg.Pool
    clock: Clock
    settings: MatchingSettings
    places: dict[str, PostalArea] = field(default_factory=dict)


def deadline(settings: MatchingSettings, urgency: Urgency) -> timedelta:
    hours = {
        Urgency.URGENT: settings.deadline_urgent_h,
        Urgency.SOON: settings.deadline_soon_h,
        Urgency.ROUTINE: settings.deadline_routine_h,
    }[urgency]
    return timedelta(hours=hours)


# --- needs -------------------------------------------------------------------------------


async def handle_need_submitted(deps: Deps, envelope: Envelope) -> None:
    await handle_needs_submitted(deps, [Delivery(envelope)])


async def handle_needs_submitted(deps: Deps, deliveries: Sequence[Delivery]) -> None:
    """Needs in one step: each new one becomes a referral, offered (or, under a revoked
    consent, recorded and cancelled). Their areas and the agencies' records are read once
    for the whole batch, and every write goes out in bulk at the end."""
    async with deps.pool.acquire() as conn, conn.transaction():
        step = Step(conn, deps.clock)
        firsts = await first_deliveries(conn, NEEDS_CONSUMER, [d.envelope for d in deliveries])
        fresh = [d for d, first in zip(deliveries, firsts, strict=True) if first]
        needs = [_need(d.envelope) for d in fresh]
        if not needs:
            return
        revoked = await repo.consents_revoked_at(conn, needs)
        refs = await repo.insert_referrals(conn, needs, deps.clock.now())
        await _read_candidates(step, deps, refs.values())
        for delivery, need in zip(fresh, needs, strict=True):
            with delivery.context():
                ref = refs.pop(need.need_id, None)
                if ref is None:
                    log.info("need %s already known; ignoring the repeat", need.need_id)
                    continue
                await _open_referral(step, deps, ref, revoked[need.consent.consent_id])
        await step.flush()


def _need(envelope: Envelope) -> NeedSubmitted:
    need = envelope.event
    assert isinstance(need, NeedSubmitted)
    return need


async def _open_referral(
    step: Step, deps: Deps, ref: dict[str, Any], revoked_at: datetime | None
) -> None:
    await _emit_status(step, deps, ref, ReferralStatus.SUBMITTED, bump=False)
    if revoked_at is not None:
        # Recorded (so a repeat or a stray answer finds it) but never offered.
        await _emit_status(step, deps, ref, ReferralStatus.CANCELLED, reason=CONSENT_REVOKED)
    else:
        await _offer_next(step, deps, ref)


async def _read_candidates(step: Step, deps: Deps, refs: Iterable[dict[str, Any]]) -> None:
    """Read the services near every one of these needs, and their agencies' records, in
    one query each, so ranking them one by one reads nothing more."""
    services = await step.candidates([_area(need_view(deps, ref)) for ref in refs])
    await step.stats(sorted({s.agency_id for found in services for s in found}))


async def handle_consent_event(deps: Deps, envelope: Envelope) -> None:
    """Cancel every open referral under a revoked consent. Keyed by person_ref, so this may
    run beside the need's own handlers: the consent row's lock orders it against needs
    arriving under the consent, each referral's row lock against answers to its offers."""
    revoked = envelope.event
    assert isinstance(revoked, ConsentRevoked)
    async with deps.pool.acquire() as conn, conn.transaction():
        if not await first_delivery(conn, CONSENTS_CONSUMER, envelope):
            return
        await repo.revoke_consent(conn, revoked)
        refs = await repo.referrals_for_update(
            conn, revoked.consent_id, [s.value for s in OPEN_STATES]
        )
        step = Step(conn, deps.clock)
        for ref in refs:
            await _cancel(step, deps, ref, CONSENT_REVOKED)
        await step.flush()
        log.info("consent %s revoked: %d referral(s) cancelled", revoked.consent_id, len(refs))


# --- the directory ---------------------------------------------------------------------


async def handle_agency_profile(deps: Deps, envelope: Envelope) -> None:
    profile = envelope.event
    assert isinstance(profile, AgencyProfile)
    async with deps.pool.acquire() as conn, conn.transaction():
        if not await repo.apply_profile(conn, profile):
            log.debug("agency %s: revision %d is stale; kept the newer one",
                     profile.agency_id, profile.revision)  # fmt: skip


async def handle_agency_removed(deps: Deps, agency_id: str) -> None:
    """A tombstone: the agency gets no new offers. Offers it holds stay open until answered
    or expired, so nobody's referral is dropped on the floor."""
    async with deps.pool.acquire() as conn, conn.transaction():
        await repo.remove_agency(conn, agency_id)
    log.info("agency %s left the directory", agency_id)


async def handle_capacity_update(deps: Deps, envelope: Envelope) -> None:
    update = envelope.event
    assert isinstance(update, CapacityUpdated)
    async with deps.pool.acquire() as conn, conn.transaction():
        if not await first_delivery(conn, CAPACITY_CONSUMER, envelope):
            return
        await directory.update_capacity(conn, update, deps.clock)


# --- agencies' answers -------------------------------------------------------------------


async def handle_offer_response(deps: Deps, envelope: Envelope) -> None:
    response = envelope.event
    assert isinstance(response, OfferAccepted | OfferDeclined | OfferExpired | OutcomeReported)
    async with deps.pool.acquire() as conn, conn.transaction():
        if not await first_delivery(conn, RESPONSES_CONSUMER, envelope):
            return
        ref = await repo.referral_for_update(conn, response.need_id)
        offer = await repo.offer(conn, response.offer_id)
        if ref is None or offer is None or offer["need_id"] != response.need_id:
            raise PoisonMessage(f"no offer {response.offer_id} for need {response.need_id}")
        if offer["agency_id"] != response.agency_id:
            raise PoisonMessage(
                f"offer {response.offer_id} was made to {offer['agency_id']}, "
                f"not {response.agency_id}"
            )
        step = Step(conn, deps.clock)
        await _answer(step, deps, ref, offer, response)
        await step.flush()


async def _answer(
    step: Step,
    deps: Deps,
    ref: dict[str, Any],
    offer: dict[str, Any],
    response: OfferAccepted | OfferDeclined | OfferExpired | OutcomeReported,
) -> None:
    if isinstance(response, OutcomeReported):
        # Before the open check: the offer an outcome is about is closed, as accepted.
        await _close_loop(step, deps, ref, offer, response)
    elif offer["status"] != "open":
        await _answer_to_closed_offer(step, deps, ref, offer, response)
    elif isinstance(response, OfferAccepted):
        await _accept_if_in_time(step, deps, ref, offer)
    elif isinstance(response, OfferDeclined):
        await _close_unanswered(step, deps, ref, offer, ReferralStatus.DECLINED, response.reason)
    else:
        await _close_unanswered(step, deps, ref, offer, ReferralStatus.EXPIRED, None)


async def _answer_to_closed_offer(
    step: Step,
    deps: Deps,
    ref: dict[str, Any],
    offer: dict[str, Any],
    response: Event,
) -> None:
    """A repeat is ignored; an acceptance that came too late is told so plainly."""
    if not isinstance(response, OfferAccepted) or offer["status"] == "accepted":
        log.info("need %s: %s for %s offer ignored", ref["need_id"], type(response).__name__,
                 offer["status"])  # fmt: skip
        return
    await _refuse(step, deps, offer, _why_closed(ref, offer))


async def _close_loop(
    step: Step,
    deps: Deps,
    ref: dict[str, Any],
    offer: dict[str, Any],
    reported: OutcomeReported,
) -> None:
    """The agency that took the person on says how it ended: got-help completes the
    referral, any other outcome fails it with that outcome as the reason. Only the offer
    holding the referral can close it; a repeat, a late word on a referral already closed
    (or cancelled) or an outcome for another offer changes nothing, and is no poison."""
    need_id, outcome = ref["need_id"], reported.outcome
    if offer["status"] == "open":
        log.info("need %s: outcome %s for offer %s, never accepted, ignored", need_id,
                 outcome.value, offer["offer_id"])  # fmt: skip
        return
    if ref["status"] not in TAKEN_ON or ref["offer_id"] != offer["offer_id"]:
        log.info("need %s: outcome %s for %s offer %s ignored; the referral is %s", need_id,
                 outcome.value, offer["status"], offer["offer_id"], ref["status"])  # fmt: skip
        return
    # No place is given back either way: acceptance consumed it, and the agency reports its
    # capacity itself (a newer count restarts `consumed`).
    if outcome == Outcome.GOT_HELP:
        await _emit_status(step, deps, ref, ReferralStatus.COMPLETED)
    else:
        await _emit_status(step, deps, ref, ReferralStatus.FAILED, reason=outcome.value)
    log.info("need %s: %s reported by %s", need_id, outcome.value, offer["agency_id"])


def _why_closed(ref: dict[str, Any], offer: dict[str, Any]) -> str:
    if ref["status"] in HELD_BY_AGENCY and ref["offer_id"] != offer["offer_id"]:
        return "already placed: another agency accepted this referral first"
    if ref["status"] == ReferralStatus.CANCELLED:
        return "withdrawn: the referral was cancelled"
    return {
        "expired": "expired: the acceptance came after the deadline",
        "declined": "declined earlier: this offer was already declined",
    }.get(offer["status"], "withdrawn: the offer is closed")


async def _accept_if_in_time(
    step: Step, deps: Deps, ref: dict[str, Any], offer: dict[str, Any]
) -> None:
    if deps.clock.now() > offer["respond_by"]:
        # Notifications' expiry may still be on its way; the deadline decides, not the race.
        await _refuse(step, deps, offer, "expired: the acceptance came after the deadline")
        await _close_unanswered(step, deps, ref, offer, ReferralStatus.EXPIRED, None)
        return
    now = deps.clock.now()
    await _close_offer(step, deps, offer, "accepted")
    _point_at(ref, offer)
    await _emit_status(step, deps, ref, ReferralStatus.ACCEPTED)
    first = await repo.first_offered_at(await step.flushed(), ref["need_id"]) or offer["offered_at"]
    metrics.record(
        partial(
            metrics.ACCEPTANCE_LATENCY.labels(ref["urgency"]).observe,
            max((now - first).total_seconds(), 0.0),
        )
    )
    for other in await repo.open_offers(await step.flushed(), ref["need_id"]):
        await _close_offer(step, deps, other, "withdrawn", record=False)
        await _withdraw(step, deps, other, "placed with another agency")
    log.info("need %s accepted by %s at %s", ref["need_id"], offer["agency_id"], now)


async def _close_unanswered(
    step: Step,
    deps: Deps,
    ref: dict[str, Any],
    offer: dict[str, Any],
    status: ReferralStatus,
    reason: DeclineReason | None,
) -> None:
    await _close_offer(step, deps, offer, status.value)
    if status == ReferralStatus.EXPIRED:
        await _withdraw(step, deps, offer, "expired: no answer before the deadline")
    _point_at(ref, offer)
    await _emit_status(step, deps, ref, status, reason=reason)
    still_open = await repo.open_offers(await step.flushed(), ref["need_id"])
    if still_open:
        # Others of a fan-out are still considering it: the referral stays offered.
        _point_at(ref, still_open[-1])
        await _emit_status(step, deps, ref, ReferralStatus.OFFERED)
    else:
        await _offer_next(step, deps, ref)


async def _close_offer(
    step: Step, deps: Deps, offer: dict[str, Any], status: str, *, record: bool = True
) -> None:
    """Close an open offer: its place is released, or taken when accepted, and (when the
    agency answered or let it lapse) its answer counts in the agency's record."""
    now = deps.clock.now()
    await repo.close_offer(step.conn, offer["offer_id"], status, now)
    if offer["service_id"]:
        taken = status == "accepted"
        step.change_places(offer["service_id"], PlaceChange(reserved=-1, consumed=int(taken)))
    if record:
        waited = (min(now, offer["respond_by"]) - offer["offered_at"]).total_seconds() / 3600
        step.forget_stats(offer["agency_id"])
        await repo.record_answer(
            step.conn,
            offer["agency_id"],
            status == "accepted",
            waited,
            deps.settings.agency_stats_weight,
        )


# --- choosing agencies -------------------------------------------------------------------


async def _offer_next(step: Step, deps: Deps, ref: dict[str, Any]) -> None:
    now = deps.clock.now()
    need = need_view(deps, ref)
    ranking = await rank_candidates(step, deps, need)
    fanout = deps.settings.urgent_fanout if need.urgency == Urgency.URGENT else 1
    slots = min(fanout, deps.settings.max_offer_attempts - ref["attempt"])
    if not ranking.candidates or slots <= 0:
        listed = listed_exclusions(ranking.excluded)
        await _emit_status(
            step, deps, ref, ReferralStatus.UNMATCHED,
            reason=_unmatched_reason(ref, need, ranking, len(listed)), excluded=listed,
        )  # fmt: skip
        return
    respond_by = now + deadline(deps.settings, need.urgency)
    for candidate in ranking.candidates[:slots]:
        offer = _new_offer(ref, candidate, respond_by, now)
        step.add_offer(offer, candidate.service)
        _point_at(ref, offer)
        offered = _offer(ref, candidate)
        step.enqueue(agency_offers(offer["agency_id"]), offered)
        await _emit_status(step, deps, ref, ReferralStatus.OFFERED, offer=offered)
        metrics.record(metrics.OFFERS_MADE.labels(ref["category"], ref["urgency"]).inc)
        log.info("need %s offered to %s (attempt %d)", ref["need_id"], offer["agency_id"],
                 offer["attempt"])  # fmt: skip


async def rank_candidates(step: Step, deps: Deps, need: NeedView) -> Ranking:
    """Candidate selection (index lookups by area) and ranking; what the benchmark times."""
    (services,) = await step.candidates([_area(need)])
    stats = await step.stats(sorted({s.agency_id for s in services}))
    return rank(need, services, stats, deps.clock.now(), deps.settings.zone)


def _area(need: NeedView) -> Area:
    return Area(need.category, need.postal_code, need.county, need.point)


def need_view(deps: Deps, ref: dict[str, Any]) -> NeedView:
    place = deps.places.get(ref["postal_code"])
    return NeedView(
        category=NeedCategory(ref["category"]),
        urgency=Urgency(ref["urgency"]),
        postal_code=ref["postal_code"],
        county=ref["county"] or (place.county if place else None),
        point=place.point if place else None,
        languages=tuple(ref["languages"]),
        age_years=ref["age_years"],
        gender=Gender(ref["gender"]) if ref["gender"] else None,
        constraints=Constraints.model_validate(ref["constraints"]),
        consent=ConsentScope.model_validate(ref["consent"]),
        tried=frozenset(ref["tried"]),
    )


def listed_exclusions(excluded: Sequence[ExcludedAgency]) -> tuple[ExcludedAgency, ...]:
    """The exclusions an unmatched event lists: the first ones, within both limits."""
    size = 0
    for count, exclusion in enumerate(excluded[:MAX_LISTED_EXCLUSIONS]):
        size += len(exclusion.model_dump_json()) + 1
        if size > _EXCLUSIONS_BUDGET_BYTES:
            return tuple(excluded[:count])
    return tuple(excluded[:MAX_LISTED_EXCLUSIONS])


def _unmatched_reason(ref: dict[str, Any], need: NeedView, ranking: Ranking, listed: int) -> str:
    unlisted = len(ranking.excluded) - listed
    more = f" ({unlisted:,} more services left out are not listed)" if unlisted > 0 else ""
    if ranking.candidates:
        return f"{ref['attempt']} offers made, none accepted{more}"
    if not ranking.excluded:
        where = f"ZIP {need.postal_code}" + (f" or {need.county} County" if need.county else "")
        return f"no agency in the directory offers {need.category.label} in {where}"
    return f"no eligible agency left{more}"


def _new_offer(
    ref: dict[str, Any], candidate: Candidate, respond_by: datetime, now: datetime
) -> dict[str, Any]:
    ref["attempt"] += 1
    ref["tried"] = [*ref["tried"], candidate.service.agency_id]
    return {
        "offer_id": offer_id_for(ref["need_id"], ref["attempt"]),
        "need_id": ref["need_id"],
        "agency_id": candidate.service.agency_id,
        "service_id": candidate.service.service_id,
        "attempt": ref["attempt"],
        "respond_by": respond_by,
        "offered_at": now,
        "explanation": [f.model_dump() for f in candidate.factors],
    }


def _point_at(ref: dict[str, Any], offer: dict[str, Any]) -> None:
    """The referral's agency fields name the offer its latest status is about."""
    for name in ("agency_id", "offer_id", "service_id", "respond_by"):
        ref[name] = offer[name]


def _offer(ref: dict[str, Any], candidate: Candidate) -> ReferralOffered:
    """The offer as the agency sees it: the coarse facts it decides on, never who it is."""
    stage = ref["recovery_stage"]
    return ReferralOffered(
        offer_id=ref["offer_id"],
        need_id=ref["need_id"],
        agency_id=ref["agency_id"],
        service_id=candidate.service.service_id,
        attempt=ref["attempt"],
        category=NeedCategory(ref["category"]),
        urgency=Urgency(ref["urgency"]),
        postal_code=ref["postal_code"],
        county=ref["county"],
        languages=tuple(sorted(ref["languages"])),
        age_years=ref["age_years"],
        recovery_stage=RecoveryStage(stage) if stage else None,
        gender=Gender(ref["gender"]) if ref["gender"] else None,
        constraints=Constraints.model_validate(ref["constraints"]),
        respond_by=ref["respond_by"],
        score=candidate.score,
        explanation=candidate.factors,
    )


# --- cancelling --------------------------------------------------------------------------


async def _cancel(step: Step, deps: Deps, ref: dict[str, Any], reason: str) -> None:
    for offer in await repo.open_offers(await step.flushed(), ref["need_id"]):
        await _close_offer(step, deps, offer, "withdrawn", record=False)
        await _withdraw(step, deps, offer, reason)
    # An accepted referral is withdrawn too: the agency may have started work, and its
    # offers topic is the only channel it is sure to read.
    if ref["status"] in TAKEN_ON:
        await _withdraw(step, deps, ref, reason)
    await _emit_status(step, deps, ref, ReferralStatus.CANCELLED, reason=reason)


async def _withdraw(step: Step, deps: Deps, offer: dict[str, Any], reason: str) -> None:
    await _tell_agency(step, deps, offer, OfferWithdrawn, reason)


async def _refuse(step: Step, deps: Deps, offer: dict[str, Any], reason: str) -> None:
    await _tell_agency(step, deps, offer, AcceptanceRefused, reason)


async def _tell_agency(
    step: Step,
    deps: Deps,
    offer: dict[str, Any],
    kind: type[OfferWithdrawn | AcceptanceRefused],
    reason: str,
) -> None:
    """An event about one offer, with the reason, on the agency's own topic."""
    ids = {name: offer[name] for name in ("offer_id", "need_id", "agency_id")}
    step.enqueue(agency_offers(offer["agency_id"]), kind(**ids, reason=reason))


async def _emit_status(
    step: Step,
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
    step.save_referral(ref)
    with_agency = status not in (ReferralStatus.SUBMITTED, ReferralStatus.UNMATCHED)
    change = ReferralStatusChanged(
        need_id=ref["need_id"],
        status=status,
        sequence=ref["sequence"],
        occurred_at=ref["updated_at"],
        agency_id=ref["agency_id"] if with_agency else None,
        agency_name=await step.agency_name(ref["agency_id"]) if with_agency else None,
        offer_id=ref["offer_id"] if with_agency else None,
        attempt=ref["attempt"] or None,
        respond_by=ref["respond_by"] if status == ReferralStatus.OFFERED else None,
        **extra,
    )
    step.enqueue(REFERRAL_EVENTS, change)
    _count_status(ref, status, extra.get("reason"))


def _count_status(ref: dict[str, Any], status: ReferralStatus, reason: object) -> None:
    """Declines, expiries and unmatched needs, counted once the transaction commits."""
    if status == ReferralStatus.DECLINED:
        reason = reason.value if isinstance(reason, DeclineReason) else str(reason or "unknown")
        metrics.record(metrics.DECLINES.labels(reason).inc)
    elif status == ReferralStatus.EXPIRED:
        metrics.record(metrics.EXPIRIES.labels(ref["urgency"]).inc)
    elif status == ReferralStatus.UNMATCHED:
        metrics.record(metrics.UNMATCHED.labels(ref["category"]).inc)
