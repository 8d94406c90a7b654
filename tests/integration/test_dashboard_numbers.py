"""The operator dashboard's numbers on a real Postgres, from intake's own tables: every
status change intake hears of is kept (out of order too), and the funnel, time to accept and
agencies' response times and acceptance rates are computed from that history."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import asyncpg
import pytest

from services.intake import dashboard
from services.intake import repository as repo
from services.intake.handlers import Crypto, Submitted, record_referral_status, submit_intake
from services.intake.models import IntakeRequest
from shared.clock import ManualClock
from shared.cloudevents import Envelope
from shared.events import ReferralStatus, ReferralStatusChanged
from tests.factories import intake_request

pytestmark = pytest.mark.integration
NOW = datetime(2026, 11, 21, 15, 0, tzinfo=UTC)
S = ReferralStatus


async def submitted_needs(
    pool: asyncpg.Pool, crypto: Crypto, worker: asyncpg.Record, at: datetime
) -> list[UUID]:
    """A new person's intake (two needs) submitted at ``at``; its need ids in form order."""
    request = IntakeRequest.model_validate(intake_request(at.date(), new_person=True))
    outcome = await submit_intake(pool, crypto, ManualClock(at), worker, request)
    assert isinstance(outcome, Submitted)
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT need_id FROM needs WHERE intake_id = $1 ORDER BY position", outcome.intake_id
        )
    return [row["need_id"] for row in rows]


async def hear(
    pool: asyncpg.Pool,
    need_id: UUID,
    sequence: int,
    status: ReferralStatus,
    at: datetime,
    agency: str | None = None,
    offer: UUID | None = None,
) -> None:
    """Deliver one ReferralStatusChanged to intake's consumer, as Kafka would."""
    change = ReferralStatusChanged(
        need_id=need_id,
        status=status,
        sequence=sequence,
        occurred_at=at,
        agency_id=agency,
        agency_name=f"Agency {agency}" if agency else None,
        offer_id=offer,
    )
    envelope = Envelope(str(uuid4()), "/refnet/matching", change.ce_type, at, 1, change)
    await record_referral_status(pool, envelope)


