"""Due jobs are sent once: concurrent schedulers share the table without taking the same
row, a crashed sender's lease runs out and its job is retried, a send that was logged as
sent is not repeated, and one in flight when its sender died is repeated under its key."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta
from uuid import UUID, uuid4

import asyncpg
import pytest

from services.notifications import repository as repo
from services.notifications.app import close_deps
from services.notifications.jobs import About, JobKind, job_id
from services.notifications.scheduler import Deps, run_due_jobs
from services.smtp_sink import SmtpSink
from shared.clock import ManualClock
from shared.db import create_pool
from shared.events import ContactChannel, ContactPreferences, NeedCategory, NeedSubmitted
from shared.infra import Infrastructure
from tests.contacts import StaticContactBook
from tests.factories import need_submitted
from tests.integration.conftest import notifications_deps

pytestmark = pytest.mark.integration


async def given_a_need(
    deps: Deps, contacts: StaticContactBook, channel: ContactChannel = ContactChannel.EMAIL
) -> NeedSubmitted:
    need = need_submitted(
        NeedCategory.AFTERCARE, at=deps.clock.now(), contact=ContactPreferences(channel=channel)
    )
    contacts.add(need.need_id, channel.value, f"p{need.need_id.hex[:8]}@example.net")
    async with deps.pool.acquire() as conn:
        await repo.remember_referrer(conn, need)
    return need


async def given_a_due_check_in(deps: Deps, contacts: StaticContactBook) -> UUID:
    need = await given_a_need(deps, contacts)
    key = job_id(need.need_id, About.CHECK_IN, 1)
    async with deps.pool.acquire() as conn:
        await repo.schedule_jobs(
            conn,
            [
                repo.Job(
                    key,
                    JobKind.PERSON_MESSAGE,
                    need.need_id,
                    deps.clock.now(),
                    payload={"about": "check-in", "day": 1, "agency_name": "Agency"},
                )
            ],
        )
    return key


def message_ids(sink: SmtpSink) -> Counter[str]:
    return Counter(str(m["Message-ID"]) for m in sink.messages)


async def test_two_senders_racing_deliver_a_reminder_once(
    deps: Deps, sink: SmtpSink, contacts: StaticContactBook
) -> None:
    await given_a_due_check_in(deps, contacts)

    for _ in range(5):
        await asyncio.gather(run_due_jobs(deps), run_due_jobs(deps))

    assert len(sink.messages) == 1


async def test_two_scheduler_instances_over_10000_due_reminders_send_each_once(
    deps: Deps,
    sink: SmtpSink,
    contacts: StaticContactBook,
    clock: ManualClock,
    infra: Infrastructure,
) -> None:
    count = 10_000
    keys = await given_many_due_check_ins(deps, contacts, count)
    # Two instances as two services would be: their own pools and SMTP connections.
    pool = await second_pool(infra, deps.pool)
    second = notifications_deps(pool, clock, deps.settings, contacts)
    try:
        sent = await asyncio.gather(drain(deps), drain(second))
    finally:
        await close_deps(second)
        await pool.close()

    received = message_ids(sink)
    assert sum(sent) == count and all(n > 0 for n in sent)  # both took part
    assert len(received) == count and set(received.values()) == {1}
    assert received.keys() == {f"<{k}@refnet.local>" for k in keys}


async def given_many_due_check_ins(
    deps: Deps, contacts: StaticContactBook, count: int
) -> list[UUID]:
    rows, jobs = [], []
    for _ in range(count):
        need_id = uuid4()
        contacts.add(need_id, "email", f"p{need_id.hex[:10]}@example.net")
        rows.append((need_id, uuid4(), "worker@refnet.local", "aftercare", "soon", "email"))
        jobs.append(
            (
                job_id(need_id, About.CHECK_IN, 7),
                JobKind.PERSON_MESSAGE.value,
                need_id,
                deps.clock.now(),
                {"about": "check-in", "day": 7, "agency_name": "A"},
            )
        )
    async with deps.pool.acquire() as conn:
        await conn.copy_records_to_table(
            "need_referrers",
            records=rows,
            columns=[
                "need_id",
                "worker_ref",
                "notify_email",
                "category",
                "urgency",
                "contact_channel",
            ],
        )
        await conn.executemany(
            "INSERT INTO scheduled_jobs (job_id, kind, need_id, due_at, payload) "
            "VALUES ($1, $2, $3, $4, $5)",
            jobs,
        )
    return [j[0] for j in jobs]


async def second_pool(infra: Infrastructure, pool: asyncpg.Pool) -> asyncpg.Pool:
    async with pool.acquire() as conn:
        schema = await conn.fetchval("SELECT current_schema()")
    return await create_pool(infra.database_url, schema)


async def drain(deps: Deps) -> int:
    sent = 0
    while claimed := await run_due_jobs(deps):
        sent += claimed
    return sent


async def test_a_crashed_senders_job_is_retried_after_its_lease(
    deps: Deps, sink: SmtpSink, clock: ManualClock, contacts: StaticContactBook
) -> None:
    await given_a_due_check_in(deps, contacts)
    async with deps.pool.acquire() as conn:  # a sender claims it, then dies
        lease = timedelta(seconds=deps.settings.scheduler_lease_s)
        assert len(await repo.claim_due_jobs(conn, clock.now(), lease, 10)) == 1

    assert await run_due_jobs(deps) == 0
    clock.advance(lease + timedelta(seconds=1))
    assert await run_due_jobs(deps) == 1
    assert len(sink.messages) == 1


async def test_a_send_logged_as_sent_before_a_crash_is_not_repeated(
    deps: Deps, sink: SmtpSink, contacts: StaticContactBook
) -> None:
    key = await given_a_due_check_in(deps, contacts)
    async with deps.pool.acquire() as conn:  # sent and logged, but never marked done
        job = await conn.fetchrow("SELECT * FROM scheduled_jobs WHERE job_id = $1", key)
        await repo.begin_delivery(conn, job, "email", "p***", "s", deps.clock.now())
        await repo.delivery_sent(conn, job, "<id>", deps.clock.now())

    assert await run_due_jobs(deps) == 1
    assert sink.messages == []
    assert await run_due_jobs(deps) == 0


async def test_a_send_in_flight_when_its_sender_died_repeats_under_the_same_key(
    deps: Deps, sink: SmtpSink, contacts: StaticContactBook
) -> None:
    key = await given_a_due_check_in(deps, contacts)
    async with deps.pool.acquire() as conn:  # logged as sending; the sender died mid-send
        job = await conn.fetchrow("SELECT * FROM scheduled_jobs WHERE job_id = $1", key)
        await repo.begin_delivery(conn, job, "email", "p***", "s", deps.clock.now())

    assert await run_due_jobs(deps) == 1

    assert [str(m["Message-ID"]) for m in sink.messages] == [f"<{key}@refnet.local>"]
    async with deps.pool.acquire() as conn:
        logged = await repo.delivery(conn, str(key))
    assert (logged["status"], logged["attempts"], logged["repeats"]) == ("sent", 2, 1)


async def test_a_job_that_keeps_failing_is_marked_failed_not_retried_forever(
    deps: Deps, sink: SmtpSink, clock: ManualClock
) -> None:
    unknown_need = need_submitted(NeedCategory.AFTERCARE, at=clock.now())  # never remembered
    async with deps.pool.acquire() as conn:
        await repo.schedule_jobs(
            conn,
            [
                repo.Job(
                    uuid4(),
                    JobKind.WORKER_EMAIL,
                    unknown_need.need_id,
                    clock.now(),
                    payload={"about": "accepted"},
                )
            ],
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


async def test_a_failed_send_is_retried_later_with_backoff(
    deps: Deps, sink: SmtpSink, clock: ManualClock, contacts: StaticContactBook
) -> None:
    need = await given_a_need(deps, contacts)
    contacts.refuse(need.need_id, "intake 409: not accepted yet", permanent=False)
    key = job_id(need.need_id, About.ACCEPTED)
    async with deps.pool.acquire() as conn:
        await repo.schedule_jobs(
            conn,
            [
                repo.Job(
                    key,
                    JobKind.PERSON_MESSAGE,
                    need.need_id,
                    clock.now(),
                    payload={"about": "accepted", "agency_name": "A"},
                )
            ],
        )

    assert await run_due_jobs(deps) == 1
    async with deps.pool.acquire() as conn:
        job = await conn.fetchrow("SELECT * FROM scheduled_jobs WHERE job_id = $1", key)
    assert job["status"] == "pending" and "not accepted yet" in job["last_error"]
    assert job["lease_until"] > clock.now()  # not before the backoff
    del contacts.refusals[need.need_id]

    clock.advance(timedelta(seconds=deps.settings.retry_base_s))
    assert await run_due_jobs(deps) == 1
    assert len(sink.messages) == 1
