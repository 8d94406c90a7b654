"""A worker sees only the people they took in (minimum necessary)."""

from __future__ import annotations

import re
from uuid import uuid4

import asyncpg
import pytest

from services.intake.security import hash_password
from services.local_stack import DEMO_WORKER_EMAIL, LocalStack
from tests.e2e.browser import WorkerBrowser
from tests.e2e.test_intake_validation import VALID

pytestmark = pytest.mark.e2e


async def given_another_worker(stack: LocalStack) -> tuple[str, str]:
    assert stack.infra is not None
    email, password = f"colleague-{uuid4().hex[:6]}@refnet.local", "correct horse battery"
    conn = await asyncpg.connect(stack.infra.database_url)
    try:
        await conn.execute(
            "INSERT INTO intake.workers (worker_id, email, display_name, password_hash) "
            "VALUES ($1, $2, 'Colleague', $3)",
            uuid4(),
            email,
            hash_password(password),
        )
    finally:
        await conn.close()
    return email, password


async def test_another_worker_cannot_open_an_intake_they_did_not_take(stack: LocalStack) -> None:
    demo = WorkerBrowser(stack.intake_url)
    demo.log_in(DEMO_WORKER_EMAIL, stack.secrets["DEMO_WORKER_PASSWORD"])
    intake_path = demo.submit_intake(VALID).url.path
    assert re.fullmatch(r"/intakes/[0-9a-f-]{36}", intake_path)

    colleague = WorkerBrowser(stack.intake_url)
    colleague.log_in(*await given_another_worker(stack))
    response = colleague.http.get(intake_path)

    assert response.status_code == 404
    assert VALID["family_name"] not in response.text


async def test_a_wrong_password_does_not_log_in(stack: LocalStack) -> None:
    browser = WorkerBrowser(stack.intake_url)
    response = browser.log_in(DEMO_WORKER_EMAIL, "not-the-password")
    assert response.status_code == 401
    assert "Email or password is not right" in response.text
