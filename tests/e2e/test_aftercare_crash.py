"""SIGKILL the notifications process in the middle of a batch of due aftercare check-ins,
start it again, and count at the SMTP sink: no reminder lost, none shown twice.

The person is real (an intake through the worker's form, accepted by the agency over its
API), so each send asks the real intake for the address. The many due check-ins are then
written straight into notifications' schedule, as a backlog after an outage would be.
"""

from __future__ import annotations

import json
import signal
from datetime import timedelta

import asyncpg
import httpx
import pytest

from services.local_stack import DEMO_WORKER_EMAIL, LocalStack
from services.notifications.jobs import About, JobKind, job_id
from services.notifications.settings import NotificationsSettings
from shared.clock import OffsetFileClock
from tests.e2e.browser import Person, WorkerBrowser, intake_form, stack_today
from tests.e2e.cli import refnet_cli
from tests.kafka_reader import eventually

pytestmark = pytest.mark.e2e
REMINDERS = 600
LEASE_S = NotificationsSettings.model_fields["scheduler_lease_s"].default


def mail_to(stack: LocalStack, address: str) -> list[str]:
    assert stack.mail is not None
    return [str(m["Message-ID"]) for m in stack.mail.messages if m["To"] == address]


async def an_accepted_need(stack: LocalStack, person: Person) -> str:
    worker = WorkerBrowser(stack.intake_url)
    worker.log_in(DEMO_WORKER_EMAIL, stack.secrets["DEMO_WORKER_PASSWORD"])
    form = intake_form(
        person,
        stack_today(stack),
        needs=(("counseling", "soon", ""),),
        languages=("en",),
        channel="email",
    )
    path = worker.submit_intake(form).url.path
    [row] = await eventually(
        lambda: (r := worker.status(path)) and r[0].status == "offered" and r, "offered"
    )
    key = refnet_cli(stack, "agency", "key", row.agency_id).strip()
    async with httpx.AsyncClient(base_url=stack.agency_api_url) as agency:
        auth = {"Authorization": f"Bearer {key}"}
        offers = (await agency.get("/agency/v1/offers", headers=auth)).json()
        [offer] = [o for o in offers if o["need_id"] == row.need_id]
        accepted = await agency.post(f"/agency/v1/offers/{offer['offer_id']}/accept", headers=auth)
        assert accepted.status_code == 202, accepted.text
    await eventually(lambda: mail_to(stack, person.email), "the person's acceptance notice")
    return row.need_id


async def a_backlog_of_due_check_ins(stack: LocalStack, need_id: str) -> set[str]:
    assert stack.infra is not None
    now = OffsetFileClock(stack.clock_offset_file).now()
    jobs = [
        (
            job_id(need_id, "crash-test", day),
            JobKind.PERSON_MESSAGE.value,
            need_id,
            now,
            json.dumps({"about": About.CHECK_IN.value, "day": day, "agency_name": "Agency"}),
        )
        for day in range(1000, 1000 + REMINDERS)
    ]
    conn = await asyncpg.connect(stack.infra.database_url)
    try:
        await conn.executemany(
            "INSERT INTO notifications.scheduled_jobs (job_id, kind, need_id, due_at, payload) "
            "VALUES ($1, $2, $3, $4, $5::jsonb)",
            jobs,
        )
    finally:
        await conn.close()
    return {f"<{j[0]}@refnet.local>" for j in jobs}


async def test_a_sigkill_mid_batch_loses_no_reminder_and_shows_none_twice(
    stack: LocalStack,
) -> None:
    person = Person.new(given="Ines", family="Crashtest")
    need_id = await an_accepted_need(stack, person)
    expected = await a_backlog_of_due_check_ins(stack, need_id)

    # When notifications is killed while it works through them, and started again
    await eventually(
        lambda: len(expected & set(mail_to(stack, person.email))) >= REMINDERS // 5,
        "a fifth of the check-ins sent",
    )
    stack.restart("notifications", signal.SIGKILL)
    sent_before_restart = len(expected & set(mail_to(stack, person.email)))
    # The batch the killed process had claimed stays leased to it until its lease runs out
    # (no other process can tell a dead sender from a slow one): let that time pass.
    OffsetFileClock(stack.clock_offset_file).advance(timedelta(seconds=LEASE_S + 1))

    # Then every check-in arrives, each once
    await eventually(
        lambda: expected <= set(mail_to(stack, person.email)), "every check-in", timeout_s=300
    )
    received = [m for m in mail_to(stack, person.email) if m in expected]
    assert sent_before_restart < REMINDERS, "the kill came mid-way"
    assert len(received) == len(set(received)) == REMINDERS
    assert stack.mail is not None
    repeats = [r for r in stack.mail.repeats if r in expected]
    # At most the one send in flight at the kill is repeated, under its own Message-ID.
    assert len(repeats) <= 1, repeats
    await the_log_agrees(stack, need_id, len(repeats))


async def the_log_agrees(stack: LocalStack, need_id: str, repeats: int) -> None:
    assert stack.infra is not None
    conn = await asyncpg.connect(stack.infra.database_url)
    try:
        row = await conn.fetchrow(
            "SELECT count(*) FILTER (WHERE d.status = 'sent') AS sent, "
            "coalesce(sum(d.repeats), 0) AS repeats FROM notifications.scheduled_jobs j "
            "JOIN notifications.deliveries d ON d.job_id = j.job_id "
            "WHERE j.need_id = $1 AND (j.payload->>'day')::int >= 1000",
            need_id,
        )
    finally:
        await conn.close()
    assert row["sent"] == REMINDERS
    # The log counts each send retried after an interrupted attempt, whether or not that
    # attempt had reached the sink: at least the repeats the sink saw, at most the one killed.
    assert repeats <= row["repeats"] <= 1
