"""The referral state machine on real Postgres: ask agencies in turn until one accepts,
fan an urgent need out, refuse a late acceptance, keep every place counted, and close the
loop on the accepting agency's reported outcome."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest
import pytest_asyncio

from services.matching import repository as repo
from services.matching.geo import load_centroids
from services.matching.handlers import (
    MAX_LISTED_EXCLUSIONS,
    Deps,
    handle_agency_profile,
    handle_agency_removed,
    handle_capacity_update,
    handle_need_submitted,
    handle_needs_submitted,
    handle_offer_response,
    listed_exclusions,
)
from services.matching.settings import MatchingSettings
from shared.clock import ManualClock
from shared.cloudevents import MAX_VALUE_BYTES, Envelope, PoisonMessage
from shared.db import create_pool
from shared.events import (
    CapacityStatus,
    CapacityUpdated,
    DeclineReason,
    Event,
    ExcludedAgency,
    NeedCategory,
    NeedSubmitted,
    OfferAccepted,
    OfferDeclined,
    OfferExpired,
    Outcome,
    OutcomeReported,
    Urgency,
)
from shared.hsds import AgencyProfile
from shared.infra import Infrastructure
from shared.kafka import Delivery
from tests.factories import ServiceSpec, agency_profile, need_submitted

pytestmark = pytest.mark.integration
CLOCK = ManualClock(datetime(2026, 11, 21, 17, 0, tzinfo=UTC))
PLACES = load_centroids()
LAT, LON = PLACES["97214"].point
AGENCIES = ["ag-near", "ag-wide", "ag-wider"]


def settings(**overrides: Any) -> MatchingSettings:
    return MatchingSettings(
        database_url="postgresql://unused", kafka_bootstrap_servers="unused", **overrides
    )


def envelope(event: Event) -> Envelope:
    return Envelope(str(uuid4()), "/tests", event.ce_type, CLOCK.now(), 1, event)


def the_three_agencies() -> list[AgencyProfile]:
    """Three peer groups serving ZIP 97214, nearer to farther from its centroid."""
    return [
        agency_profile(
            agency,
            ServiceSpec(f"svc-{agency}", location=(LAT + km / 111, LON), mat_friendly=True),
        )
        for agency, km in zip(AGENCIES, (0, 3, 8), strict=True)
    ]


async def given_a_directory(pool: asyncpg.Pool, *profiles: AgencyProfile) -> None:
    async with pool.acquire() as conn, conn.transaction():
        for profile in profiles or the_three_agencies():
            await repo.apply_profile(conn, profile)


def a_need(category: NeedCategory = NeedCategory.PEER_SUPPORT, **changes: Any) -> NeedSubmitted:
    return need_submitted(category, at=CLOCK.now(), **{"urgency": Urgency.URGENT, **changes})


async def emitted(pool: asyncpg.Pool, need_id: UUID) -> list[tuple[str, Any]]:
    """(topic, payload) of everything matching put in its outbox for this need, in order."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT topic, value FROM outbox WHERE key = $1 ORDER BY id", str(need_id)
        )
    return [(r["topic"], json.loads(r["value"])) for r in rows]


def statuses(events: list[tuple[str, Any]]) -> list[str]:
    return [p["status"] for t, p in events if t == "refnet.referral-events.v1"]


