"""The referral state machine on real Postgres: ask agencies in turn until one accepts."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest
import pytest_asyncio

from services.matching import repository as repo
from services.matching.directory import Agency, AgencyService
from services.matching.handlers import Deps, handle_need_submitted, handle_offer_response
from services.matching.settings import MatchingSettings
from shared.clock import ManualClock
from shared.cloudevents import Envelope, PoisonMessage
from shared.events import (
    DeclineReason,
    Event,
    NeedCategory,
    NeedSubmitted,
    OfferAccepted,
    OfferDeclined,
    OfferExpired,
    Urgency,
)
from tests.factories import need_submitted

pytestmark = pytest.mark.integration
CLOCK = ManualClock(datetime(2026, 11, 21, 9, 0, tzinfo=UTC))
AGENCIES = ["ag-near", "ag-wide", "ag-wider"]


def settings() -> MatchingSettings:
    return MatchingSettings(database_url="postgresql://unused", kafka_bootstrap_servers="unused")


def envelope(event: Event) -> Envelope:
    return Envelope(str(uuid4()), "/tests", event.ce_type, CLOCK.now(), 1, event)


async def given_a_directory(pool: asyncpg.Pool) -> None:
    zips = {
        "ag-near": {"97214"},
        "ag-wide": {"97214", "97202"},
        "ag-wider": {"97214", "97202", "97206"},
    }
    async with pool.acquire() as conn:
        await repo.replace_directory(
            conn,
            [Agency(a, a.title(), None) for a in AGENCIES],
            [
                AgencyService(
                    f"svc-{a}",
                    a,
                    "Peer group",
                    NeedCategory.PEER_SUPPORT,
                    frozenset(z),
                    frozenset({"en"}),
                )
                for a, z in zips.items()
            ],
        )


def a_need(category: NeedCategory = NeedCategory.PEER_SUPPORT) -> NeedSubmitted:
    return need_submitted(category, at=CLOCK.now(), urgency=Urgency.URGENT)


async def emitted(pool: asyncpg.Pool, need_id: UUID) -> list[tuple[str, Any]]:
    """(topic, payload) of everything matching put in its outbox for this need, in order."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT topic, value FROM outbox WHERE key = $1 ORDER BY id", str(need_id)
        )
    import json

    return [(r["topic"], json.loads(r["value"])) for r in rows]


def statuses(events: list[tuple[str, Any]]) -> list[str]:
    return [p["status"] for t, p in events if t == "refnet.referral-events.v1"]


def last_offer(events: list[tuple[str, Any]]) -> dict[str, Any]:
    return [p for t, p in events if t.startswith("refnet.agency.") and "attempt" in p][-1]


@pytest_asyncio.fixture(loop_scope="session")
async def deps(matching_pool: asyncpg.Pool) -> Deps:
    """Matching's dependencies over a directory of three peer-support agencies."""
    await given_a_directory(matching_pool)
    return Deps(matching_pool, CLOCK, settings())


async def test_a_need_is_offered_to_the_most_local_agency_with_a_deadline(
    deps: Deps,
) -> None:
    need = a_need()

    await handle_need_submitted(deps, envelope(need))

    events = await emitted(deps.pool, need.need_id)
    assert statuses(events) == ["submitted", "offered"]
    offer = last_offer(events)
    assert offer["agency_id"] == "ag-near"
    assert offer["respond_by"].startswith("2026-11-21T11:00")  # urgent: two hours


async def test_declined_and_expired_offers_go_to_the_next_agency_then_unmatched(
    deps: Deps,
) -> None:
    need = a_need()
    await handle_need_submitted(deps, envelope(need))

    def answer(kind: type, offer: dict[str, Any], **extra: Any) -> Envelope:
        ids = {
            "offer_id": offer["offer_id"],
            "need_id": need.need_id,
            "agency_id": offer["agency_id"],
        }
        return envelope(kind(**ids, **extra))

    first = last_offer(await emitted(deps.pool, need.need_id))
    await handle_offer_response(
        deps,
        answer(OfferDeclined, first, reason=DeclineReason.NO_CAPACITY, declined_at=CLOCK.now()),
    )
    second = last_offer(await emitted(deps.pool, need.need_id))
    await handle_offer_response(deps, answer(OfferExpired, second, expired_at=CLOCK.now()))
    third = last_offer(await emitted(deps.pool, need.need_id))
    await handle_offer_response(
        deps, answer(OfferDeclined, third, reason=DeclineReason.OTHER, declined_at=CLOCK.now())
    )

    events = await emitted(deps.pool, need.need_id)
    assert [first["agency_id"], second["agency_id"], third["agency_id"]] == AGENCIES
    assert statuses(events) == [
        "submitted",
        "offered",
        "declined",
        "offered",
        "expired",
        "offered",
        "declined",
        "unmatched",
    ]
    unmatched = [p for t, p in events if p.get("status") == "unmatched"][0]
    assert {e["agency_id"] for e in unmatched["excluded"]} == set(AGENCIES)
    withdrawn = [p for t, p in events if "reason" in p and t.startswith("refnet.agency.")]
    assert [w["agency_id"] for w in withdrawn] == ["ag-wide"], "the expired offer is withdrawn"


async def test_a_late_or_repeated_answer_changes_nothing(
    deps: Deps,
) -> None:
    need = a_need()
    await handle_need_submitted(deps, envelope(need))
    offer = last_offer(await emitted(deps.pool, need.need_id))
    accepted = envelope(
        OfferAccepted(
            offer_id=offer["offer_id"],
            need_id=need.need_id,
            agency_id=offer["agency_id"],
            accepted_at=CLOCK.now(),
        )
    )

    await handle_offer_response(deps, accepted)
    await handle_offer_response(deps, accepted)  # the same event redelivered
    await handle_offer_response(deps, envelope(accepted.event))  # the same answer, new event id
    await handle_need_submitted(deps, envelope(need))  # the need itself re-sent

    assert statuses(await emitted(deps.pool, need.need_id)) == [
        "submitted",
        "offered",
        "accepted",
    ]


async def test_an_answer_for_an_unknown_need_is_poison(
    deps: Deps,
) -> None:
    deps = Deps(deps.pool, CLOCK, settings())
    stray = OfferAccepted(
        offer_id=uuid4(), need_id=uuid4(), agency_id="ag-near", accepted_at=CLOCK.now()
    )
    with pytest.raises(PoisonMessage, match="no referral"):
        await handle_offer_response(deps, envelope(stray))


async def test_a_need_with_no_agency_in_its_category_is_unmatched_at_once(
    deps: Deps,
) -> None:
    need = a_need(NeedCategory.CHILD_CARE)
    await handle_need_submitted(deps, envelope(need))
    assert statuses(await emitted(deps.pool, need.need_id)) == ["submitted", "unmatched"]
