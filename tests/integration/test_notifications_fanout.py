"""Notifications when an urgent need was offered to several agencies at once: the first
acceptance closes the others, whose deadlines stop, and an agency answering one of them
over HTTP is told the person was already placed."""

from __future__ import annotations

from datetime import timedelta
from uuid import uuid4

import asyncpg
import pytest

from services.notifications.handlers import Answer, answer_offer
from services.notifications.scheduler import Deps
from shared.events import ReferralStatus
from tests.factories import need_submitted
from tests.integration.test_notifications_consent import deliver, status

pytestmark = pytest.mark.integration


async def test_the_first_acceptance_closes_the_other_offers_as_placed(deps: Deps) -> None:
    need = need_submitted()
    first, second = uuid4(), uuid4()
    await deliver(deps, need)
    for n, (agency, offer) in enumerate((("ag-001", first), ("ag-002", second))):
        await deliver(deps, status(
            deps, need, ReferralStatus.OFFERED, 2 + n, agency_id=agency, agency_name=agency,
            offer_id=offer, attempt=1 + n, respond_by=deps.clock.now() + timedelta(hours=2),
        ))  # fmt: skip

    await deliver(deps, status(
        deps, need, ReferralStatus.ACCEPTED, 4, agency_id="ag-002", agency_name="ag-002",
        offer_id=second, attempt=2,
    ))  # fmt: skip

    assert await answer_offer(deps, "ag-001", first, None) == Answer.ALREADY_PLACED
    async with deps.pool.acquire() as conn:
        jobs = await pending_deadlines(conn)
    assert jobs == [], "no deadline left to expire for a placed need"


async def pending_deadlines(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return list(
        await conn.fetch(
            "SELECT * FROM scheduled_jobs WHERE kind = 'offer_deadline' AND status = 'pending'"
        )
    )