def offers_made(events: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    return [p for t, p in events if t.startswith("refnet.agency.") and "attempt" in p]


def last_offer(events: list[tuple[str, Any]]) -> dict[str, Any]:
    return offers_made(events)[-1]


def on_agency_topics(events: list[tuple[str, Any]], kind: str) -> list[dict[str, Any]]:
    """Withdrawals ("reason" without "attempt") or refusals, by a word in their reason."""
    return [
        p
        for t, p in events
        if t.startswith("refnet.agency.") and "attempt" not in p and kind in p["reason"]
    ]


def answer(kind: type, offer: dict[str, Any], **extra: Any) -> Envelope:
    ids = {"offer_id": offer["offer_id"], "need_id": offer["need_id"]}
    at: dict[type, str] = {
        OfferAccepted: "accepted_at",
        OfferDeclined: "declined_at",
        OfferExpired: "expired_at",
        OutcomeReported: "reported_at",
    }
    return envelope(kind(**ids, agency_id=offer["agency_id"], **{at[kind]: CLOCK.now()}, **extra))


def decline(offer: dict[str, Any]) -> Envelope:
    return answer(OfferDeclined, offer, reason=DeclineReason.NO_CAPACITY)


def report(offer: dict[str, Any], outcome: Outcome) -> Envelope:
    return answer(OutcomeReported, offer, outcome=outcome)


@pytest_asyncio.fixture(loop_scope="session")
async def deps(matching_pool: asyncpg.Pool) -> Deps:
    """Matching's dependencies over a directory of three peer-support agencies."""
    await given_a_directory(matching_pool)
    return Deps(matching_pool, CLOCK, settings(), PLACES)


async def test_a_need_is_offered_to_the_best_agency_with_a_deadline_and_the_reasons(
    deps: Deps,
) -> None:
    need = a_need()

    await handle_need_submitted(deps, envelope(need))

    events = await emitted(deps.pool, need.need_id)
    assert statuses(events) == ["submitted", "offered"]
    offer = last_offer(events)
    assert (offer["agency_id"], offer["service_id"]) == ("ag-near", "svc-ag-near")
    assert offer["respond_by"].startswith("2026-11-21T19:00")  # urgent: two hours
    factors = {f["name"]: f["value"] for f in offer["explanation"]}
    assert factors["service_area"] == "serves ZIP 97214"
    assert factors["distance"] == "0.0 km"
    assert offer["score"] == round(sum(f["points"] for f in offer["explanation"]), 2)


async def test_declined_and_expired_offers_go_to_the_next_agency_in_rank_order(
    deps: Deps,
) -> None:
    need = a_need()
    await handle_need_submitted(deps, envelope(need))

    first = last_offer(await emitted(deps.pool, need.need_id))
    await handle_offer_response(deps, decline(first))
    second = last_offer(await emitted(deps.pool, need.need_id))
    await handle_offer_response(deps, answer(OfferExpired, second))
    third = last_offer(await emitted(deps.pool, need.need_id))
    await handle_offer_response(deps, answer(OfferDeclined, third, reason=DeclineReason.OTHER))

    events = await emitted(deps.pool, need.need_id)
    assert [first["agency_id"], second["agency_id"], third["agency_id"]] == AGENCIES
    assert statuses(events) == [
        "submitted", "offered", "declined", "offered", "expired", "offered", "declined",
        "unmatched",
    ]  # fmt: skip
    unmatched = [p for t, p in events if p.get("status") == "unmatched"][0]
    assert {e["agency_id"]: e["reason"] for e in unmatched["excluded"]} == {
        agency: "already offered this need" for agency in AGENCIES
    }
    expired = on_agency_topics(events, "expired")
    assert [w["agency_id"] for w in expired] == ["ag-wide"], "the expired offer is withdrawn"


async def test_attempts_are_capped_then_the_need_is_unmatched(deps: Deps) -> None:
    deps = Deps(deps.pool, CLOCK, settings(max_offer_attempts=2), PLACES)
    need = a_need()
    await handle_need_submitted(deps, envelope(need))

    for _ in range(2):
        await handle_offer_response(
            deps, decline(last_offer(await emitted(deps.pool, need.need_id)))
        )

    events = await emitted(deps.pool, need.need_id)
    assert len(offers_made(events)) == 2
    assert [p["reason"] for t, p in events if p.get("status") == "unmatched"] == [
        "2 offers made, none accepted"
    ]


async def test_a_repeated_need_or_answer_makes_no_second_offer(deps: Deps) -> None:
    need = a_need()
    await handle_need_submitted(deps, envelope(need))
    offer = last_offer(await emitted(deps.pool, need.need_id))
    accepted = answer(OfferAccepted, offer)

    await handle_offer_response(deps, accepted)
    await handle_offer_response(deps, accepted)  # the same event redelivered
    await handle_offer_response(deps, envelope(accepted.event))  # the same answer, new event id
    await handle_need_submitted(deps, envelope(need))  # the need itself re-sent

    events = await emitted(deps.pool, need.need_id)
    assert statuses(events) == ["submitted", "offered", "accepted"]
    assert len(offers_made(events)) == 1


async def test_an_acceptance_after_the_deadline_is_refused_and_the_need_moves_on(
    deps: Deps,
) -> None:
    clock = ManualClock(CLOCK.now())
    deps = Deps(deps.pool, clock, settings(), PLACES)
    need = a_need()
    await handle_need_submitted(deps, envelope(need))
    offer = last_offer(await emitted(deps.pool, need.need_id))

    clock.advance(timedelta(hours=2, minutes=1))
    await handle_offer_response(deps, answer(OfferAccepted, offer))
    await handle_offer_response(deps, answer(OfferExpired, offer))  # notifications' own, later

    events = await emitted(deps.pool, need.need_id)
    assert statuses(events) == ["submitted", "offered", "expired", "offered"]
    assert [r["reason"] for r in on_agency_topics(events, "after the deadline")] == [
        "expired: the acceptance came after the deadline"
    ]
    assert last_offer(events)["agency_id"] == "ag-wide"


async def test_an_answer_to_an_offer_never_made_or_made_to_another_agency_is_poison(
    deps: Deps,
) -> None:
    need = a_need()
    await handle_need_submitted(deps, envelope(need))
    offer = last_offer(await emitted(deps.pool, need.need_id))
    forged = {**offer, "agency_id": "ag-wide"}
    stray = {**offer, "offer_id": str(uuid4())}

    with pytest.raises(PoisonMessage, match="was made to ag-near, not ag-wide"):
        await handle_offer_response(deps, answer(OfferAccepted, forged))
    with pytest.raises(PoisonMessage, match="no offer"):
        await handle_offer_response(deps, answer(OfferAccepted, stray))


async def test_a_need_no_agency_serves_is_unmatched_at_once_saying_so(deps: Deps) -> None:
    need = a_need(NeedCategory.CHILD_CARE)

    await handle_need_submitted(deps, envelope(need))

    events = await emitted(deps.pool, need.need_id)
    assert statuses(events) == ["submitted", "unmatched"]
    assert [p["reason"] for t, p in events if p.get("status") == "unmatched"] == [
        "no agency in the directory offers Child care in ZIP 97214 or Multnomah County"
    ]


async def test_an_unmatched_need_lists_a_bounded_number_of_exclusions_and_counts_the_rest(
    deps: Deps,
) -> None:
    """Where more full services reach a need than an event can list, the unmatched event
    lists the first MAX_LISTED_EXCLUSIONS and its reason counts the others, rather than
    growing past what readers accept and being refused."""
    full = MAX_LISTED_EXCLUSIONS + 20
    await given_a_directory(
        deps.pool,
        *(
            agency_profile(
                f"ag-full-{i:04d}",
                ServiceSpec(
                    f"svc-full-{i:04d}", NeedCategory.HOUSING, capacity_status="no-capacity"
                ),
            )
            for i in range(full)
        ),
    )
    need = a_need(NeedCategory.HOUSING)

    await handle_need_submitted(deps, envelope(need))

    events = await emitted(deps.pool, need.need_id)
    assert statuses(events) == ["submitted", "unmatched"]
    (unmatched,) = [p for t, p in events if p.get("status") == "unmatched"]
    assert (
        unmatched["reason"] == "no eligible agency left (20 more services left out are not listed)"
    )
    listed = [e["agency_id"] for e in unmatched["excluded"]]
    assert listed == [f"ag-full-{i:04d}" for i in range(MAX_LISTED_EXCLUSIONS)]
    assert {e["reason"] for e in unmatched["excluded"]} == {"reports no capacity"}


def test_long_exclusions_are_listed_within_half_what_readers_accept() -> None:
    """Service ids have no length limit, so the count alone does not bound the event."""
    long = [
        ExcludedAgency(agency_id=f"ag-{i:04d}", service_id=f"svc-{i:04d}-" + "x" * 400, reason="r")
        for i in range(MAX_LISTED_EXCLUSIONS)
    ]
    listed = listed_exclusions(long)
    size = sum(len(e.model_dump_json()) + 1 for e in listed)
    assert 0 < len(listed) < MAX_LISTED_EXCLUSIONS
    assert size <= MAX_VALUE_BYTES // 2 < size + len(long[len(listed)].model_dump_json()) + 1
    assert listed == tuple(long[: len(listed)])


async def test_an_urgent_need_fans_out_and_the_first_acceptance_wins(deps: Deps) -> None:
    deps = Deps(deps.pool, CLOCK, settings(urgent_fanout=2), PLACES)
    need = a_need()
    await handle_need_submitted(deps, envelope(need))
    first, second = offers_made(await emitted(deps.pool, need.need_id))

    await handle_offer_response(deps, answer(OfferAccepted, second))
    await handle_offer_response(deps, answer(OfferAccepted, first))  # too late

    events = await emitted(deps.pool, need.need_id)
    assert [o["agency_id"] for o in (first, second)] == ["ag-near", "ag-wide"]
    assert statuses(events) == ["submitted", "offered", "offered", "accepted"]
    assert [w["agency_id"] for w in on_agency_topics(events, "placed with another")] == ["ag-near"]
    assert [(r["agency_id"], r["reason"]) for r in on_agency_topics(events, "already placed")] == [
        ("ag-near", "already placed: another agency accepted this referral first")
    ]


async def test_a_decline_in_a_fan_out_leaves_the_others_open(deps: Deps) -> None:
    deps = Deps(deps.pool, CLOCK, settings(urgent_fanout=2), PLACES)
    need = a_need()
    await handle_need_submitted(deps, envelope(need))
    first, second = offers_made(await emitted(deps.pool, need.need_id))

    await handle_offer_response(deps, decline(first))
    events = await emitted(deps.pool, need.need_id)
    assert statuses(events)[-2:] == ["declined", "offered"]
    assert len(offers_made(events)) == 2, "no new offer while one is still open"

    await handle_offer_response(deps, decline(second))
    events = await emitted(deps.pool, need.need_id)
    assert [o["agency_id"] for o in offers_made(events)] == AGENCIES


async def an_accepted_referral(deps: Deps) -> tuple[NeedSubmitted, dict[str, Any]]:
    need = a_need()
    await handle_need_submitted(deps, envelope(need))
    offer = last_offer(await emitted(deps.pool, need.need_id))
    await handle_offer_response(deps, answer(OfferAccepted, offer))
    return need, offer


def the_last_change(events: list[tuple[str, Any]]) -> dict[str, Any]:
    changes: list[dict[str, Any]] = [p for t, p in events if t == "refnet.referral-events.v1"]
    return changes[-1]


async def test_the_accepting_agency_reports_got_help_and_the_referral_is_completed(
    deps: Deps,
) -> None:
    need, offer = await an_accepted_referral(deps)
    places = await capacity_of(deps.pool, offer["service_id"])

    await handle_offer_response(deps, report(offer, Outcome.GOT_HELP))

    events = await emitted(deps.pool, need.need_id)
    assert statuses(events) == ["submitted", "offered", "accepted", "completed"]
    completed = the_last_change(events)
    assert (completed["agency_id"], completed["offer_id"]) == ("ag-near", offer["offer_id"])
    assert completed["reason"] is None
    assert await capacity_of(deps.pool, offer["service_id"]) == places, "no place given back"


async def test_any_other_outcome_fails_the_referral_with_it_as_the_reason(deps: Deps) -> None:
    need, offer = await an_accepted_referral(deps)

    await handle_offer_response(deps, report(offer, Outcome.COULDNT_CONTACT))

    events = await emitted(deps.pool, need.need_id)
    assert statuses(events) == ["submitted", "offered", "accepted", "failed"]
    assert the_last_change(events)["reason"] == "couldnt-contact"


async def test_a_repeated_or_late_outcome_changes_nothing(deps: Deps) -> None:
    need, offer = await an_accepted_referral(deps)
    got_help = report(offer, Outcome.GOT_HELP)

    await handle_offer_response(deps, got_help)
    await handle_offer_response(deps, got_help)  # the same event redelivered
    await handle_offer_response(deps, envelope(got_help.event))  # the same outcome, new event id
    await handle_offer_response(deps, report(offer, Outcome.REFERRED_ELSEWHERE))  # a change of mind

    events = await emitted(deps.pool, need.need_id)
    assert statuses(events) == ["submitted", "offered", "accepted", "completed"]


async def test_an_outcome_for_a_declined_offer_of_the_need_changes_nothing(deps: Deps) -> None:
    need = a_need()
    await handle_need_submitted(deps, envelope(need))
    declined = last_offer(await emitted(deps.pool, need.need_id))
    await handle_offer_response(deps, decline(declined))
    accepted = last_offer(await emitted(deps.pool, need.need_id))
    await handle_offer_response(deps, answer(OfferAccepted, accepted))

    await handle_offer_response(deps, report(declined, Outcome.NOT_ELIGIBLE))

    events = await emitted(deps.pool, need.need_id)
    assert [declined["agency_id"], accepted["agency_id"]] == ["ag-near", "ag-wide"]
    assert statuses(events) == ["submitted", "offered", "declined", "offered", "accepted"]


async def test_an_outcome_for_an_offer_never_accepted_changes_nothing(deps: Deps) -> None:
    need = a_need()
    await handle_need_submitted(deps, envelope(need))
    offer = last_offer(await emitted(deps.pool, need.need_id))

    await handle_offer_response(deps, report(offer, Outcome.GOT_HELP))

    events = await emitted(deps.pool, need.need_id)
    assert statuses(events) == ["submitted", "offered"]
    await handle_offer_response(deps, answer(OfferAccepted, offer))  # it can still be taken
    assert statuses(await emitted(deps.pool, need.need_id))[-1] == "accepted"


async def capacity_of(pool: asyncpg.Pool, service_id: str) -> tuple[int, int]:
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT reserved, consumed FROM capacity_counters WHERE service_id = $1", service_id
        )
    return (row["reserved"], row["consumed"]) if row else (0, 0)


