"""The whole referral loop as its users see it: an intake worker's form, an agency's topic
and HTTP API, the worker's mailbox, and the clock moving on to aftercare."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import date, timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio

from services.local_stack import DEMO_WORKER_EMAIL, LocalStack
from shared.clock import OffsetFileClock
from shared.cloudevents import decode
from shared.events import ReferralOffered
from shared.topics import agency_offers
from tests.e2e.browser import WorkerBrowser
from tests.kafka_reader import eventually, list_topics, read_topic

pytestmark = pytest.mark.e2e

PERSON = {
    "given_name": "Marisol",
    "family_name": "Quintanilla-Verdugo",
    "email": "marisol.qv@example.net",
    "phone": "503-555-0142",
    "street_address": "4127 SE Hawthorne Blvd",
}
INTAKE_FORM = {
    **PERSON,
    "postal_code": "97214",
    "preferred_language": "es",
    "needs-0-category": "peer-support",
    "needs-0-urgency": "urgent",
    "needs-1-category": "employment",
    "needs-1-urgency": "routine",
    "consent_given": "yes",
    "consent_expires_on": (date.today() + timedelta(days=365)).isoformat(),
}


def refnet_cli(stack: LocalStack, *args: str) -> str:
    assert stack.infra is not None
    env = {
        **os.environ,
        "DATABASE_URL": stack.infra.database_url,
        "KAFKA_BOOTSTRAP_SERVERS": stack.infra.kafka_bootstrap_servers,
    }
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout


async def offers_on_topic(stack: LocalStack, agency_id: str) -> list[ReferralOffered]:
    assert stack.infra is not None
    spec = agency_offers(agency_id)
    records = await read_topic(stack.infra.kafka_bootstrap_servers, spec.name)
    events = [decode(spec, r.key, r.value, r.headers).event for r in records]
    return [e for e in events if isinstance(e, ReferralOffered)]


def mail_with(stack: LocalStack, subject_part: str) -> list[Any]:
    assert stack.mail is not None
    return [m for m in stack.mail.messages if subject_part in str(m["Subject"])]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def referral_loop(stack: LocalStack) -> dict[str, Any]:
    # Given the demo worker is logged in
    worker = WorkerBrowser(stack.intake_url)
    login = worker.log_in(DEMO_WORKER_EMAIL, stack.secrets["DEMO_WORKER_PASSWORD"])
    assert login.status_code == 200 and "Your intakes" in login.text

    # When they submit an intake with two needs
    submitted = worker.submit_intake(INTAKE_FORM)
    assert submitted.status_code == 200, submitted.text
    intake_path = submitted.url.path
    assert intake_path.startswith("/intakes/")

    # Then each need reaches "offered" on the status page
    rows = await eventually(
        lambda: (r := worker.status(intake_path)) and all(n.status == "offered" for n in r) and r,
        "both needs offered",
    )
    assert len(rows) == 2

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
    pending = len(await offers_on_topic(stack, second.agency_id))
    refnet_cli(
        stack, "agency", "listen", second.agency_id, "--accept", "--max-offers", str(pending)
    )

    final = await eventually(
        lambda: (r := worker.status(intake_path)) and all(n.status == "accepted" for n in r) and r,
        "both needs accepted",
    )
    acceptance_mail = await eventually(
        lambda: (
            len(mail_with(stack, "Referral accepted")) >= 2
            and mail_with(stack, "Referral accepted")
        ),
        "two acceptance emails",
    )

    # When a day passes
    assert not mail_with(stack, "Aftercare check-in (day 1)")
    OffsetFileClock(stack.clock_offset_file).advance(timedelta(days=1, minutes=1))
    await eventually(
        lambda: len(mail_with(stack, "Aftercare check-in (day 1)")) >= 2, "day-1 reminders"
    )
    # Give the scheduler many more cycles in which a duplicate would show up.
    await asyncio.sleep(2)
    return {
        "rows": final,
        "offers": offers,
        "acceptance_mail": acceptance_mail,
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
    for offer in referral_loop["offers"].values():
        assert offer.postal_code == "97214"
        assert offer.languages == ("es",)
        assert offer.explanation, "every offer explains its ranking"


async def test_the_worker_is_emailed_when_an_agency_accepts(
    stack: LocalStack, referral_loop: dict[str, Any]
) -> None:
    mails = mail_with(stack, "Referral accepted")
    assert {str(m["To"]) for m in mails} == {DEMO_WORKER_EMAIL}
    need_ids = {r.need_id for r in referral_loop["rows"]}
    assert {next(n for n in need_ids if n in m.get_content()) for m in mails} == need_ids
    assert len(mails) == 2


async def test_first_aftercare_reminder_is_delivered_exactly_once_per_need(
    stack: LocalStack, referral_loop: dict[str, Any]
) -> None:
    reminders = mail_with(stack, "Aftercare check-in (day 1)")
    per_need = [
        sum(1 for m in reminders if r.need_id in m.get_content()) for r in referral_loop["rows"]
    ]
    assert per_need == [1, 1]
    assert not mail_with(stack, "Aftercare check-in (day 7)")


async def test_no_topic_carries_the_persons_identifiers(
    stack: LocalStack, referral_loop: dict[str, Any]
) -> None:
    assert stack.infra is not None
    bootstrap = stack.infra.kafka_bootstrap_servers
    topics = [t for t in await list_topics(bootstrap) if t.startswith("refnet.")]
    forbidden = [
        PERSON["given_name"],
        PERSON["family_name"],
        PERSON["email"],
        PERSON["phone"],
        PERSON["phone"].replace("-", ""),
        PERSON["street_address"],
        "Hawthorne",
    ]
    scanned = 0
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
    # The scan must have seen the flow's traffic, or it proves nothing.
    assert scanned >= 8
    assert any(t.startswith("refnet.agency.") for t in topics)
