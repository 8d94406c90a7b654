"""The intake JSON API against its own OpenAPI schema, with schemathesis generating the
requests: whatever it sends, no 5xx and no response that breaks the documented schema."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any
from uuid import uuid4

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    response_schema_conformance,
    status_code_conformance,
)

from services.intake.app import create_app
from services.intake.security import generate_key
from services.intake.settings import IntakeSettings
from services.local_stack import LocalStack
from tests.e2e.browser import stack_today
from tests.e2e.cli import refnet_cli

pytestmark = pytest.mark.e2e


def _schema_app_settings() -> IntakeSettings:
    # Only the schema is read from this app; it never starts, so nothing here is contacted.
    return IntakeSettings(
        refnet_env="local",
        database_url="postgresql://unused",
        kafka_bootstrap_servers="unused:9092",
        secret_key="s" * 32,
        pii_encryption_key=generate_key(),
        pii_index_key=generate_key(),
        internal_api_token="t" * 32,
    )


schema = schemathesis.openapi.from_dict(create_app(_schema_app_settings()).openapi())
# Status codes seen, per operation: proof that the generated requests got past the token
# check to the handlers, without which a run of 401s would pass vacuously.
SEEN: dict[str, set[int]] = {}


@schema.hook
def map_body(context: object, body: Any) -> Any:
    """Pin the rules a JSON schema cannot state (a reachable contact channel, consent to the
    network), so generated intakes with arbitrary names, notes and needs reach the database.
    The consent's dates are pinned as each case is sent (`date_consent`)."""
    if isinstance(body, dict) and isinstance(body.get("consent"), dict):
        body["consent"]["recipients"] = "network"
    if isinstance(body, dict) and isinstance(body.get("person"), dict):
        body["person"].update(
            date_of_birth="1984-05-06",
            phone="503-555-0100",
            preferred_channel="phone",
            contact_from=None,
            contact_until=None,
        )
    return body


def date_consent(body: Any, today: date) -> None:
    """Sign on the services' today, by their clock, which tests move on; not the test's."""
    if isinstance(body, dict) and isinstance(body.get("consent"), dict):
        body["consent"].update(
            signed_on=today.isoformat(), expires_on=(today + timedelta(days=90)).isoformat()
        )


@pytest.fixture(scope="module")
def api_token(stack: LocalStack) -> str:
    email = f"api-{uuid4().hex[:8]}@refnet.local"
    refnet_cli(
        stack,
        "users",
        "add",
        email,
        "--name",
        "API client",
        "--password-stdin",
        stdin="a long enough password\n",
    )
    return refnet_cli(stack, "users", "token", email, "--label", "schemathesis").strip()


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_the_api_keeps_its_own_contract(
    case: schemathesis.Case, stack: LocalStack, api_token: str
) -> None:
    date_consent(case.body, stack_today(stack))
    response = case.call_and_validate(
        base_url=stack.intake_url,
        headers={"Authorization": f"Bearer {api_token}"},
        checks=[not_a_server_error, response_schema_conformance, status_code_conformance],
    )
    SEEN.setdefault(case.operation.label, set()).add(response.status_code)


def test_the_generated_requests_reached_the_handlers() -> None:
    assert {422, 201} <= SEEN["POST /api/v1/intakes"], SEEN
    assert 404 in SEEN["GET /api/v1/intakes/{intake_id}"], SEEN