async def test_an_open_offer_holds_a_place_and_a_full_service_gets_nothing(
    matching_pool: asyncpg.Pool,
) -> None:
    two_places = agency_profile("ag-small", ServiceSpec("svc-small", available=2))
    other = agency_profile("ag-other", ServiceSpec("svc-other", location=(LAT + 0.1, LON)))
    await given_a_directory(matching_pool, two_places, other)
    deps = Deps(matching_pool, CLOCK, settings(), PLACES)
    needs = [a_need() for _ in range(3)]

    for need in needs:
        await handle_need_submitted(deps, envelope(need))

    agencies = [last_offer(await emitted(deps.pool, n.need_id))["agency_id"] for n in needs]
    assert agencies == ["ag-small", "ag-small", "ag-other"]
    assert await capacity_of(matching_pool, "svc-small") == (2, 0)

    await handle_offer_response(
        deps, decline(last_offer(await emitted(deps.pool, needs[0].need_id)))
    )
    assert await capacity_of(matching_pool, "svc-small") == (1, 0)
    await handle_offer_response(
        deps, answer(OfferAccepted, last_offer(await emitted(deps.pool, needs[1].need_id)))
    )
    assert await capacity_of(matching_pool, "svc-small") == (0, 1)


async def test_place_changes_add_to_counters_and_a_new_counter_starts_at_zero(
    matching_pool: asyncpg.Pool,
) -> None:
    await given_a_directory(matching_pool)
    async with matching_pool.acquire() as conn, conn.transaction():
        await repo.write_step(
            conn,
            offers=[],
            places={"svc-ag-near": repo.PlaceChange(reserved=2)},
            referrals=[],
            events=[],
        )
    async with matching_pool.acquire() as conn, conn.transaction():
        # a release from a service whose counters are not there yet records none below 0
        await repo.write_step(
            conn,
            offers=[],
            places={
                "svc-ag-near": repo.PlaceChange(reserved=-1, consumed=1),
                "svc-not-counted-yet": repo.PlaceChange(reserved=-1, consumed=1),
            },
            referrals=[],
            events=[],
        )

    assert await capacity_of(matching_pool, "svc-ag-near") == (1, 1)
    assert await capacity_of(matching_pool, "svc-not-counted-yet") == (0, 1)


