"""Bad intake input gets an error beside the field it concerns, keeps what was typed, and
writes nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import date, timedelta

import asyncpg
import pytest
import pytest_asyncio

from services.local_stack import DEMO_WORKER_EMAIL, LocalStack
from tests.e2e.browser import WorkerBrowser, field_error

pytestmark = pytest.mark.e2e

VALID = {
    "given_name": "Tomasz",
    "family_name": "Wierzbicki-Example",
    "email": "tomasz.w@example.net",
    "phone": "",
    "street_address": "",
    "postal_code": "97214",
    "preferred_language": "en",
    "needs-0-category": "counseling",
    "needs-0-urgency": "soon",
    "consent_given": "yes",
    "consent_expires_on": (date.today() + timedelta(days=200)).isoformat(),
}
INTAKE_TABLES = ("persons", "consents", "intakes", "needs", "outbox")


@pytest_asyncio.fixture(loop_scope="session")
async def intake_db(stack: LocalStack) -> AsyncIterator[asyncpg.Connection]:
    assert stack.infra is not None
    conn = await asyncpg.connect(stack.infra.database_url)
    await conn.execute("SET search_path TO intake")
    yield conn
    await conn.close()


@pytest.fixture(scope="module")
def worker(stack: LocalStack) -> WorkerBrowser:
    browser = WorkerBrowser(stack.intake_url)
    assert (
        browser.log_in(DEMO_WORKER_EMAIL, stack.secrets["DEMO_WORKER_PASSWORD"]).status_code == 200
    )
    return browser


async def row_counts(conn: asyncpg.Connection) -> dict[str, int]:
    return {t: await conn.fetchval(f"SELECT count(*) FROM {t}") for t in INTAKE_TABLES}


@pytest.mark.parametrize(
    ("change", "field", "message_part"),
    [
        ({"consent_given": ""}, "consent_given", "must consent"),
        ({"needs-0-category": "astrology"}, "needs-0-category", "Choose a category"),
        ({"postal_code": "9721"}, "postal_code", "5-digit ZIP"),
        ({"postal_code": "ABCDE"}, "postal_code", "5-digit ZIP"),
        ({"email": "tomasz.at.example"}, "email", "email address"),
        ({"needs-0-category": ""}, "needs-0-category", "at least one need"),
        ({"email": "", "phone": ""}, "email", "email address or a phone"),
    ],
)
async def test_invalid_intake_shows_the_field_error_and_writes_nothing(
    worker: WorkerBrowser,
    intake_db: asyncpg.Connection,
    change: dict[str, str],
    field: str,
    message_part: str,
) -> None:
    before = await row_counts(intake_db)

    response = worker.submit_intake({**VALID, **change})

    assert response.status_code == 422
    error = field_error(response.text, field)
    assert error and message_part in error, f"{field}: {error!r}"
    assert f'href="#{field}"' in response.text, "the error summary links to the field"
    assert 'value="Wierzbicki-Example"' in response.text, "what was typed is kept"
    assert await row_counts(intake_db) == before


async def test_a_form_without_the_csrf_token_is_refused(
    worker: WorkerBrowser, intake_db: asyncpg.Connection
) -> None:
    before = await row_counts(intake_db)
    response = worker.http.post("/intakes", data=VALID)
    assert response.status_code == 403
    assert await row_counts(intake_db) == before


async def test_a_valid_intake_writes_one_outbox_row_per_need(
    worker: WorkerBrowser, intake_db: asyncpg.Connection
) -> None:
    before = await row_counts(intake_db)
    response = worker.submit_intake({**VALID, "needs-2-category": "clothing"})
    assert response.status_code == 200
    after = await row_counts(intake_db)
    assert {t: after[t] - before[t] for t in INTAKE_TABLES} == {
        "persons": 1,
        "consents": 1,
        "intakes": 1,
        "needs": 2,
        "outbox": 2,
    }


async def test_the_form_cannot_be_used_without_logging_in(stack: LocalStack) -> None:
    anonymous = WorkerBrowser(stack.intake_url)
    response = anonymous.http.get("/intakes/new")
    assert response.url.path == "/login"
