"""Who may do what with an offer: the authorization matrix over every agency-facing endpoint,
by API key and by the web inbox's session.

Agency A holds an offer. Agency B, with a valid key or a logged-in user, can never read,
answer, see the contact details of or export A's offer: each is a 404, as for an offer that
never was. Nobody sees contact details before acceptance (403). A revoked key and anonymous
requests are refused. Once A accepts, A alone sees the person, and every view is in the
person's accounting of disclosures."""

from __future__ import annotations

import secrets
from typing import Any

import httpx
import pytest
import pytest_asyncio

from services.local_stack import DEMO_WORKER_EMAIL, LocalStack
from services.notifications.fhir import validate_bundle
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

# Every agency-facing endpoint about one offer, as (method, path template, body).
OFFER_ENDPOINTS = [
    ("GET", "/agency/v1/offers/{offer_id}", None),
    ("POST", "/agency/v1/offers/{offer_id}/accept", None),
    ("POST", "/agency/v1/offers/{offer_id}/decline", {"reason": "no-capacity"}),
    ("POST", "/agency/v1/offers/{offer_id}/outcome", {"outcome": "got-help"}),
    ("GET", "/agency/v1/offers/{offer_id}/contact", None),
    ("GET", "/agency/v1/offers/{offer_id}/fhir", None),
]
# The agency's own collections: anonymous and revoked callers are refused them too.
COLLECTION_ENDPOINTS = [
    ("GET", "/agency/v1/offers", None),
    ("GET", "/agency/v1/referrals", None),
    ("GET", "/agency/v1/webhook", None),
    ("PUT", "/agency/v1/services/svc-x/capacity", {"status": "capacity"}),
]
INBOX_OFFER_PAGES = [
    ("GET", "/inbox/offers/{offer_id}", {}),
    ("GET", "/inbox/offers/{offer_id}/contact", {}),
    ("POST", "/inbox/offers/{offer_id}/accept", {}),
    ("POST", "/inbox/offers/{offer_id}/decline", {"reason": "no-capacity"}),
    ("POST", "/inbox/offers/{offer_id}/outcome", {"outcome": "got-help"}),
]


def other_agency(agency_id: str) -> str:
    return "ag-002" if agency_id != "ag-002" else "ag-003"


class AgencyInbox:
    """Someone at an agency in the web inbox: a session cookie and the pages' CSRF token."""

    def __init__(self, stack: LocalStack, agency_id: str) -> None:
        self.email = f"inbox-{secrets.token_hex(4)}@{agency_id}.example.org"
        password = secrets.token_urlsafe(16)
        refnet_cli(
            stack,
            "agency",
            "user",
            "add",
            agency_id,
            self.email,
            "--name",
            "Inbox Tester",
            "--password-stdin",
            stdin=password + "\n",
        )
        self.http = httpx.Client(base_url=stack.agency_api_url, timeout=30)
        login_page = self.http.get("/inbox/login")
        self.csrf = csrf_token(login_page.text)
        landed = self.http.post(
            "/inbox/login",
            data={"email": self.email, "password": password, "csrf_token": self.csrf},
            follow_redirects=True,
        )
        assert landed.status_code == 200 and landed.url.path == "/inbox", landed.text
        self.csrf = csrf_token(landed.text)

    def request(self, method: str, path: str, data: dict[str, str]) -> httpx.Response:
        if method == "GET":
            return self.http.get(path)
        return self.http.post(path, data={**data, "csrf_token": self.csrf})


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def held_offer(stack: LocalStack) -> dict[str, Any]:
    """One need offered to agency A, with keys for A and B and a revoked key of A's."""
    worker = WorkerBrowser(stack.intake_url)
    worker.log_in(DEMO_WORKER_EMAIL, stack.secrets["DEMO_WORKER_PASSWORD"])
    person = Person.new("Ifeoma", "Harrowgate")
    fields = intake_form(person, stack_today(stack), needs=(("peer-support", "urgent", ""),))
    intake_path = worker.submit_intake(fields).url.path
    rows = await eventually(
        lambda: (r := worker.needs(intake_path)) and r[0].status == "offered" and r,
        "the need offered",
    )
    need = rows[0]
    agency_a, agency_b = need.agency_id, other_agency(need.agency_id)
    revoked = refnet_cli(stack, "agency", "key", agency_a).strip()
    refnet_cli(stack, "agency", "revoke-key", agency_a, "--all")
    key_a = refnet_cli(stack, "agency", "key", agency_a).strip()
    key_b = refnet_cli(stack, "agency", "key", agency_b).strip()
    async with httpx.AsyncClient(base_url=stack.agency_api_url) as http:
        listed = await http.get("/agency/v1/offers", headers={"Authorization": f"Bearer {key_a}"})
    offer = next(o for o in listed.json() if o["need_id"] == need.need_id)
    return {
        "worker": worker,
        "person": person,
        "intake_path": intake_path,
        "need_id": need.need_id,
        "offer_id": offer["offer_id"],
        "agency_a": agency_a,
        "agency_b": agency_b,
        "key_a": key_a,
        "key_b": key_b,
        "revoked": revoked,
    }