async def test_a_batch_of_needs_costs_the_same_few_statements_whatever_its_size(
    infra: Infrastructure, deps: Deps
) -> None:
    """Round trips cost more than the work they carry, so a batch's statements do not grow
    with its needs: its reads, then every write in one statement."""
    async with deps.pool.acquire() as conn:
        schema = await conn.fetchval("SELECT current_schema()")
    pool = await create_pool(infra.database_url, schema, max_size=1)  # the connection watched
    sent: list[str] = []

    def note(query: Any) -> None:
        sent.append(query.query)

    try:
        async with pool.acquire() as conn:
            conn.add_query_logger(note)
        counts = []
        for size in (1, 1, 5):  # the first also has asyncpg look up the types it meets
            sent.clear()
            needs = [Delivery(envelope(a_need())) for _ in range(size)]
            await handle_needs_submitted(dataclasses.replace(deps, pool=pool), needs)
            assert [q for q in sent if "INSERT INTO offers" in q] == [sent[-2]]
            counts.append(len(sent))
    finally:
        await pool.close()

    assert counts[1] == counts[2] <= 9, sent  # BEGIN, 6 reads and inserts, the writes, COMMIT


async def test_needs_in_one_batch_see_the_places_taken_earlier_in_it(
    matching_pool: asyncpg.Pool,
) -> None:
    """The same three needs as above, handled together: the third sees the two places the
    first two took, though none of them is written until the batch commits."""
    two_places = agency_profile("ag-small", ServiceSpec("svc-small", available=2))
    other = agency_profile("ag-other", ServiceSpec("svc-other", location=(LAT + 0.1, LON)))
    await given_a_directory(matching_pool, two_places, other)
    deps = Deps(matching_pool, CLOCK, settings(), PLACES)
    needs = [a_need() for _ in range(3)]

    await handle_needs_submitted(deps, [Delivery(envelope(n)) for n in needs])

    agencies = [last_offer(await emitted(deps.pool, n.need_id))["agency_id"] for n in needs]
    assert agencies == ["ag-small", "ag-small", "ag-other"]
    assert await capacity_of(matching_pool, "svc-small") == (2, 0)
    assert await capacity_of(matching_pool, "svc-other") == (1, 0)
    for need in needs:
        assert statuses(await emitted(deps.pool, need.need_id)) == ["submitted", "offered"]