async def test_the_funnel_time_to_accept_and_agency_answers_come_from_the_history(
    intake_pool: asyncpg.Pool, crypto: Crypto, worker: asyncpg.Record
) -> None:
    # Given two needs submitted ten days ago: one declined by ag-001 then accepted by ag-002
    # and completed; one left to expire by ag-001 and then unmatched
    t0 = NOW - timedelta(days=10)
    first, second = await submitted_needs(intake_pool, crypto, worker, t0)
    o1, o2, o3 = uuid4(), uuid4(), uuid4()
    minute, hour = timedelta(minutes=1), timedelta(hours=1)
    await hear(intake_pool, first, 1, S.SUBMITTED, t0 + minute)
    await hear(intake_pool, first, 2, S.OFFERED, t0 + 2 * minute, "ag-001", o1)
    await hear(intake_pool, first, 3, S.DECLINED, t0 + 2 * minute + hour, "ag-001", o1)
    # (acceptance heard before the offer it answers: both are kept)
    await hear(intake_pool, first, 5, S.ACCEPTED, t0 + 3 * hour, "ag-002", o2)
    await hear(intake_pool, first, 4, S.OFFERED, t0 + 3 * minute + hour, "ag-002", o2)
    await hear(intake_pool, first, 6, S.COMPLETED, t0 + timedelta(days=5), "ag-002", o2)
    await hear(intake_pool, second, 1, S.SUBMITTED, t0 + minute)
    await hear(intake_pool, second, 2, S.OFFERED, t0 + 2 * minute, "ag-001", o3)
    await hear(intake_pool, second, 3, S.EXPIRED, t0 + 2 * minute + 24 * hour, "ag-001", o3)
    await hear(intake_pool, second, 4, S.UNMATCHED, t0 + 2 * minute + 24 * hour)
    # and, outside a 30-day window, a need accepted forty days ago
    old, _ = await submitted_needs(intake_pool, crypto, worker, NOW - timedelta(days=40))
    long_ago = NOW - timedelta(days=40)
    await hear(intake_pool, old, 1, S.OFFERED, long_ago + minute, "ag-003", uuid4())
    await hear(intake_pool, old, 2, S.ACCEPTED, long_ago + hour, "ag-003")

    numbers = await dashboard.referrals(intake_pool, NOW, 30)

    assert [(stage, n) for stage, _, n in numbers.funnel] == [
        ("submitted", 2),
        ("offered", 2),
        ("accepted", 1),
        ("completed", 1),
    ]
    assert numbers.accepted_times == [3 * 3600.0]
    assert dict(numbers.time_buckets)["1-4 h"] == 1
    assert sum(n for _, n in numbers.time_buckets) == 1
    agencies = {a.agency_id: a for a in numbers.agencies}
    assert set(agencies) == {"ag-001", "ag-002"}
    declining, accepting = agencies["ag-001"], agencies["ag-002"]
    assert (declining.offers, declining.accepted, declining.declined, declining.expired) == (
        2,
        0,
        1,
        1,
    )
    assert declining.acceptance_rate == 0.0
    assert declining.median_response_s == pytest.approx((3600 + 24 * 3600) / 2)
    assert (accepting.offers, accepting.accepted, accepting.acceptance_rate) == (1, 1, 1.0)
    assert accepting.median_response_s == pytest.approx(3 * 3600 - (3 * 60 + 3600))
    assert accepting.agency_name == "Agency ag-002"
    # The funnel and the time-to-accept charts draw those numbers.
    assert [bar.value for bar in numbers.funnel_chart.bars] == [2, 2, 1, 1]
    assert [bar.value for bar in numbers.time_chart.bars if bar.value] == [1]

    # The needs table still holds only the latest status, the history every change.
    async with intake_pool.acquire() as conn:
        status = await conn.fetchval("SELECT status FROM needs WHERE need_id = $1", first)
        history = await conn.fetch(
            "SELECT sequence, status FROM status_changes WHERE need_id = $1 ORDER BY sequence",
            first,
        )
    assert status == "completed"
    assert [(r["sequence"], r["status"]) for r in history] == [
        (1, "submitted"),
        (2, "offered"),
        (3, "declined"),
        (4, "offered"),
        (5, "accepted"),
        (6, "completed"),
    ]


async def test_a_repeated_or_unknown_change_adds_nothing_to_the_history(
    intake_pool: asyncpg.Pool, crypto: Crypto, worker: asyncpg.Record
) -> None:
    need, _ = await submitted_needs(intake_pool, crypto, worker, NOW)
    await hear(intake_pool, need, 1, S.OFFERED, NOW, "ag-001", uuid4())
    await hear(intake_pool, need, 1, S.OFFERED, NOW, "ag-001", uuid4())  # a re-sent change
    change = ReferralStatusChanged(
        need_id=uuid4(), status=S.ACCEPTED, sequence=1, occurred_at=NOW
    )  # a need intake never had

    async with intake_pool.acquire() as conn:
        assert not await repo.apply_status(conn, change)
        rows = await conn.fetch("SELECT need_id FROM status_changes")
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await conn.execute("DELETE FROM status_changes")
    assert [row["need_id"] for row in rows] == [need]


async def test_an_empty_window_draws_empty_charts(intake_pool: asyncpg.Pool) -> None:
    numbers = await dashboard.referrals(intake_pool, NOW, 7)

    assert [n for _, _, n in numbers.funnel] == [0, 0, 0, 0]
    assert numbers.accepted_times == [] and numbers.agencies == []
    assert numbers.median_to_accept is None
    assert "no needs yet" in numbers.funnel_chart.description