def call(http: httpx.Client, method: str, path: str, body: Any, key: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return http.request(method, path, json=body, headers=headers)


def test_anonymous_and_revoked_callers_are_refused_everything(
    stack: LocalStack, held_offer: dict[str, Any]
) -> None:
    with httpx.Client(base_url=stack.agency_api_url, timeout=30) as http:
        for method, template, body in OFFER_ENDPOINTS + COLLECTION_ENDPOINTS:
            path = template.format(offer_id=held_offer["offer_id"])
            for key in (None, held_offer["revoked"], "rn_not-a-key"):
                response = call(http, method, path, body, key)
                assert response.status_code == 401, (method, path, key, response.text)


def test_another_agency_cannot_touch_the_offer_by_api(
    stack: LocalStack, held_offer: dict[str, Any]
) -> None:
    with httpx.Client(base_url=stack.agency_api_url, timeout=30) as http:
        for method, template, body in OFFER_ENDPOINTS:
            path = template.format(offer_id=held_offer["offer_id"])
            response = call(http, method, path, body, held_offer["key_b"])
            assert response.status_code == 404, (method, path, response.text)
        listed = call(http, "GET", "/agency/v1/offers", None, held_offer["key_b"]).json()
        referrals = call(http, "GET", "/agency/v1/referrals", None, held_offer["key_b"]).json()
    assert held_offer["need_id"] not in {o["need_id"] for o in listed + referrals}


def test_another_agency_cannot_touch_the_offer_in_the_inbox(
    stack: LocalStack, held_offer: dict[str, Any]
) -> None:
    inbox = AgencyInbox(stack, held_offer["agency_b"])
    assert held_offer["offer_id"] not in inbox.http.get("/inbox").text
    for method, template, data in INBOX_OFFER_PAGES:
        path = template.format(offer_id=held_offer["offer_id"])
        response = inbox.request(method, path, data)
        assert response.status_code == 404, (method, path, response.text)


def test_the_inbox_needs_a_login_and_its_forms_a_csrf_token(
    stack: LocalStack, held_offer: dict[str, Any]
) -> None:
    with httpx.Client(base_url=stack.agency_api_url, timeout=30) as anonymous:
        for method, template, data in INBOX_OFFER_PAGES:
            path = template.format(offer_id=held_offer["offer_id"])
            response = anonymous.request(method, path, data=data or None)
            # A form post without a session has no CSRF token to match: refused either way.
            assert response.status_code in (303, 403), (method, path, response.status_code)
            if response.status_code == 303:
                assert response.headers["location"] == "/inbox/login"
    inbox = AgencyInbox(stack, held_offer["agency_a"])
    forged = inbox.http.post(
        f"/inbox/offers/{held_offer['offer_id']}/accept", data={"csrf_token": "forged"}
    )
    assert forged.status_code == 403


async def test_contact_details_only_after_acceptance_and_only_for_the_acceptor(
    stack: LocalStack, held_offer: dict[str, Any]
) -> None:
    offer_id, key_a = held_offer["offer_id"], held_offer["key_a"]
    contact = f"/agency/v1/offers/{offer_id}/contact"
    async with httpx.AsyncClient(base_url=stack.agency_api_url, timeout=30) as http:
        auth_a = {"Authorization": f"Bearer {key_a}"}
        # Before acceptance: refused, by API and in A's own inbox
        before = await http.get(contact, headers=auth_a)
        assert before.status_code == 403, before.text
        inbox = AgencyInbox(stack, held_offer["agency_a"])
        assert inbox.http.get(f"/inbox/offers/{offer_id}/contact").status_code == 403

        accepted = await http.post(f"/agency/v1/offers/{offer_id}/accept", headers=auth_a)
        assert accepted.status_code == 202, accepted.text

        async def released() -> dict[str, Any] | None:
            response = await http.get(contact, headers=auth_a)
            assert response.status_code in (200, 403, 409), response.text
            return response.json() if response.status_code == 200 else None

        details = await eventually(released, "contact details released to the acceptor")
        fhir = await http.get(f"/agency/v1/offers/{offer_id}/fhir", headers=auth_a)
        refused_b = await http.get(
            contact, headers={"Authorization": f"Bearer {held_offer['key_b']}"}
        )
    person: Person = held_offer["person"]
    assert details["name"] == person.preferred_name
    assert details["preferred_channel"] == "sms"
    assert details["phone"] == person.phone and details["email"] is None  # minimum necessary
    assert "42 CFR part 2" in details["notice"]
    assert details["consent"]["purpose"] and details["consent"]["categories"]
    assert refused_b.status_code == 404

    # And the accepted referral exports as valid FHIR R4, its Task accepted, nobody named
    assert fhir.headers["content-type"] == "application/fhir+json"
    bundle = fhir.json()
    validate_bundle(bundle)
    tasks = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Task"]
    assert [t["status"] for t in tasks] == ["accepted"]
    assert not any(identifier in fhir.text for identifier in person.identifiers)

    # And each view is a disclosure in the person's accounting, naming who looked
    page = inbox.http.get(f"/inbox/offers/{offer_id}/contact")
    assert page.status_code == 200 and person.phone in page.text
    assert page.headers["cache-control"] == "no-store"
    rows = disclosures_of(stack, person)
    ours = [r for r in rows if r["need_id"] == held_offer["need_id"]]
    assert len(ours) == 2
    assert {r["recipient_id"] for r in ours} == {held_offer["agency_a"]}
    seen_by = {r["recipient_user"] for r in ours}
    assert f"user:{inbox.email}" in seen_by
    assert any(v.startswith("api-key:") for v in seen_by)


def disclosures_of(stack: LocalStack, person: Person) -> list[dict[str, str]]:
    """The person's accounting of disclosures as an admin downloads it."""
    import csv
    import io

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
    link = next(
        part.split('"')[0]
        for part in found.text.split('href="')[1:]
        if part.startswith("/admin/persons/")
    )
    return list(csv.DictReader(io.StringIO(admin.http.get(f"{link}.csv").text)))
