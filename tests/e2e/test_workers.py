"""Worker accounts as an administrator runs them with `refnet users`: adding and disabling
workers, the login throttle, roles, and API tokens for the JSON API."""

from __future__ import annotations

import secrets

import httpx
import pytest

from services.local_stack import LocalStack
from tests.e2e.browser import WorkerBrowser, add_worker, stack_today
from tests.e2e.cli import refnet_cli
from tests.factories import intake_request

pytestmark = pytest.mark.e2e

MAX_FAILURES_PER_ACCOUNT = 5


def test_an_added_worker_can_log_in(stack: LocalStack) -> None:
    email, password = add_worker(stack, "New Worker")

    browser = WorkerBrowser(stack.intake_url)
    response = browser.log_in(email, password)

    assert response.status_code == 200
    assert response.url.path == "/"
    assert "Dashboard" in response.text and "New Worker" in response.text
    assert browser.http.get("/intakes/new").url.path == "/intakes/new"


def test_a_disabled_worker_cannot_log_in_and_their_session_and_tokens_stop_working(
    stack: LocalStack,
) -> None:
    email, password = add_worker(stack, "Leaving Worker")
    browser = WorkerBrowser(stack.intake_url)
    assert browser.log_in(email, password).url.path == "/"
    token = refnet_cli(stack, "users", "token", email).strip()
    api = httpx.Client(base_url=stack.intake_url, timeout=30)
    some_intake = "/api/v1/intakes/00000000-0000-0000-0000-000000000000"
    assert api.get(some_intake, headers={"Authorization": f"Bearer {token}"}).status_code == 404

    refnet_cli(stack, "users", "disable", email)

    # Their open session is refused: the next page sends them to the login page
    assert browser.http.get("/").url.path == "/login"
    assert browser.http.get("/intakes/new").url.path == "/login"
    # And they cannot log in again
    again = WorkerBrowser(stack.intake_url).log_in(email, password)
    assert again.status_code == 401
    # And their API token is revoked
    assert api.get(some_intake, headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_after_five_wrong_passwords_even_the_right_one_is_refused(stack: LocalStack) -> None:
    email, password = add_worker(stack, "Targeted Worker")
    browser = WorkerBrowser(stack.intake_url)

    for _ in range(MAX_FAILURES_PER_ACCOUNT):
        assert browser.log_in(email, "guess-" + secrets.token_hex(4)).status_code == 401

    refused = browser.log_in(email, password)
    assert refused.status_code == 429
    assert "Too many failed logins" in refused.text
    assert browser.http.get("/").url.path == "/login"
    # The throttle is per account: a colleague at the same address still gets in.
    colleague = WorkerBrowser(stack.intake_url)
    assert colleague.log_in(*add_worker(stack, "Colleague")).status_code == 200


def test_only_an_admin_opens_the_accounting_of_disclosures(stack: LocalStack) -> None:
    worker = WorkerBrowser(stack.intake_url)
    worker.log_in(*add_worker(stack, "Intake Worker"))
    admin = WorkerBrowser(stack.intake_url)
    admin.log_in(*add_worker(stack, "Admin Worker", role="admin"))

    assert worker.http.get("/admin/persons").status_code == 403
    assert 'href="/admin/persons"' not in worker.http.get("/").text
    page = admin.http.get("/admin/persons")
    assert page.status_code == 200
    assert "Accounting of disclosures" in page.text


def test_the_json_api_takes_a_worker_token_and_makes_one_intake_per_submission(
    stack: LocalStack,
) -> None:
    email, _ = add_worker(stack, "Integration")
    token = refnet_cli(stack, "users", "token", email).strip()
    api = httpx.Client(base_url=stack.intake_url, timeout=30)
    # A person of this test's own: the stack is shared, and a known person is a 409.
    body = intake_request(
        stack_today(stack),
        person__legal_family_name=f"Quintanilla-{secrets.token_hex(4)}",
        person__date_of_birth="1979-08-02",
    )

    assert api.post("/api/v1/intakes", json=body).status_code == 401
    wrong = api.post("/api/v1/intakes", json=body, headers={"Authorization": "Bearer not-a-token"})
    assert wrong.status_code == 401
    assert wrong.headers["WWW-Authenticate"] == "Bearer"

    auth = {"Authorization": f"Bearer {token}"}
    created = api.post("/api/v1/intakes", json=body, headers=auth)
    assert created.status_code == 201, created.text
    intake_id = created.json()["intake_id"]
    assert [n["category"] for n in created.json()["needs"]] == ["peer-support", "employment"]

    again = api.post("/api/v1/intakes", json=body, headers=auth)
    assert again.status_code == 200, again.text
    assert again.json()["intake_id"] == intake_id

    status = api.get(f"/api/v1/intakes/{intake_id}", headers=auth)
    assert status.status_code == 200
    assert status.json()["intake_id"] == intake_id
