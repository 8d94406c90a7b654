"""The services' logs after everything else the e2e tests did (this module sorts last): one
JSON object per line, and nothing that identifies the person, even for a need that went all
the way (submitted, offered, accepted, the person texted, their contact details released to
the agency). Lines about that need name it, and its trace runs from the intake request
through matching to the agency's topic."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from services.local_stack import DEMO_WORKER_EMAIL, LocalStack
from shared import tracing
from shared.cloudevents import PoisonMessage, decode
from shared.topics import NEEDS, REFERRAL_EVENTS, agency_offers
from tests.e2e.browser import Person, WorkerBrowser, intake_form, stack_today
from tests.e2e.cli import refnet_cli
from tests.kafka_reader import eventually, read_topic

pytestmark = pytest.mark.e2e

REQUIRED_FIELDS = ("time", "level", "service", "logger", "message")
SERVICES = ("intake", "matching", "notifications")


def log_lines(stack: LocalStack) -> dict[str, list[str]]:
    logs: Path = stack.run_dir / "logs"
    return {
        name: (logs / f"{name}.log").read_text(errors="replace").splitlines() for name in SERVICES
    }


def texts_to(stack: LocalStack, person: Person) -> list[dict[str, Any]]:
    assert stack.sms is not None
    number = "+1" + person.phone.replace("-", "")
    return [m for m in stack.sms.messages if m["to"] == number]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def accepted_need(stack: LocalStack) -> dict[str, Any]:
    """A person's need taken all the way, their contact details viewed by the agency."""
    person = Person.new("Zephyrine", "Okonkwo")
    while person.phone.endswith("0100"):  # the local SMS sender's own number
        person = Person.new("Zephyrine", "Okonkwo")
    worker = WorkerBrowser(stack.intake_url)
    worker.log_in(DEMO_WORKER_EMAIL, stack.secrets["DEMO_WORKER_PASSWORD"])
    submitted = worker.submit_intake(intake_form(person, stack_today(stack)))
    intake_path = submitted.url.path
    need = (
        await eventually(
            lambda: (r := worker.needs(intake_path)) and r[0].status == "offered" and r,
            "the first need offered",
        )
    )[0]
    key = refnet_cli(stack, "agency", "key", need.agency_id).strip()
    auth = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=stack.agency_api_url, timeout=30) as agency:
        offers = await agency.get("/agency/v1/offers", headers=auth)
        offer = next(o for o in offers.json() if o["need_id"] == need.need_id)
        accepted = await agency.post(f"/agency/v1/offers/{offer['offer_id']}/accept", headers=auth)
        assert accepted.status_code == 202, accepted.text

        async def contact() -> dict[str, Any] | None:
            response = await agency.get(f"/agency/v1/offers/{offer['offer_id']}/contact",
                                        headers=auth)  # fmt: skip
            assert response.status_code in (200, 403, 409), response.text
            return response.json() if response.status_code == 200 else None

        details = await eventually(contact, "the person's contact details released")
    assert details["phone"] == person.phone  # the identifiers did travel, where allowed
    await eventually(lambda: texts_to(stack, person), "the person told by text")
    return {
        "person": person,
        "need_id": need.need_id,
        "agency_id": need.agency_id,
        "intake_id": intake_path.rsplit("/", 1)[-1],
    }


async def test_no_log_line_holds_an_identifier_of_the_person(
    stack: LocalStack, accepted_need: dict[str, Any]
) -> None:
    person: Person = accepted_need["person"]
    for service, lines in log_lines(stack).items():
        assert lines, f"{service} logged nothing"
        for number, line in enumerate(lines, 1):
            for identifier in person.identifiers:
                assert identifier.lower() not in line.lower(), (
                    f"{service}.log line {number} holds an identifier of the person"
                )


async def test_every_log_line_is_a_json_object_with_the_standard_fields(
    stack: LocalStack, accepted_need: dict[str, Any]
) -> None:
    for service, lines in log_lines(stack).items():
        for number, line in enumerate(lines, 1):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                pytest.fail(f"{service}.log line {number} is not JSON: {line[:200]!r}")
            assert isinstance(entry, dict), f"{service}.log line {number}"
            missing = [f for f in REQUIRED_FIELDS if not entry.get(f)]
            assert not missing, f"{service}.log line {number} lacks {missing}: {line[:200]}"
            assert entry["service"] == service


async def test_lines_about_the_need_carry_its_id_and_its_trace(
    stack: LocalStack, accepted_need: dict[str, Any]
) -> None:
    need_id = accepted_need["need_id"]
    entries = {
        service: [json.loads(line) for line in lines] for service, lines in log_lines(stack).items()
    }
    # Every line that names the need carries it as need_id (HTTP access lines excepted:
    # they are about a request).
    for service, found in entries.items():
        for entry in found:
            if need_id in entry["message"] and entry["logger"] != "uvicorn.access":
                assert entry.get("need_id") == need_id, (service, entry)
    # Matching and notifications both handled it, and said so with its id
    for service in ("matching", "notifications"):
        assert any(e.get("need_id") == need_id for e in entries[service]), service

    # The intake request that submitted it started a trace...
    submitted = next(
        e
        for e in entries["intake"]
        if e["message"].startswith(f"intake {accepted_need['intake_id']} submitted")
    )
    trace_id = submitted["trace_id"]
    # ...which matching continued while offering the need
    offered = [
        e
        for e in entries["matching"]
        if e.get("need_id") == need_id and e.get("topic") == NEEDS.name
    ]
    assert offered and all(e["trace_id"] == trace_id for e in offered)


async def test_the_trace_travels_in_the_record_headers(
    stack: LocalStack, accepted_need: dict[str, Any]
) -> None:
    assert stack.infra is not None
    bootstrap = stack.infra.kafka_bootstrap_servers
    need_id = accepted_need["need_id"]

    async def traces(topic: str, spec: Any) -> list[tuple[str, tracing.TraceContext]]:
        found = []
        for record in await read_topic(bootstrap, topic):
            if record.key != need_id.encode():
                continue
            try:
                event = decode(spec, record.key, record.value, record.headers).event
            except PoisonMessage:  # other tests write records to be dead-lettered
                continue
            ctx = tracing.from_headers(record.headers)
            assert ctx is not None, f"{type(event).__name__} on {topic} has no traceparent"
            found.append((type(event).__name__, ctx))
        return found

    (submitted,) = await traces(NEEDS.name, NEEDS)
    _, root = submitted
    offers = agency_offers(accepted_need["agency_id"])
    offered = [ctx for kind, ctx in await traces(offers.name, offers) if kind == "ReferralOffered"]
    changes = await traces(REFERRAL_EVENTS.name, REFERRAL_EVENTS)
    # What matching produced while handling the need continues its trace, each its own span
    assert offered and all(ctx.trace_id == root.trace_id for ctx in offered)
    assert changes[0][1].trace_id == root.trace_id
    spans = [ctx.span_id for ctx in (root, *offered, *(c for _, c in changes))]
    assert len(set(spans)) == len(spans)
