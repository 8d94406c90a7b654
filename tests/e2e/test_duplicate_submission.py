"""Resubmitting the same form five times in parallel yields one intake and one event per
need; and a person already on record is offered for reuse rather than made twice."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from uuid import UUID

import asyncpg
import httpx
import pytest

from services.local_stack import DEMO_WORKER_EMAIL, LocalStack
from shared.cloudevents import PoisonMessage, decode
from shared.events import NeedSubmitted
from shared.topics import NEEDS
from tests.e2e.browser import (
    Person,
    WorkerBrowser,
    filled,
    intake_form,
    person_match_choices,
    stack_today,
    with_fields,
)
from tests.kafka_reader import eventually, read_topic

pytestmark = pytest.mark.e2e

INTAKE_PATH = re.compile(r"/intakes/([0-9a-f-]{36})")
PARALLEL = 5


@pytest.fixture
def worker(stack: LocalStack) -> WorkerBrowser:
    browser = WorkerBrowser(stack.intake_url)
    login = browser.log_in(DEMO_WORKER_EMAIL, stack.secrets["DEMO_WORKER_PASSWORD"])
    assert login.status_code == 200
    return browser


def intake_id_of(response: httpx.Response) -> UUID:
    assert response.status_code == 200, response.text
    match = INTAKE_PATH.fullmatch(response.url.path)
    assert match, f"ended on {response.url.path}, not an intake"
    return UUID(match.group(1))


async def test_the_same_form_sent_five_times_at_once_makes_one_intake_and_one_event_per_need(
    stack: LocalStack, worker: WorkerBrowser, intake_db: asyncpg.Connection
) -> None:
    assert stack.infra is not None
    # Given one filled-in form (one CSRF token, one submission id) with three needs
    form = worker.open_intake_form()
    fields = intake_form(
        Person.new(),
        stack_today(stack),
        needs=[
            ("peer-support", "urgent", "note"),
            ("employment", "routine", ""),
            ("counseling", "soon", ""),
        ],
    )

    # When it is sent five times at once from the same logged-in session
    async with httpx.AsyncClient(
        base_url=stack.intake_url,
        cookies=worker.http.cookies,
        follow_redirects=True,
        timeout=60,
    ) as tabs:
        data = filled(form, fields)
        responses = await asyncio.gather(
            *(tabs.post("/intakes", data=data) for _ in range(PARALLEL))
        )

    # Then every one of them ends on the same intake's page
    intake_ids = {intake_id_of(r) for r in responses}
    assert len(intake_ids) == 1
    (intake_id,) = intake_ids

    # And the database holds exactly one intake for that submission, with three needs
    rows = await intake_db.fetch(
        "SELECT intake_id FROM intakes WHERE submission_id = $1", UUID(form.submission_id)
    )
    assert [r["intake_id"] for r in rows] == [intake_id]
    need_ids = {
        r["need_id"]
        for r in await intake_db.fetch("SELECT need_id FROM needs WHERE intake_id = $1", intake_id)
    }
    assert len(need_ids) == 3
    outbox = await intake_db.fetch(
        "SELECT key FROM outbox WHERE topic = $1 AND key = ANY($2::text[])",
        NEEDS.name,
        [str(n) for n in need_ids],
    )
    assert sorted(r["key"] for r in outbox) == sorted(str(n) for n in need_ids)

    # And refnet.needs.v1 carries exactly one NeedSubmitted per need
    async def submitted() -> Counter[UUID] | None:
        on_topic: Counter[UUID] = Counter()
        for record in await read_topic(stack.infra.kafka_bootstrap_servers, NEEDS.name):
            try:
                event = decode(NEEDS, record.key, record.value, record.headers).event
            except PoisonMessage:  # another test's deliberately malformed record
                continue
            if isinstance(event, NeedSubmitted) and event.need_id in need_ids:
                on_topic[event.need_id] += 1
        return on_topic if set(on_topic) == need_ids else None

    on_topic = await eventually(submitted, "every need on refnet.needs.v1")
    assert on_topic == Counter(dict.fromkeys(need_ids, 1))


async def test_a_known_person_is_offered_for_reuse(
    stack: LocalStack, worker: WorkerBrowser, intake_db: asyncpg.Connection
) -> None:
    person = Person.new("Dariusz", "Kowalczyk")
    today = stack_today(stack)

    # Given an intake for the person
    first = intake_id_of(worker.submit_intake(intake_form(person, today)))
    person_id = await intake_db.fetchval(
        "SELECT person_id FROM intakes WHERE intake_id = $1", first
    )

    # When the same name and date of birth come in on a new form
    again = with_fields(
        intake_form(person, today, needs=[("housing", "soon", "")]),
        {"person.email": "", "person.preferred_channel": "sms"},
    )
    offered = worker.submit_intake(again)

    # Then the form comes back asking whether this is the person already on record
    assert offered.status_code == 409, offered.text
    assert person_match_choices(offered.text) == [f"reuse:{person_id}", "new"]
    assert "already known" in offered.text
    count = await intake_db.fetchval("SELECT count(*) FROM intakes WHERE person_id = $1", person_id)
    assert count == 1, "nothing is written until the worker chooses"

    # When the worker chooses to reuse the record
    reused = worker.resubmit(offered, [("person_match", f"reuse:{person_id}")])

    # Then it lands on a second intake of the same person
    second = intake_id_of(reused)
    assert second != first
    rows = await intake_db.fetch(
        "SELECT intake_id FROM intakes WHERE person_id = $1 ORDER BY created_at", person_id
    )
    assert [r["intake_id"] for r in rows] == [first, second]
    assert await intake_db.fetchval("SELECT count(*) FROM persons WHERE person_id = $1", person_id)


async def test_a_different_person_with_the_same_name_and_birthday_gets_a_record_of_their_own(
    stack: LocalStack, worker: WorkerBrowser, intake_db: asyncpg.Connection
) -> None:
    person = Person.new("Dariusz", "Kowalczyk")
    today = stack_today(stack)
    first = intake_id_of(worker.submit_intake(intake_form(person, today)))

    offered = worker.submit_intake(intake_form(person, today))
    assert offered.status_code == 409
    second = intake_id_of(worker.resubmit(offered, [("person_match", "new")]))

    people = await intake_db.fetch(
        "SELECT person_id FROM intakes WHERE intake_id = ANY($1::uuid[])", [first, second]
    )
    assert len({r["person_id"] for r in people}) == 2
