"""Due jobs are sent once: concurrent senders share the table without taking the same row,
a crashed sender's lease runs out and its job is retried, and a send that was logged but
not marked done is not repeated."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from uuid import uuid4

import asyncpg
import pytest

from services.notifications import repository as repo
from services.notifications.handlers import Deps, JobKind, job_id, run_due_jobs
from services.smtp_sink import SmtpSink
from shared.clock import ManualClock
from shared.events import NeedCategory, NeedSubmitted
from tests.factories import need_submitted

pytestmark = pytest.mark.integration


async def given_a_due_reminder(pool: asyncpg.Pool, clock: ManualClock) -> NeedSubmitted:
    need = need_submitted(NeedCategory.AFTERCARE, at=clock.now())
    async with pool.acquire() as conn:
        await repo.remember_referrer(conn, need)
        await repo.schedule(
            conn,
            job_id(need.need_id, JobKind.AFTERCARE_REMINDER, 1),
            JobKind.AFTERCARE_REMINDER,
            need.need_id,
            clock.now(),
            payload={"agency_name": "Agency", "day": 1},
        )
    return need


async def test_two_senders_racing_deliver_a_reminder_once(
    deps: Deps, sink: SmtpSink, clock: ManualClock
) -> None:
    await given_a_due_reminder(deps.pool, clock)

    for _ in range(5):
        await asyncio.gather(run_due_jobs(deps), run_due_jobs(deps))

    assert len(sink.messages) == 1


async def test_a_crashed_senders_job_is_retried_after_its_lease(
    deps: Deps, sink: SmtpSink, clock: ManualClock
) -> None:
    await given_a_due_reminder(deps.pool, clock)
    async with deps.pool.acquire() as conn:  # a sender claims it, then dies
        lease = timedelta(seconds=deps.settings.scheduler_lease_s)
        assert len(await repo.claim_due_jobs(conn, clock.now(), lease, 10)) == 1

    assert await run_due_jobs(deps) == 0
    clock.advance(lease + timedelta(seconds=1))
    assert await run_due_jobs(deps) == 1
    assert len(sink.messages) == 1


async def test_a_send_logged_before_a_crash_is_not_repeated(
    deps: Deps, sink: SmtpSink, clock: ManualClock
) -> None:
    need = await given_a_due_reminder(deps.pool, clock)
    key = str(job_id(need.need_id, JobKind.AFTERCARE_REMINDER, 1))
    async with deps.pool.acquire() as conn:  # sent and logged, but never marked done
        await repo.log_delivery(conn, key, "email", "worker@refnet.local", "s", 1, clock.now())

    assert await run_due_jobs(deps) == 1
    assert sink.messages == []
    assert await run_due_jobs(deps) == 0


async def test_a_job_that_keeps_failing_is_marked_failed_not_retried_forever(
    deps: Deps, sink: SmtpSink, clock: ManualClock
) -> None:
    unknown_need = need_submitted(NeedCategory.AFTERCARE, at=clock.now())  # never remembered
    async with deps.pool.acquire() as conn:
        await repo.schedule(
            conn, uuid4(), JobKind.AFTERCARE_REMINDER, unknown_need.need_id, clock.now()
        )

    for _ in range(deps.settings.scheduler_max_attempts + 3):
        await run_due_jobs(deps)
        clock.advance(timedelta(days=1))

    async with deps.pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT status, attempts, last_error FROM scheduled_jobs WHERE need_id = $1",
            unknown_need.need_id,
        )
    assert (row["status"], row["attempts"]) == ("failed", deps.settings.scheduler_max_attempts)
    assert "not yet known" in row["last_error"]
    assert sink.messages == []
