"""The agency HTTP API against the OpenAPI document notifications publishes (/openapi.json),
with schemathesis generating the requests under a real agency API key: whatever it sends, no
5xx, only documented status codes, and every response as its schema says.

Half of the requests about one offer name a real one, offered to that agency by the need of
an intake made through the form, so the handlers meet live data (and the offer is accepted,
answered again, reported on), not only unknown ids. Capacity reports and webhooks are sent
as an agency of this test's own: they reach matching's DLQ and notifications' webhook table
under its name, not under an agency the other tests read about."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from uuid import uuid4

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    response_schema_conformance,
    status_code_conformance,
)

from services.local_stack import DEMO_WORKER_EMAIL, LocalStack
from services.notifications.app import create_app
from services.notifications.handlers import issue_api_key
from services.notifications.settings import NotificationsSettings
from shared.db import create_pool
from tests.e2e.browser import Person, WorkerBrowser, intake_form, stack_today
from tests.e2e.cli import refnet_cli

pytestmark = pytest.mark.e2e


def _schema_app_settings() -> NotificationsSettings:
    # Only the schema is read from this app; it never starts, so nothing here is contacted.
    return NotificationsSettings(
        refnet_env="local",
        database_url="postgresql://unused",
        kafka_bootstrap_servers="unused:9092",
        smtp_host="unused",
        link_secret="l" * 40,
        internal_api_token="i" * 40,
        inbox_secret_key="k" * 40,
    )


# The document the running service publishes is this one (the last test checks); taking it
# from the app lets pytest collect one test per operation before the stack is up.
PUBLISHED = create_app(_schema_app_settings()).openapi()
schema = schemathesis.openapi.from_dict(PUBLISHED)
# Status codes seen, per operation: proof that the requests got past the key to the handlers.
SEEN: dict[str, set[int]] = {}
_turns = itertools.count()


# Operations whose effects outlive the request (a report to matching, a registered URL).
OWN_AGENCY_ONLY = ("/agency/v1/services/", "/agency/v1/webhook")


def _issue_key(stack: LocalStack, agency_id: str) -> str:
    """A key as `refnet agency key` issues one, without starting the command."""
    assert stack.infra is not None
    database_url = stack.infra.database_url

    async def issue() -> str:
        pool = await create_pool(database_url, "notifications", max_size=1)
        try:
            return await issue_api_key(pool, agency_id)
        finally:
            await pool.close()

    with ThreadPoolExecutor(1) as thread:  # the test's own event loop may be running
        return thread.submit(asyncio.run, issue()).result()


@pytest.fixture(scope="module")
def held(stack: LocalStack) -> Iterator[dict[str, Any]]:
    """An offer to one agency and an API key of that agency's, and a key of an agency of
    this test's own."""
    worker = WorkerBrowser(stack.intake_url)
    worker.log_in(DEMO_WORKER_EMAIL, stack.secrets["DEMO_WORKER_PASSWORD"])
    fields = intake_form(Person.new("Schema", "Thesis"), stack_today(stack),
                         needs=(("peer-support", "urgent", ""),))  # fmt: skip
    intake_path = worker.submit_intake(fields).url.path
    need = _wait(lambda: (r := worker.needs(intake_path)) and r[0].status == "offered" and r[0])
    key = refnet_cli(stack, "agency", "key", need.agency_id).strip()
    auth = {"Authorization": f"Bearer {key}"}
    own = {"Authorization": f"Bearer {_issue_key(stack, f'ag-e2e-schema-{uuid4().hex[:6]}')}"}
    with httpx.Client(base_url=stack.agency_api_url, timeout=30) as api:
        # (notifications hears of the offer on its own, perhaps after intake)
        offer_id = _wait(
            lambda: next(
                (
                    o["offer_id"]
                    for o in api.get("/agency/v1/offers", headers=auth).json()
                    if o["need_id"] == need.need_id
                ),
                None,
            )
        )
        yield {"auth": auth, "own": own, "offer_id": offer_id}
        api.delete("/agency/v1/webhook", headers=own)  # nothing is sent to what it registered


def _wait(check: Any) -> Any:
    deadline = time.monotonic() + 90
    while not (found := check()):
        assert time.monotonic() < deadline, "gave up waiting for the need to be offered"
        time.sleep(0.25)
    return found


@schema.parametrize()
@settings(max_examples=25, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))  # fmt: skip
def test_the_agency_api_keeps_its_own_contract(
    case: schemathesis.Case, stack: LocalStack, held: dict[str, Any]
) -> None:
    if "offer_id" in (case.path_parameters or {}) and next(_turns) % 2:
        case.path_parameters["offer_id"] = held["offer_id"]
    own_agency = case.operation.path.startswith(OWN_AGENCY_ONLY)
    response = case.call_and_validate(
        base_url=stack.agency_api_url,
        headers=held["own" if own_agency else "auth"],
        checks=[not_a_server_error, response_schema_conformance, status_code_conformance],
    )
    SEEN.setdefault(case.operation.label, set()).add(response.status_code)


def test_the_generated_requests_reached_the_handlers(stack: LocalStack) -> None:
    assert httpx.get(f"{stack.agency_api_url}/openapi.json").json() == PUBLISHED
    assert 200 in SEEN["GET /agency/v1/offers"], SEEN
    assert {202, 404} <= SEEN["POST /agency/v1/offers/{offer_id}/accept"], SEEN
    assert {200, 404} <= SEEN["GET /agency/v1/offers/{offer_id}"], SEEN
    assert {200, 404} <= SEEN["GET /agency/v1/offers/{offer_id}/fhir"], SEEN
    assert 202 in SEEN["PUT /agency/v1/services/{service_id}/capacity"], SEEN
