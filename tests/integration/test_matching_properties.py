"""Properties of matching over generated directories and needs, on real Postgres.

Whatever the directory and the answers agencies give: no offer goes to an agency that is
ineligible, full, or outside the person's consent; and the places held and taken at each
service always equal the open and accepted offers there. The eligibility oracle below is
written out again from the rules as a worker would state them, not taken from the code
under test.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.matching import repository as repo
from services.matching.handlers import (
    Deps,
    handle_need_submitted,
    handle_needs_submitted,
    handle_offer_response,
)
from shared.events import (
    ConsentRecipients,
    ConsentScope,
    Constraints,
    Gender,
    Insurance,
    NeedCategory,
    NeedSubmitted,
    OfferAccepted,
    OfferExpired,
    Urgency,
)
from shared.kafka import Delivery
from tests.factories import ServiceSpec, agency_profile, need_submitted
from tests.integration.test_matching_state_machine import (
    CLOCK,
    PLACES,
    answer,
    decline,
    emitted,
    envelope,
    offers_made,
)
from tests.integration.test_matching_state_machine import (
    settings as matching_settings,
)

pytestmark = pytest.mark.integration
CATEGORIES = (NeedCategory.PEER_SUPPORT, NeedCategory.HOUSING)
ZIPS = ("97214", "97202", "97206", "97230")
POINTS = tuple(PLACES[z].point for z in ZIPS)
COUNTER = itertools.count()

services = st.builds(
    ServiceSpec,
    service_id=st.just(""),
    category=st.sampled_from(CATEGORIES),
    zips=st.lists(st.sampled_from(ZIPS[:3]), max_size=2, unique=True).map(tuple),
    counties=st.sampled_from([(), ("Multnomah",), ("Clackamas",)]),
    radius_km=st.sampled_from([None, 2.0, 6.0, 15.0]),
    location=st.sampled_from(POINTS),
    languages=st.lists(
        st.sampled_from(["en", "es", "vi"]), min_size=1, max_size=2, unique=True
    ).map(tuple),
    minimum_age=st.sampled_from([None, 18, 25]),
    maximum_age=st.sampled_from([None, 24, 64]),
    gender=st.sampled_from([None, "woman", "man"]),
    mat_friendly=st.sampled_from([None, True, False]),
    insurance=st.lists(
        st.sampled_from(["medicaid", "private", "none"]), max_size=2, unique=True
    ).map(tuple),
    capacity_status=st.sampled_from([None, "capacity", "no-capacity", "waitlist"]),
    available=st.sampled_from([None, 0, 1, 2]),
).filter(lambda s: s.minimum_age is None or s.maximum_age is None or s.minimum_age <= s.maximum_age)
directories = st.lists(st.lists(services, min_size=1, max_size=2), min_size=1, max_size=6)


@dataclass
class NeedFacts:
    category: NeedCategory
    postal_code: str
    languages: tuple[str, ...]
    age: int | None
    gender: Gender | None
    mat_required: bool
    insurance: Insurance
    urgency: Urgency
    named: frozenset[int] | None  # agency positions the consent names; None: network


needs = st.builds(
    NeedFacts,
    category=st.sampled_from(CATEGORIES),
    postal_code=st.sampled_from(ZIPS),
    languages=st.lists(
        st.sampled_from(["en", "es", "vi"]), min_size=1, max_size=2, unique=True
    ).map(tuple),
    age=st.sampled_from([None, 17, 30, 70]),
    gender=st.sampled_from([None, *Gender]),
    mat_required=st.booleans(),
    insurance=st.sampled_from(list(Insurance)),
    urgency=st.sampled_from(list(Urgency)),
    named=st.one_of(st.none(), st.frozensets(st.integers(0, 5), max_size=3)),
)
# What the agencies do with each offer, in turn: accept, decline or let it expire.
answers = st.lists(st.sampled_from(["accept", "decline", "expire"]), min_size=1, max_size=8)


@dataclass
class World:
    """What the test itself knows: the specs, and offers open and accepted per service."""

    specs: dict[str, tuple[str, ServiceSpec]] = field(default_factory=dict)  # service -> agency
    held: dict[str, int] = field(default_factory=dict)
    taken: dict[str, int] = field(default_factory=dict)


def eligible(spec: ServiceSpec, agency: str, need: NeedSubmitted, world: World) -> bool:
    """The rules as stated to a worker, written out independently of matching's code."""
    free = (
        None
        if spec.available is None
        else spec.available
        - world.held.get(spec.service_id, 0)
        - world.taken.get(spec.service_id, 0)
    )
    age = need.age_years
    c = need.constraints
    return (
        spec.reaches(need.category, need.postal_code, PLACES[need.postal_code])
        and need.consent.allows_recipient(agency)
        and spec.capacity_status != "no-capacity"
        and (free is None or free > 0)
        and (spec.minimum_age is None or (age is not None and age >= spec.minimum_age))
        and (spec.maximum_age is None or (age is not None and age <= spec.maximum_age))
        and (spec.gender is None or (need.gender is not None and need.gender.value == spec.gender))
        and (not c.mat_friendly_required or spec.mat_friendly is True)
        and (not spec.insurance or c.insurance.value in spec.insurance)
        and bool(set(spec.languages) & set(need.languages))
    )


