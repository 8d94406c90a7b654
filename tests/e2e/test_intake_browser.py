"""An intake worker in a real browser (Debian's Chromium, driven by Playwright): log in, fill
the whole recovery intake by its labels, recover from field errors, and watch the tracker
move to offered and accepted without reloading. axe-core checks each page on the way."""

from __future__ import annotations

import re
from datetime import date
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect

from services.intake.models import BARC10_ITEMS
from services.local_stack import DEMO_WORKER_EMAIL, LocalStack
from tests.e2e.browser import stack_today
from tests.e2e.chromium import accessibility_problems, needs_chromium
from tests.e2e.cli import refnet_cli

# Waiting for the network to route a need, not a measure of speed.
ROUTING_WAIT_MS = 90_000

pytestmark = [
    pytest.mark.e2e,
    needs_chromium,
]


def log_in(page: Page, stack: LocalStack) -> None:
    page.goto(f"{stack.intake_url}/login")
    page.get_by_label("Email").fill(DEMO_WORKER_EMAIL)
    page.get_by_label("Password").fill(stack.secrets["DEMO_WORKER_PASSWORD"])
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()


def fill_the_whole_intake(page: Page, given: str, family: str) -> None:
    page.get_by_label("Legal first name").fill(given)
    page.get_by_label("Legal last name").fill(family)
    page.get_by_label("Preferred name").fill(given[:3])
    page.get_by_label("Date of birth").fill("1979-07-02")
    page.get_by_role("textbox", name="Email").fill(f"{given.lower()}@example.org")
    page.get_by_role("textbox", name="Phone").fill("(971) 555-0188")
    page.get_by_role("radio", name="Text message").check()
    page.get_by_label("Contact them from").fill("09:30")
    page.get_by_label("Contact them until").fill("18:00")
    page.get_by_role("checkbox", name="Vietnamese").check()
    page.get_by_label("ZIP code").fill("97214")
    page.get_by_label("County").fill("Multnomah")
    page.get_by_role("radio", name="In treatment").check()

    page.get_by_text("Recovery capital: BARC-10").click()
    for number, item in enumerate(BARC10_ITEMS, start=1):
        page.get_by_label(f"{number}. {item}").select_option(str(3 + number % 3))
    expect(page.locator("#barc10-total")).to_have_text("40 of 60")

    first = page.get_by_role("group", name="Need 1")
    first.get_by_label("Category").select_option(label="Peer support group")
    first.get_by_label("Urgency").select_option("urgent")
    first.get_by_label("Note for yourself").fill("Prefers a women's group")
    second = page.get_by_role("group", name="Need 2")
    second.get_by_label("Category").select_option(label="Employment / job referral")

    page.get_by_label("Needs child care to attend").check()
    page.get_by_label("Needs a provider that supports medication-assisted treatment").check()
    page.get_by_label("Insurance").select_option("medicaid")

    page.get_by_role("radio", name="Every network agency that offers the chosen services").check()
    page.get_by_label("Signature: the person's full name, typed").fill(f"{given} {family}")
    page.get_by_label("The person has read (or been read) this consent and agrees").check()


def expect_signed_today(page: Page, days: set[date]) -> None:
    """The consent is dated by the services' clock (which tests move on), not the test's; a
    form opened across the services' midnight may carry either day."""
    either = "|".join(re.escape(day.isoformat()) for day in days)
    expect(page.get_by_label("Signed on")).to_have_value(re.compile(f"^({either})$"))


def accept_over_http(stack: LocalStack, agency_id: str, need_id: str) -> None:
    key = refnet_cli(stack, "agency", "key", agency_id).strip()
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=stack.agency_api_url, headers=headers) as agency:
        offers: list[dict[str, Any]] = agency.get("/agency/v1/offers").json()
        offer = next(o for o in offers if o["need_id"] == need_id)
        response = agency.post(f"/agency/v1/offers/{offer['offer_id']}/accept")
    assert response.status_code == 202, response.text


def test_the_login_page_has_no_serious_accessibility_problems(
    page: Page, stack: LocalStack
) -> None:
    page.goto(f"{stack.intake_url}/login")
    assert accessibility_problems(page) == []


def test_field_errors_name_the_field_keep_the_values_and_lead_to_the_field(
    page: Page, stack: LocalStack
) -> None:
    log_in(page, stack)
    page.get_by_role("link", name="Start a new intake").click()
    assert accessibility_problems(page) == []

    page.get_by_label("Legal last name").fill("Okonkwo-Brandt")
    page.get_by_role("textbox", name="Phone").fill("555")
    page.get_by_label("ZIP code").fill("9721")
    page.get_by_role("button", name="Submit intake").click()

    summary = page.get_by_role("alert")
    expect(summary).to_contain_text("problems with this intake")
    expect(page.locator("#person-phone-error")).to_have_text(
        "Enter a phone number with 10 digits, like 503-555-0100."
    )
    expect(page.get_by_label("Legal last name")).to_have_value("Okonkwo-Brandt")
    expect(page.get_by_label("ZIP code")).to_have_value("9721")
    assert accessibility_problems(page) == []

    summary.get_by_role("link", name="Enter a 5-digit ZIP code, like 97214.").click()
    expect(page.get_by_label("ZIP code")).to_be_focused()


def test_a_worker_submits_the_whole_intake_and_watches_it_accepted_without_reloading(
    page: Page, stack: LocalStack
) -> None:
    log_in(page, stack)
    opened_on = stack_today(stack)
    page.get_by_role("link", name="Start a new intake").click()
    expect_signed_today(page, {opened_on, stack_today(stack)})
    fill_the_whole_intake(page, "Yevgenia", "Thornbury-Achebe")
    page.get_by_role("button", name="Submit intake").click()

    expect(page.get_by_role("heading", name="Referrals for Yev Thornbury-Achebe")).to_be_visible()
    assert accessibility_problems(page) == []
    page.evaluate("window.refnetSamePage = true")

    offered = page.locator('tr[data-need-id] td[data-status="offered"]')
    expect(offered).to_have_count(2, timeout=ROUTING_WAIT_MS)
    row = page.locator("tr[data-need-id]").first
    need_id, agency_id = row.get_attribute("data-need-id"), row.get_attribute("data-agency-id")
    assert need_id and agency_id
    assert accessibility_problems(page) == []

    accept_over_http(stack, agency_id, need_id)

    expect(row.locator("td[data-status]")).to_have_attribute(
        "data-status", "accepted", timeout=ROUTING_WAIT_MS
    )
    expect(row).to_contain_text("Accepted")
    assert page.evaluate("window.refnetSamePage") is True, "the tracker reloaded the page"
