"""The operator dashboard in a real browser (Debian's Chromium, driven by Playwright), on
the whole stack: an admin sees the referral funnel and the time to accept drawn from a need
really accepted, sees dead letters with their reasons (never their content), and replays
one that could not be processed then and can be now."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID, uuid4

import pytest
from aiokafka import AIOKafkaProducer
from playwright.sync_api import Page, expect

from services.local_stack import DEMO_WORKER_EMAIL, LocalStack
from shared.clock import OffsetFileClock
from shared.cloudevents import encode
from shared.events import (
    ConsentRecipients,
    ConsentScope,
    Event,
    NeedCategory,
    OfferAccepted,
    ReferralStatus,
    offer_id_for,
)
from shared.topics import NEEDS, OFFER_RESPONSES, REFERRAL_EVENTS, TopicSpec
from tests.e2e.browser import (
    Person,
    WorkerBrowser,
    add_worker,
    csrf_token,
    intake_form,
    stack_today,
)
from tests.e2e.chromium import accessibility_problems, needs_chromium
from tests.e2e.test_intake_browser import accept_over_http
from tests.factories import need_submitted
from tests.kafka_reader import decodable, header, read_topic

pytestmark = [
    pytest.mark.e2e,
    needs_chromium,
]
SCREENSHOT = Path(__file__).parents[2] / "docs" / "images" / "operator-dashboard.png"
# Bounds how long a broken build takes to say so; nothing here measures speed.
WAIT_S = 90
T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run Kafka clients beside the browser: Playwright's sync API keeps its own event loop
    in this thread, so asyncio runs in another."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def wait_for(check: Callable[[], T], what: str) -> T:
    deadline = time.monotonic() + WAIT_S
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for: {what}")
        time.sleep(0.25)
    return result


def open_dashboard_as_admin(page: Page, stack: LocalStack, name: str) -> None:
    email, password = add_worker(stack, name, role="admin")
    page.goto(f"{stack.intake_url}/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("link", name="Operator dashboard").click()
    expect(page.get_by_role("heading", name="Operator dashboard", level=1)).to_be_visible()


def bar_values(page: Page, chart: str) -> dict[str, int]:
    bars = page.locator(f'svg[data-chart="{chart}"] rect[data-value]')
    return {
        bars.nth(i).get_attribute("data-label") or "": int(
            bars.nth(i).get_attribute("data-value") or 0
        )
        for i in range(bars.count())
    }


async def produce(
    bootstrap: str, spec: TopicSpec, event: Event | None = None, *, key: bytes, value: bytes = b""
) -> None:
    """One record on ``spec``'s topic as a producer outside refnet would write it: ``event``
    encoded, or ``value`` as it is under a valid need's headers."""
    headers, encoded = encode(
        event or need_submitted(), event_id=uuid4(), source="/tests", time=datetime.now(UTC)
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(
            spec.name, key=key, value=encoded if event else value, headers=headers
        )
    finally:
        await producer.stop()


async def status_changes(bootstrap: str, need_id: UUID) -> list[Any]:
    records = await read_topic(bootstrap, REFERRAL_EVENTS.name)
    changes = decodable(REFERRAL_EVENTS, records)
    return [c for c in changes if c.need_id == need_id]


async def dead_letters(bootstrap: str, spec: TopicSpec, key: str) -> list[Any]:
    return [r for r in await read_topic(bootstrap, spec.dlq) if r.key == key.encode()]


def test_an_answer_dead_lettered_before_its_need_is_replayed_from_the_dashboard_and_taken(
    page: Page, stack: LocalStack
) -> None:
    """An agency's OfferAccepted reaches matching before the need it answers: matching
    dead-letters it ("no offer ... for need ...": an answer for a need it does not know).
    Once the need has arrived and been offered to that agency, under the same offer id
    (offer ids are derived from the need and the attempt), the very same record can be
    processed. The operator replays it from the dashboard: matching takes the acceptance
    and the referral moves to accepted, the dead letter shows as replayed and no new dead
    letter appears for it; replaying it again is refused.

    The need is written to refnet.needs.v1 directly (this test stands in for intake), so
    that its id is known before it exists; its consent names one agency, one already seen to
    take such needs, so that agency is the one offered. Beside it, a record that is not
    JSON at all shows how any dead letter is listed: its reason, never its content."""
    assert stack.infra is not None
    bootstrap = stack.infra.kafka_bootstrap_servers
    at = OffsetFileClock(stack.clock_offset_file).now()

    # Given a record on refnet.needs.v1 that is not JSON, holding a would-be identifier
    poison_key, identifier = str(uuid4()), f"Quartermaine-{uuid4().hex[:6]}"
    run(produce(bootstrap, NEEDS, key=poison_key.encode(),
                value=b'{"legal_name": "Zebulon ' + identifier.encode()))  # fmt: skip
    # and an agency that takes peer support needs in 97214 (a first need shows which)
    probe = need_submitted(NeedCategory.PEER_SUPPORT, at=at)
    run(produce(bootstrap, NEEDS, probe, key=str(probe.need_id).encode()))
    offered = wait_for(
        lambda: [
            c
            for c in run(status_changes(bootstrap, probe.need_id))
            if c.status == ReferralStatus.OFFERED
        ],  # fmt: skip
        "the first need offered",
    )
    agency_id = offered[0].agency_id
    # and that agency's acceptance of a need matching has not seen yet
    need = need_submitted(
        NeedCategory.PEER_SUPPORT,
        at=at,
        consent=ConsentScope(
            consent_id=uuid4(),
            categories=frozenset({NeedCategory.PEER_SUPPORT}),
            recipients=ConsentRecipients.NAMED,
            named_agencies=frozenset({agency_id}),
            expires_on=at.date().replace(year=at.year + 1),
        ),
    )
    offer_id = offer_id_for(need.need_id, 1)
    answer = OfferAccepted(
        offer_id=offer_id, need_id=need.need_id, agency_id=agency_id, accepted_at=at
    )
    run(produce(bootstrap, OFFER_RESPONSES, answer, key=str(need.need_id).encode()))
    dead = wait_for(
        lambda: run(dead_letters(bootstrap, OFFER_RESPONSES, str(need.need_id))),
        "the early acceptance dead-lettered",
    )
    assert header(dead[0], "dlq_consumer") == "matching"
    wait_for(lambda: run(dead_letters(bootstrap, NEEDS, poison_key)), "the poison dead-lettered")

    # When the operator opens the dashboard, both are listed with their reasons
    open_dashboard_as_admin(page, stack, "DLQ Admin")
    poison = page.locator(f'tr[data-dlq-topic="{NEEDS.dlq}"][data-key="{poison_key}"]')
    expect(poison.first).to_contain_text("not valid JSON")
    assert identifier not in page.content(), "a dead letter's content is never shown"
    row = page.locator(f'tr[data-dlq-topic="{OFFER_RESPONSES.dlq}"][data-key="{need.need_id}"]')
    expect(row.first).to_contain_text(f"no offer {offer_id} for need {need.need_id}")
    expect(row.first).to_have_attribute("data-state", "dead")
    expect(row.first).to_have_attribute("data-ce-type", "org.refnet.offer.accepted")

    # and, once the need has arrived and been offered to that agency,
    run(produce(bootstrap, NEEDS, need, key=str(need.need_id).encode()))
    offers = wait_for(
        lambda: [
            c
            for c in run(status_changes(bootstrap, need.need_id))
            if c.status == ReferralStatus.OFFERED
        ],  # fmt: skip
        "the need offered",
    )
    assert (offers[0].agency_id, offers[0].offer_id) == (agency_id, offer_id)
    # replays the acceptance
    row.first.get_by_role("button", name=re.compile(r"^Replay")).click()

    # Then the dashboard says it was replayed, by whom
    expect(page.get_by_role("status")).to_contain_text("Replayed")
    expect(row.first).to_have_attribute("data-state", "replayed")
    expect(row.first).to_contain_text("Replayed by worker:dlq.admin")
    # and matching took the acceptance: the referral is accepted by that agency
    accepted = wait_for(
        lambda: [
            c
            for c in run(status_changes(bootstrap, need.need_id))
            if c.status == ReferralStatus.ACCEPTED
        ],  # fmt: skip
        "the replayed acceptance taken",
    )
    assert accepted[0].agency_id == agency_id
    # and no new dead letter came of it: every one for this need is the replayed original
    for letter in run(dead_letters(bootstrap, OFFER_RESPONSES, str(need.need_id))):
        assert header(letter, "dlq_offset") == header(dead[0], "dlq_offset")
    # and replaying it again, from the command line, is refused
    again = refnet_dlq(stack, "replay", OFFER_RESPONSES.dlq, str(dead[0].partition),
                       str(dead[0].offset))  # fmt: skip
    assert again.returncode != 0 and "already replayed" in again.stderr
    listed = refnet_dlq(stack, "list", "--topic", OFFER_RESPONSES.name)
    assert listed.returncode == 0
    assert "replayed by worker:dlq.admin" in listed.stdout
    assert identifier not in refnet_dlq(stack, "list").stdout


def test_an_admin_sees_the_funnel_and_time_to_accept_of_an_accepted_need(
    page: Page, stack: LocalStack, tmp_path: Path
) -> None:
    # Given a need a worker submitted and its agency accepted
    worker = WorkerBrowser(stack.intake_url)
    worker.log_in(DEMO_WORKER_EMAIL, stack.secrets["DEMO_WORKER_PASSWORD"])
    form = intake_form(
        Person.new("Fenella", "Achterberg"),
        stack_today(stack),
        needs=[("peer-support", "soon", "")],
    )
    intake_path = worker.submit_intake(form).url.path
    need = wait_for(
        lambda: (rows := worker.needs(intake_path)) and rows[0].status == "offered" and rows[0],
        "the need offered",
    )
    accept_over_http(stack, need.agency_id, need.need_id)
    wait_for(lambda: worker.needs(intake_path)[0].status == "accepted", "the need accepted")

    # When an admin opens the operator dashboard
    open_dashboard_as_admin(page, stack, "Operations Admin")
    page.screenshot(path=str(tmp_path / "operator-dashboard.png"), full_page=True)
    if os.environ.get("REFNET_UPDATE_SCREENSHOTS") == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tmp_path / "operator-dashboard.png", SCREENSHOT)

    # Then the funnel is drawn with that need submitted, offered and accepted
    funnel = bar_values(page, "funnel-chart")
    assert list(funnel) == ["Submitted", "Offered", "Accepted", "Completed"]
    assert funnel["Submitted"] >= funnel["Offered"] >= funnel["Accepted"] >= 1
    # and its time to accept is a bar of the distribution
    times = bar_values(page, "time-to-accept-chart")
    assert sum(times.values()) >= 1 and any(value > 0 for value in times.values())
    # with each chart named and its numbers also in a table
    funnel_svg = page.locator('svg[data-chart="funnel-chart"]')
    expect(funnel_svg).to_have_attribute("role", "img")
    expect(funnel_svg.locator("desc")).to_contain_text(f"Accepted, {funnel['Accepted']} needs")
    accepted_row = page.locator('table[data-table="funnel"] tr[data-stage="accepted"]')
    expect(accepted_row).to_contain_text(str(funnel["Accepted"]))
    # and the accepting agency's answers in the agencies table
    agency = page.locator(f'table[data-table="agencies"] tr[data-agency-id="{need.agency_id}"]')
    expect(agency).to_be_visible()
    # and each service's health, whether or not it answers yet
    services = page.locator("article[data-service]")
    assert sorted(services.nth(i).get_attribute("data-service") or "" for i in range(3)) == [
        "intake",
        "matching",
        "notifications",
    ]
    assert all(
        services.nth(i).get_attribute("data-state") in ("ready", "not-ready", "unreachable")
        for i in range(services.count())
    )
    assert accessibility_problems(page) == []


