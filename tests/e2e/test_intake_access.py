"""A worker sees only the people they took in (minimum necessary)."""

from __future__ import annotations

import re

import pytest

from services.local_stack import DEMO_WORKER_EMAIL, LocalStack
from tests.e2e.browser import Person, WorkerBrowser, add_worker, intake_form, stack_today

pytestmark = pytest.mark.e2e


async def test_another_worker_cannot_open_an_intake_they_did_not_take(stack: LocalStack) -> None:
    demo = WorkerBrowser(stack.intake_url)
    demo.log_in(DEMO_WORKER_EMAIL, stack.secrets["DEMO_WORKER_PASSWORD"])
    person = Person.new("Tomasz", "Wierzbicki")
    intake_path = demo.submit_intake(intake_form(person, stack_today(stack))).url.path
    assert re.fullmatch(r"/intakes/[0-9a-f-]{36}", intake_path)

    colleague = WorkerBrowser(stack.intake_url)
    assert colleague.log_in(*add_worker(stack, "Colleague")).url.path == "/"

    for path in (intake_path, f"{intake_path}/needs"):
        response = colleague.http.get(path)
        assert response.status_code == 404, path
        assert person.legal_family_name not in response.text
    dashboard = colleague.http.get("/")
    assert dashboard.status_code == 200 and "Dashboard" in dashboard.text
    assert person.legal_family_name not in dashboard.text
    assert intake_path not in dashboard.text

    # Nor withdraw the person's consent.
    token = re.search(r'name="csrf_token" value="([^"]+)"', dashboard.text)
    assert token
    revoke = colleague.http.post(
        f"{intake_path}/consent/revoke",
        data={"method": "in-person", "confirm": "yes", "csrf_token": token.group(1)},
    )
    assert revoke.status_code == 404
    assert 'action="' + intake_path + '/consent/revoke"' in demo.http.get(intake_path).text


async def test_an_admin_can_open_any_intake(stack: LocalStack) -> None:
    demo = WorkerBrowser(stack.intake_url)
    demo.log_in(DEMO_WORKER_EMAIL, stack.secrets["DEMO_WORKER_PASSWORD"])
    person = Person.new("Tomasz", "Wierzbicki")
    intake_path = demo.submit_intake(intake_form(person, stack_today(stack))).url.path

    admin = WorkerBrowser(stack.intake_url)
    admin.log_in(*add_worker(stack, "Admin", role="admin"))
    response = admin.http.get(intake_path)
    assert response.status_code == 200
    assert person.legal_family_name in response.text


async def test_a_wrong_password_does_not_log_in(stack: LocalStack) -> None:
    browser = WorkerBrowser(stack.intake_url)
    response = browser.log_in(DEMO_WORKER_EMAIL, "not-the-password")
    assert response.status_code == 401
    assert "Email or password is not right" in response.text
    assert browser.http.get("/").url.path == "/login"