async def test_a_repeat_inside_a_batch_or_after_it_makes_no_second_offer(deps: Deps) -> None:
    need = a_need()
    first = envelope(need)
    resent = envelope(need)  # the same need under a new event id, as a second producer would

    await handle_needs_submitted(deps, [Delivery(first), Delivery(first), Delivery(resent)])
    await handle_needs_submitted(deps, [Delivery(resent), Delivery(first)])

    events = await emitted(deps.pool, need.need_id)
    assert statuses(events) == ["submitted", "offered"]
    assert len(offers_made(events)) == 1
    assert await capacity_of(deps.pool, "svc-ag-near") == (1, 0)


async def test_an_agency_reports_no_capacity_and_then_room_again(
    matching_pool: asyncpg.Pool,
) -> None:
    """The report goes through the directory's owner, which republishes the profile; matching
    applies the profile as it would from the topic."""
    await given_a_directory(matching_pool)
    async with matching_pool.acquire() as conn, conn.transaction():
        await _import(conn, the_three_agencies())
    deps = Deps(matching_pool, CLOCK, settings(), PLACES)

    await _report(deps, "ag-near", "svc-ag-near", CapacityStatus.NO_CAPACITY, None)
    full = a_need()
    await handle_need_submitted(deps, envelope(full))
    await _report(deps, "ag-near", "svc-ag-near", CapacityStatus.CAPACITY, 4)
    room = a_need()
    await handle_need_submitted(deps, envelope(room))

    assert last_offer(await emitted(deps.pool, full.need_id))["agency_id"] == "ag-wide"
    offer = last_offer(await emitted(deps.pool, room.need_id))
    assert offer["agency_id"] == "ag-near"
    capacity = {f["name"]: f["value"] for f in offer["explanation"]}["capacity"]
    assert capacity == "4 place(s) free"