async def given_the_directory(pool: asyncpg.Pool, directory: list[list[ServiceSpec]]) -> World:
    world, run = World(), next(COUNTER)
    async with pool.acquire() as conn, conn.transaction():
        # Hypothesis runs every example against the one schema: start each from no agencies.
        await conn.execute("DELETE FROM agency_profiles")
        for a, specs in enumerate(directory):
            agency = f"ag-{run}-{a}"
            named = [
                ServiceSpec(**{**vars(s), "service_id": f"svc-{run}-{a}-{n}"})
                for n, s in enumerate(specs)
            ]
            for spec in named:
                world.specs[spec.service_id] = (agency, spec)
            await repo.apply_profile(conn, agency_profile(agency, *named))
    return world


def the_need(facts: NeedFacts, agencies: list[str]) -> NeedSubmitted:
    named = facts.named
    consent = ConsentScope.model_validate(
        {
            "consent_id": need_submitted().consent.consent_id,
            "categories": {facts.category},
            "expires_on": CLOCK.now().date() + timedelta(days=30),
            "recipients": ConsentRecipients.NETWORK if named is None else ConsentRecipients.NAMED,
            "named_agencies": {agencies[i] for i in named or () if i < len(agencies)},
        }
    )
    return need_submitted(
        facts.category,
        at=CLOCK.now(),
        urgency=facts.urgency,
        postal_code=facts.postal_code,
        languages=facts.languages,
        age_years=facts.age,
        gender=facts.gender,
        constraints=Constraints(
            mat_friendly_required=facts.mat_required, insurance=facts.insurance
        ),
        consent=consent,
    )


async def counters(pool: asyncpg.Pool, service_ids: list[str]) -> dict[str, tuple[int, int]]:
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT service_id, reserved, consumed FROM capacity_counters "
            "WHERE service_id = ANY($1::text[])",
            service_ids,
        )
        offers = await conn.fetch(
            "SELECT service_id, status FROM offers WHERE service_id = ANY($1::text[])",
            service_ids,
        )
    stored = {r["service_id"]: (r["reserved"], r["consumed"]) for r in rows}
    derived = {
        s: (
            sum(1 for o in offers if o["service_id"] == s and o["status"] == "open"),
            sum(1 for o in offers if o["service_id"] == s and o["status"] == "accepted"),
        )
        for s in service_ids
    }
    return {s: stored.get(s, (0, 0)) for s in service_ids} | {
        f"derived:{k}": v for k, v in derived.items()
    }


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(directory=directories, facts=st.lists(needs, min_size=1, max_size=3), plan=answers,
       fanout=st.sampled_from([1, 2]), batched=st.booleans())  # fmt: skip
async def test_no_offer_goes_to_an_ineligible_full_or_unconsented_agency_and_places_balance(
    matching_pool: asyncpg.Pool,
    directory: list[list[ServiceSpec]],
    facts: list[NeedFacts],
    plan: list[str],
    fanout: int,
    batched: bool,
) -> None:
    """Needs arrive one at a time or all in one batch (then every first offer is checked,
    in the batch's order, before any is answered)."""
    world = await given_the_directory(matching_pool, directory)
    agencies = sorted({agency for agency, _ in world.specs.values()})
    deps = Deps(matching_pool, CLOCK, matching_settings(urgent_fanout=fanout), PLACES)
    seen: set[str] = set()
    moves = itertools.chain(plan, itertools.repeat("decline"))
    the_needs = [the_need(f, agencies) for f in facts]
    if batched:
        await handle_needs_submitted(deps, [Delivery(envelope(need)) for need in the_needs])
        for need in the_needs:
            await _check_new_offers(deps, need, world, seen)

    for need in the_needs:
        if not batched:
            await handle_need_submitted(deps, envelope(need))
            await _check_new_offers(deps, need, world, seen)
        while open_now := await _open(deps.pool, need.need_id):
            offers = {o["offer_id"]: o for o in offers_made(await emitted(deps.pool, need.need_id))}
            await _answer(deps, offers[min(open_now)], next(moves), world)
            await _check_new_offers(deps, need, world, seen)

    balance = await counters(matching_pool, sorted(world.specs))
    for service in world.specs:
        assert balance[service] == balance[f"derived:{service}"]
        assert balance[service] == (world.held.get(service, 0), world.taken.get(service, 0))


async def _check_new_offers(deps: Deps, need: NeedSubmitted, world: World, seen: set[str]) -> None:
    for offer in offers_made(await emitted(deps.pool, need.need_id)):
        if offer["offer_id"] in seen:
            continue
        agency, spec = world.specs[offer["service_id"]]
        assert offer["agency_id"] == agency
        assert eligible(spec, agency, need, world), (offer["explanation"], spec, need)
        seen.add(offer["offer_id"])
        world.held[spec.service_id] = world.held.get(spec.service_id, 0) + 1


async def _open(pool: asyncpg.Pool, need_id: Any) -> set[str]:
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT offer_id FROM offers WHERE need_id = $1 AND status = 'open'", need_id
        )
    return {str(r["offer_id"]) for r in rows}


async def _answer(deps: Deps, offer: dict[str, Any], move: str, world: World) -> None:
    """Answer one offer, then book what closed: each closed offer's place is released, and
    the accepted one's taken."""
    before = await _open(deps.pool, offer["need_id"])
    if move == "accept":
        await handle_offer_response(deps, answer(OfferAccepted, offer))
    elif move == "decline":
        await handle_offer_response(deps, decline(offer))
    else:
        await handle_offer_response(deps, answer(OfferExpired, offer))
    async with deps.pool.acquire() as conn:
        closed = await conn.fetch(
            "SELECT service_id, status FROM offers WHERE offer_id = ANY($1::uuid[]) "
            "AND status <> 'open'",
            list(before),
        )
    for row in closed:
        world.held[row["service_id"]] -= 1
        if row["status"] == "accepted":
            world.taken[row["service_id"]] = world.taken.get(row["service_id"], 0) + 1
