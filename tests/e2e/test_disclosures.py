"""The accounting of disclosures: a worker records giving the accepting agency the person's
contact details, and an admin finds that disclosure for the person, on the page and in CSV."""

from __future__ import annotations

import csv
import io

import httpx
import pytest

from services.local_stack import DEMO_WORKER_EMAIL, LocalStack
from tests.e2e.browser import (
    Person,
    WorkerBrowser,
    add_worker,
    csrf_token,
    intake_form,
    stack_today,
)
from tests.e2e.cli import refnet_cli
from tests.kafka_reader import eventually

pytestmark = pytest.mark.e2e


async def test_a_recorded_contact_release_appears_in_the_persons_accounting(
    stack: LocalStack,
) -> None:
    # Given a need accepted by an agency
    worker = WorkerBrowser(stack.intake_url)
    worker.log_in(DEMO_WORKER_EMAIL, stack.secrets["DEMO_WORKER_PASSWORD"])
    person = Person.new("Oluwaseun", "Brightwater")
    intake_path = worker.submit_intake(intake_form(person, stack_today(stack))).url.path
    offered = await eventually(
        lambda: (r := worker.needs(intake_path)) and r[0].status == "offered" and r,
        "the first need offered",
    )
    need = offered[0]
    key = refnet_cli(stack, "agency", "key", need.agency_id).strip()
    async with httpx.AsyncClient(base_url=stack.agency_api_url) as agency:
        offers = await agency.get("/agency/v1/offers", headers={"Authorization": f"Bearer {key}"})
        offer = next(o for o in offers.json() if o["need_id"] == need.need_id)
        await agency.post(
            f"/agency/v1/offers/{offer['offer_id']}/accept",
            headers={"Authorization": f"Bearer {key}"},
        )
    await eventually(
        lambda: worker.needs(intake_path)[0].status == "accepted", "the first need accepted"
    )

    # When the worker records giving the agency the person's contact details
    page = worker.http.get(intake_path)
    release = f"{intake_path}/needs/{need.need_id}/contact-released"
    assert f'action="{release}"' in page.text
    recorded = worker.http.post(release, data={"csrf_token": csrf_token(page.text)})
    assert recorded.status_code == 200 and recorded.url.path == intake_path

    # Then an admin finds the person and sees that disclosure, on the page and as CSV
    admin = WorkerBrowser(stack.intake_url)
    admin.log_in(*add_worker(stack, "Records Admin", role="admin"))
    search_page = admin.http.get("/admin/persons")
    found = admin.http.post(
        "/admin/persons",
        data={
            "given_name": person.legal_given_name,
            "family_name": person.legal_family_name,
            "date_of_birth": person.date_of_birth,
            "csrf_token": csrf_token(search_page.text),
        },
    )
    assert person.legal_family_name not in str(found.url), "a name must never be in a URL"
    link = next(
        part.split('"')[0]
        for part in found.text.split('href="')[1:]
        if part.startswith("/admin/persons/")
    )
    listing = admin.http.get(link)
    assert need.agency_id in listing.text
    rows = list(csv.DictReader(io.StringIO(admin.http.get(f"{link}.csv").text)))
    assert [(r["recipient_id"], r["need_id"]) for r in rows] == [(need.agency_id, need.need_id)]
    assert "phone" in rows[0]["information"]
    assert rows[0]["consent_id"]