async def test_a_capacity_report_for_another_agencys_service_is_poison(
    matching_pool: asyncpg.Pool,
) -> None:
    async with matching_pool.acquire() as conn, conn.transaction():
        await _import(conn, the_three_agencies())
    deps = Deps(matching_pool, CLOCK, settings(), PLACES)

    with pytest.raises(PoisonMessage, match="agency ag-wide has no service svc-ag-near"):
        await _report(deps, "ag-wide", "svc-ag-near", CapacityStatus.NO_CAPACITY, None)


async def test_a_stale_profile_is_ignored_and_a_tombstone_removes_the_agency(
    matching_pool: asyncpg.Pool,
) -> None:
    deps = Deps(matching_pool, CLOCK, settings(), PLACES)
    newer = agency_profile("ag-a", ServiceSpec("svc-a", languages=("es",)), revision=5)
    older = agency_profile("ag-a", ServiceSpec("svc-a", languages=("en",)), revision=4)

    await handle_agency_profile(deps, envelope(newer))
    await handle_agency_profile(deps, envelope(older))
    async with matching_pool.acquire() as conn:
        kept = await conn.fetchval(
            "SELECT languages FROM match_services WHERE service_id = 'svc-a'"
        )
    await handle_agency_removed(deps, "ag-a")
    async with matching_pool.acquire() as conn:
        left = await conn.fetchval("SELECT count(*) FROM match_services")

    assert kept == ["es"]
    assert left == 0


