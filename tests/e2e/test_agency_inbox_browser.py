"""Someone at a partner agency in a real browser (Debian's Chromium, driven by Playwright):
log in to the web inbox, open an offer, accept it, see the person's contact details with
the 42 CFR Part 2 notice and the consent's scope, and record the outcome, which the intake
worker's tracker then shows."""

from __future__ import annotations

import secrets
import time

import pytest
from playwright.sync_api import Page, expect

from services.local_stack import DEMO_WORKER_EMAIL, LocalStack
from tests.e2e.browser import Person, WorkerBrowser, intake_form, stack_today
from tests.e2e.chromium import accessibility_problems, needs_chromium
from tests.e2e.cli import refnet_cli

pytestmark = [
    pytest.mark.e2e,
    needs_chromium,
]
# Waiting for the network to route a need or apply an answer, not a measure of speed.
ROUTING_WAIT_MS = 90_000


def offered_need(stack: LocalStack, person: Person) -> tuple[WorkerBrowser, str, str, str]:
    """A need submitted by the demo worker and offered: the worker, tracker, need, agency."""
    worker = WorkerBrowser(stack.intake_url)
    worker.log_in(DEMO_WORKER_EMAIL, stack.secrets["DEMO_WORKER_PASSWORD"])
    fields = intake_form(person, stack_today(stack), needs=(("peer-support", "urgent", ""),))
    intake_path = worker.submit_intake(fields).url.path
    for _ in range(ROUTING_WAIT_MS // 250):
        rows = worker.needs(intake_path)
        if rows and rows[0].status == "offered":
            return worker, intake_path, rows[0].need_id, rows[0].agency_id
        time.sleep(0.25)
    raise AssertionError("the need was never offered")


def agency_user(stack: LocalStack, agency_id: str) -> tuple[str, str]:
    email = f"coordinator-{secrets.token_hex(4)}@{agency_id}.example.org"
    password = secrets.token_urlsafe(16)
    refnet_cli(
        stack,
        "agency",
        "user",
        "add",
        agency_id,
        email,
        "--name",
        "Intake Coordinator",
        "--password-stdin",
        stdin=password + "\n",
    )
    return email, password


def reload_until(page: Page, text: str) -> None:
    for _ in range(ROUTING_WAIT_MS // 500):
        if page.get_by_text(text).count():
            return
        time.sleep(0.5)
        page.reload()
    raise AssertionError(f"the page never showed {text!r}")


def test_an_agency_accepts_sees_the_person_with_the_notice_and_closes_the_loop(
    page: Page, stack: LocalStack
) -> None:
    person = Person.new("Tomasz", "Wrenfield")
    worker, intake_path, need_id, agency_id = offered_need(stack, person)
    email, password = agency_user(stack, agency_id)

    # Given someone at the agency logs in to the inbox
    page.goto(f"{stack.agency_api_url}/inbox/login")
    assert accessibility_problems(page) == []
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name=f"Referrals for {agency_id}")).to_be_visible()

    # When they open the offer: de-identified facts and why refnet chose them, no name
    waiting = page.get_by_role("table", name="Offers waiting for your answer")
    waiting.locator(f'tr[data-need-id="{need_id}"]').get_by_role("link").click()
    expect(page.get_by_role("heading", name="Why refnet chose your agency")).to_be_visible()
    expect(page.get_by_text("97214, Multnomah county")).to_be_visible()
    for identifier in person.identifiers:
        assert identifier not in page.content()
    assert accessibility_problems(page) == []

    # And accept it
    page.get_by_role("button", name="Accept this referral").click()
    reload_until(page, "Status: Accepted")

    # Then the contact details appear with the Part 2 notice and the consent's scope
    page.get_by_role("link", name="Show contact details").click()
    notice = page.locator("#part2-notice")
    expect(notice).to_contain_text("42 CFR part 2 prohibits unauthorized use or disclosure")
    expect(page.locator("#contact")).to_contain_text(person.preferred_name)
    expect(page.locator("#contact")).to_contain_text(person.phone)
    expect(page.locator("#consent-scope")).to_contain_text("Peer support group")
    assert accessibility_problems(page) == []

    # When they record the outcome
    page.get_by_role("link", name="Back to the referral").click()
    page.get_by_role("radio", name="Got help").check()
    page.get_by_role("button", name="Record outcome").click()
    expect(page.get_by_role("status")).to_contain_text("Outcome recorded")

    # Then the intake worker's tracker shows it
    for _ in range(ROUTING_WAIT_MS // 250):
        rows = {r.need_id: r for r in worker.needs(intake_path)}
        if rows[need_id].status == "completed":
            break
        time.sleep(0.25)
    else:
        raise AssertionError(f"the tracker shows {rows[need_id].status}, not completed")
