"""The whole referral loop as its users see it: an intake worker's form, an agency's topic
and HTTP API, the worker's mailbox, and the clock moving on to aftercare."""

from __future__ import annotations

import asyncio
from datetime import date, timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio

from services.intake.models import age_on
from services.local_stack import DEMO_WORKER_EMAIL, LocalStack
from shared.clock import OffsetFileClock
from shared.events import Insurance, RecoveryStage, ReferralOffered
from shared.topics import agency_offers
from tests.e2e.browser import (
    Person,
    WorkerBrowser,
    intake_form,
    stack_today,
)
from tests.e2e.cli import refnet_cli
from tests.kafka_reader import (
    eventually,
    list_topics,
    offers_not_yet_read,
    read_events,
    read_topic,
)

pytestmark = pytest.mark.e2e


async def offers_on_topic(stack: LocalStack, agency_id: str) -> list[ReferralOffered]:
    assert stack.infra is not None
    events = await read_events(stack.infra.kafka_bootstrap_servers, agency_offers(agency_id))
    return [e for e in events if isinstance(e, ReferralOffered)]


def texts_to(stack: LocalStack, person: Person) -> list[dict[str, Any]]:
    assert stack.sms is not None
    number = "+1" + person.phone.replace("-", "")
    return [m for m in stack.sms.messages if m["to"] == number]


def mail_about(stack: LocalStack, subject_part: str, need_ids: set[str]) -> list[Any]:
    """Mail with that subject about one of these needs (other tests' needs get mail too)."""
    assert stack.mail is not None
    return [
        m
        for m in stack.mail.messages
        if subject_part in str(m["Subject"]) and any(n in m.get_content() for n in need_ids)
    ]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def referral_loop(stack: LocalStack) -> dict[str, Any]:
    # Given the demo worker is logged in
    worker = WorkerBrowser(stack.intake_url)
    login = worker.log_in(DEMO_WORKER_EMAIL, stack.secrets["DEMO_WORKER_PASSWORD"])
    assert login.status_code == 200 and "Dashboard" in login.text

    # When they submit an intake with two needs for someone new
    person = Person.new()
    today = stack_today(stack)
    submitted = worker.submit_intake(intake_form(person, today))
    assert submitted.status_code == 200, submitted.text
    intake_path = submitted.url.path
    assert intake_path.startswith("/intakes/")

    # Then each need reaches "offered" on the status page
    rows = await eventually(
        lambda: (r := worker.status(intake_path)) and all(n.status == "offered" for n in r) and r,
        "both needs offered",
    )
    assert len(rows) == 2
    need_ids = {r.need_id for r in rows}

    # And each offer can be read back from its agency's topic with a plain Kafka consumer
    async def offer_for(row: Any) -> list[ReferralOffered]:
        on_topic = await offers_on_topic(stack, row.agency_id)
        return [o for o in on_topic if str(o.need_id) == row.need_id]

    offers = {}
    for row in rows:
        found = await eventually(
            lambda row=row: offer_for(row), f"offer for {row.need_id} on {row.agency_id}'s topic"
        )
        offers[row.need_id] = found[0]

    # When the first agency accepts over the HTTP API with its own key
    first, second = rows
    key = refnet_cli(stack, "agency", "key", first.agency_id).strip()
    async with httpx.AsyncClient() as agency_http:
        accepted = await agency_http.post(
            f"{stack.agency_api_url}/agency/v1/offers/{offers[first.need_id].offer_id}/accept",
            headers={"Authorization": f"Bearer {key}"},
        )
    assert accepted.status_code == 202, accepted.text

    # And the second agency accepts over Kafka with the reference consumer
    await eventually(
        lambda: worker.status(intake_path)[0].status == "accepted", "first need accepted"
    )
    assert stack.infra is not None
    bootstrap = stack.infra.kafka_bootstrap_servers
    pending = await offers_not_yet_read(bootstrap, second.agency_id)
    assert pending >= 1
    refnet_cli(
        stack, "agency", "listen", second.agency_id, "--accept", "--max-offers", str(pending)
    )

    final = await eventually(
        lambda: (r := worker.status(intake_path)) and all(n.status == "accepted" for n in r) and r,
        "both needs accepted",
    )
    acceptance_mail = await eventually(
        lambda: (
            len(mail_about(stack, "Referral accepted", need_ids)) >= 2
            and mail_about(stack, "Referral accepted", need_ids)
        ),
        "two acceptance emails",
    )

    # And the person is told by text, in Spanish (their first language), who will call
    notices = await eventually(
        lambda: len(texts_to(stack, person)) >= 2 and texts_to(stack, person), "two SMS notices"
    )

    # When a day passes, each need's first aftercare check-in reaches the person
    OffsetFileClock(stack.clock_offset_file).advance(timedelta(days=1, minutes=1))
    await eventually(lambda: len(texts_to(stack, person)) >= 4, "day-1 check-ins")
    # Give the scheduler many more cycles in which a duplicate would show up.
    await asyncio.sleep(2)
    return {
        "person": person,
        "today": today,
        "rows": final,
        "need_ids": need_ids,
        "offers": offers,
        "acceptance_mail": acceptance_mail,
        "notices": notices,
        "second_listen_pending": pending,
        "worker": worker,
        "intake_path": intake_path,
    }