async def _import(conn: asyncpg.Connection, profiles: list[AgencyProfile]) -> None:
    """Make the directory's owner hold these agencies, as `refnet directory import` would."""
    from services.matching.directory import owner
    from services.matching.directory.package import DirectoryPackage
    from shared.hsds import PROFILE_FIELDS, TABLES

    rows: dict[str, list[Any]] = {model.table: [] for model in TABLES}
    for profile in profiles:
        rows["organization"].append(profile.organization)
        for table, field in PROFILE_FIELDS.items():
            seen = {r.id for r in rows[table]}
            rows[table] += [r for r in getattr(profile, field) if r.id not in seen]
    package = DirectoryPackage(rows={t: tuple(r) for t, r in rows.items()}, metadata={})
    await owner.import_package(conn, package, CLOCK)


async def _report(
    deps: Deps, agency: str, service: str, status: CapacityStatus, available: int | None
) -> None:
    """An agency's capacity report, and the profile it republishes applied by matching."""
    update = CapacityUpdated(
        agency_id=agency, service_id=service, status=status, available=available,
        updated_at=CLOCK.now(),
    )  # fmt: skip
    await handle_capacity_update(deps, envelope(update))
    async with deps.pool.acquire() as conn:
        value = await conn.fetchval(
            "SELECT value FROM outbox WHERE topic = 'refnet.agencies.v1' AND key = $1 "
            "ORDER BY id DESC LIMIT 1",
            agency,
        )
    await handle_agency_profile(deps, envelope(AgencyProfile.model_validate_json(value)))
