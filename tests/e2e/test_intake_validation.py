"""Bad intake input gets an error beside the field it concerns, keeps what was typed, and
writes nothing."""

from __future__ import annotations

import asyncpg
import pytest

from services.local_stack import DEMO_WORKER_EMAIL, LocalStack
from tests.e2e.browser import (
    Pairs,
    Person,
    WorkerBrowser,
    field_error,
    form_values,
    intake_form,
    stack_today,
    with_fields,
)

pytestmark = pytest.mark.e2e

INTAKE_TABLES = ("persons", "consents", "intakes", "needs", "outbox")
# Nothing invalid is ever written, so every rejected form can be for the same person.
PERSON = Person.new("Tomasz", "Wierzbicki")


@pytest.fixture(scope="module")
def worker(stack: LocalStack) -> WorkerBrowser:
    browser = WorkerBrowser(stack.intake_url)
    assert (
        browser.log_in(DEMO_WORKER_EMAIL, stack.secrets["DEMO_WORKER_PASSWORD"]).status_code == 200
    )
    return browser


@pytest.fixture
def valid(stack: LocalStack) -> Pairs:
    return intake_form(PERSON, stack_today(stack), needs=[("counseling", "soon", "note")])


async def row_counts(conn: asyncpg.Connection) -> dict[str, int]:
    return {t: await conn.fetchval(f"SELECT count(*) FROM {t}") for t in INTAKE_TABLES}


@pytest.mark.parametrize(
    ("change", "field", "message_part"),
    [
        ({"consent.confirmed": None}, "consent.confirmed", "must consent"),
        ({"consent.signature": ""}, "consent.signature", "typing their full name"),
        ({"consent.signed_on": "2001-01-01"}, "consent.signed_on", "signed today"),
        ({"consent.expires_on": "2001-01-01"}, "consent.expires_on", "after today"),
        ({"needs.0.category": "astrology"}, "needs.0.category", "Choose a category"),
        ({"needs.2.category": "astrology"}, "needs.2.category", "Choose a category"),
        ({"needs.0.category": ""}, "needs.0.category", "at least one need"),
        ({"person.postal_code": "9721"}, "person.postal_code", "5-digit ZIP"),
        ({"person.postal_code": "ABCDE"}, "person.postal_code", "5-digit ZIP"),
        ({"person.email": "tomasz.at.example"}, "person.email", "email address"),
        ({"person.phone": "555-01"}, "person.phone", "10 digits"),
        ({"person.email": "", "person.phone": ""}, "person.email", "email address or a phone"),
        (
            {"person.preferred_channel": "email", "person.email": ""},
            "person.email",
            "choose another channel",
        ),
        ({"person.languages": None}, "person.languages", "at least one language"),
        ({"person.date_of_birth": "2999-01-01"}, "person.date_of_birth", "in the past"),
        ({"person.legal_given_name": ""}, "person.legal_given_name", "legal first name"),
    ],
)
async def test_invalid_intake_shows_the_field_error_and_writes_nothing(
    worker: WorkerBrowser,
    intake_db: asyncpg.Connection,
    valid: Pairs,
    change: dict[str, str | None],
    field: str,
    message_part: str,
) -> None:
    before = await row_counts(intake_db)

    response = worker.submit_intake(with_fields(valid, change))

    assert response.status_code == 422
    error = field_error(response.text, field)
    assert error and message_part in error, f"{field}: {error!r}"
    assert f'href="#{field.replace(".", "-")}"' in response.text, "the summary links the field"
    assert f'value="{PERSON.legal_family_name}"' in response.text, "what was typed is kept"
    assert await row_counts(intake_db) == before


async def test_what_was_typed_is_all_there_to_correct(
    worker: WorkerBrowser, intake_db: asyncpg.Connection, valid: Pairs
) -> None:
    before = await row_counts(intake_db)
    typed = with_fields(valid, {"person.postal_code": "9721"})

    response = worker.submit_intake(typed)

    assert response.status_code == 422
    shown = form_values(response.text)
    for name, value in typed:
        assert (name, value) in shown, f"{name}={value!r} was lost"
    assert await row_counts(intake_db) == before


async def test_a_form_without_the_csrf_token_is_refused(
    worker: WorkerBrowser, intake_db: asyncpg.Connection, valid: Pairs
) -> None:
    before = await row_counts(intake_db)
    form = worker.open_intake_form()
    response = worker.http.post(
        "/intakes",
        data={name: value for name, value in valid} | {"submission_id": form.submission_id},
    )
    assert response.status_code == 403
    assert await row_counts(intake_db) == before


async def test_adding_a_need_row_without_javascript_writes_nothing(
    worker: WorkerBrowser, intake_db: asyncpg.Connection, valid: Pairs
) -> None:
    before = await row_counts(intake_db)
    form = worker.open_intake_form()
    response = worker.post_intake([*valid, ("action", "add-need")], form)
    assert response.status_code == 200
    shown = dict(form_values(response.text))
    assert shown["need_rows"] == "4" and "needs.3.category" in shown
    assert shown["submission_id"] == form.submission_id, "still the same form"
    assert shown["needs.0.category"] == "counseling"
    assert await row_counts(intake_db) == before


async def test_a_valid_intake_writes_one_outbox_row_per_need(
    stack: LocalStack, worker: WorkerBrowser, intake_db: asyncpg.Connection
) -> None:
    before = await row_counts(intake_db)
    # Rows left on "no need" are skipped: needs in rows 1 and 3 make an intake of two.
    fields = intake_form(
        Person.new("Tomasz", "Wierzbicki"),
        stack_today(stack),
        needs=[("counseling", "soon", ""), ("", "routine", ""), ("clothing", "routine", "")],
    )
    response = worker.submit_intake(fields)
    assert response.status_code == 200, response.text
    after = await row_counts(intake_db)
    assert {t: after[t] - before[t] for t in INTAKE_TABLES} == {
        "persons": 1,
        "consents": 1,
        "intakes": 1,
        "needs": 2,
        "outbox": 2,
    }
    assert [r.category for r in worker.status(response.url.path)] == ["counseling", "clothing"]


async def test_the_form_cannot_be_used_without_logging_in(stack: LocalStack) -> None:
    anonymous = WorkerBrowser(stack.intake_url)
    response = anonymous.http.get("/intakes/new")
    assert response.url.path == "/login"