async def test_each_need_is_offered_then_accepted_on_the_status_page(
    referral_loop: dict[str, Any],
) -> None:
    statuses = [(r.category, r.status) for r in referral_loop["rows"]]
    assert statuses == [("peer-support", "accepted"), ("employment", "accepted")]


async def test_offers_carry_the_need_but_not_the_person(referral_loop: dict[str, Any]) -> None:
    person: Person = referral_loop["person"]
    today: date = referral_loop["today"]
    for offer in referral_loop["offers"].values():
        assert offer.postal_code == "97214"
        assert offer.county == "Multnomah"
        assert set(offer.languages) == {"es", "en"}
        assert offer.recovery_stage == RecoveryStage.EARLY_RECOVERY
        assert offer.age_years == age_on(date.fromisoformat(person.date_of_birth), today)
        assert offer.constraints.needs_child_care and offer.constraints.mat_friendly_required
        assert not offer.constraints.has_transportation
        assert offer.constraints.insurance == Insurance.MEDICAID
        assert offer.explanation, "every offer explains its ranking"


async def test_the_worker_is_emailed_when_an_agency_accepts(
    stack: LocalStack, referral_loop: dict[str, Any]
) -> None:
    need_ids = referral_loop["need_ids"]
    mails = mail_about(stack, "Referral accepted", need_ids)
    assert {str(m["To"]) for m in mails} == {DEMO_WORKER_EMAIL}
    assert {next(n for n in need_ids if n in m.get_content()) for m in mails} == need_ids
    assert len(mails) == 2


async def test_the_person_is_told_who_will_help_on_the_channel_they_chose(
    stack: LocalStack, referral_loop: dict[str, Any]
) -> None:
    person: Person = referral_loop["person"]
    notices = [t for t in texts_to(stack, person) if "le ayudará" in t["body"]]
    assert len(notices) == 2 and len({t["body"] for t in notices}) == 2  # one per agency
    assert not [m for m in stack.mail.messages if m["To"] == person.email]  # type: ignore[union-attr]


async def test_first_aftercare_check_in_is_delivered_exactly_once_per_need(
    stack: LocalStack, referral_loop: dict[str, Any]
) -> None:
    check_ins = [t for t in texts_to(stack, referral_loop["person"]) if "día 1" in t["body"]]
    assert len(check_ins) == 2
    assert len({t["body"] for t in check_ins}) == 2  # one per need: each its own link
    assert not [t for t in texts_to(stack, referral_loop["person"]) if "día 7" in t["body"]]


async def test_no_topic_carries_the_persons_identifiers(
    stack: LocalStack, referral_loop: dict[str, Any]
) -> None:
    assert stack.infra is not None
    bootstrap = stack.infra.kafka_bootstrap_servers
    topics = [t for t in await list_topics(bootstrap) if t.startswith("refnet.")]
    person: Person = referral_loop["person"]
    forbidden = person.identifiers
    assert {person.phone, person.phone.replace("-", ""), person.date_of_birth} <= set(forbidden)
    scanned, seen_needs = 0, set()
    for topic in topics:
        for record in await read_topic(bootstrap, topic):
            scanned += 1
            blob = (
                b" ".join(
                    [record.key or b"", record.value or b""]
                    + [k.encode() + b"=" + bytes(v) for k, v in record.headers or ()]
                )
                .decode(errors="replace")
                .lower()
            )
            leaks = [f for f in forbidden if f.lower() in blob]
            assert not leaks, f"{topic}@{record.offset} carries {leaks}"
            seen_needs |= {n for n in referral_loop["need_ids"] if n in blob}
    # The scan must have seen the flow's traffic, or it proves nothing.
    assert scanned >= 8
    assert seen_needs == referral_loop["need_ids"]
    assert any(t.startswith("refnet.agency.") for t in topics)


async def test_i_need_help_from_a_check_in_text_shows_up_on_the_workers_tracker(
    stack: LocalStack, referral_loop: dict[str, Any]
) -> None:
    text = next(t for t in texts_to(stack, referral_loop["person"]) if "día 1" in t["body"])
    link = next(word for word in text["body"].split() if "/l/" in word)
    async with httpx.AsyncClient() as person:
        page = await person.get(link)
        assert page.status_code == 200 and "Necesito ayuda" in page.text
        answered = await person.post(link, data={"answer": "need-help"})
        assert answered.status_code == 200, answered.text

    worker: WorkerBrowser = referral_loop["worker"]
    await eventually(
        lambda: (
            "asked for help at the day-1 check-in"
            in worker.http.get(referral_loop["intake_path"]).text.lower()
        ),
        "the worker's tracker flags the request for help",
    )