def test_the_dashboard_and_its_replays_are_for_admins_only(stack: LocalStack) -> None:
    replay = {"dlq_topic": NEEDS.dlq, "dlq_partition": "0", "dlq_offset": "0"}
    worker = WorkerBrowser(stack.intake_url)
    home = worker.log_in(*add_worker(stack, "Plain Worker"))
    assert "/admin/dashboard" not in home.text
    assert worker.http.get("/admin/dashboard").status_code == 403
    forged = {**replay, "csrf_token": csrf_token(home.text)}
    assert worker.http.post("/admin/dashboard/dlq/replay", data=forged).status_code == 403

    admin = WorkerBrowser(stack.intake_url)
    admin_home = admin.log_in(*add_worker(stack, "Another Admin", role="admin"))
    assert admin.http.post("/admin/dashboard/dlq/replay", data=replay).status_code == 403
    agency_topic = {**replay, "dlq_topic": "refnet.agency.ag-001.offers.dlq"}
    sent = admin.http.post(
        "/admin/dashboard/dlq/replay",
        data={**agency_topic, "csrf_token": csrf_token(admin_home.text)},
    )
    assert sent.status_code == 400, "only the platform topics' DLQs are replayed"

    anonymous = WorkerBrowser(stack.intake_url).http.get("/admin/dashboard")
    assert anonymous.url.path == "/login"


def refnet_dlq(stack: LocalStack, *args: str) -> subprocess.CompletedProcess[str]:
    assert stack.infra is not None
    env = {
        **os.environ,
        "DATABASE_URL": stack.infra.database_url,
        "KAFKA_BOOTSTRAP_SERVERS": stack.infra.kafka_bootstrap_servers,
    }
    return subprocess.run(
        [sys.executable, "-m", "services.cli", "dlq", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
