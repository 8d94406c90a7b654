"""Each service's /metrics, scraped before and after one need goes through: submitted in
intake, offered by matching, accepted through the agency API, and the intake worker told
by email. The need's category and urgency (employment, soon) are this test's own, so what
other tests' needs do meanwhile does not move the series it reads."""

from __future__ import annotations

from collections.abc import Mapping

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.local_stack import DEMO_WORKER_EMAIL, LocalStack
from tests.e2e.browser import Person, WorkerBrowser, intake_form, stack_today
from tests.e2e.cli import refnet_cli
from tests.kafka_reader import eventually

pytestmark = pytest.mark.e2e

CATEGORY, URGENCY = "employment", "soon"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class Scrape:
    def __init__(self, text: str) -> None:
        self.families: dict[str, str] = {}
        self.samples: Samples = {}
        for family in text_string_to_metric_families(text):
            self.families[family.name] = family.type
            for sample in family.samples:
                key = (sample.name, frozenset(sample.labels.items()))
                self.samples[key] = sample.value

    def value(self, name: str, **labels: str) -> float:
        """The sum over the series of ``name`` that carry these labels."""
        wanted = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and wanted <= ls)

    def labelled(self, name: str) -> list[dict[str, str]]:
        return [dict(ls) for (n, ls) in self.samples if n == name]


async def scrape(stack: LocalStack) -> Mapping[str, Scrape]:
    async with httpx.AsyncClient(timeout=30) as http:
        pages = {}
        for name, url in stack.service_urls.items():
            response = await http.get(f"{url}/metrics")
            assert response.status_code == 200, (name, response.text)
            assert response.headers["content-type"].startswith("text/plain")
            pages[name] = Scrape(response.text)
        return pages


async def test_metrics_move_as_a_need_is_submitted_offered_and_accepted(
    stack: LocalStack,
) -> None:
    before = await scrape(stack)

    # Given a need submitted by the demo worker and offered to an agency
    worker = WorkerBrowser(stack.intake_url)
    worker.log_in(DEMO_WORKER_EMAIL, stack.secrets["DEMO_WORKER_PASSWORD"])
    form = intake_form(Person.new("Ilse", "Vandermolen"), stack_today(stack),
                       needs=((CATEGORY, URGENCY, ""),))  # fmt: skip
    intake_path = worker.submit_intake(form).url.path
    (need,) = await eventually(
        lambda: (r := worker.needs(intake_path)) and r[0].status == "offered" and r,
        "the need offered",
    )

    # When the agency accepts it over the HTTP API
    key = refnet_cli(stack, "agency", "key", need.agency_id).strip()
    async with httpx.AsyncClient(base_url=stack.agency_api_url) as agency:
        auth = {"Authorization": f"Bearer {key}"}
        offers = await agency.get("/agency/v1/offers", headers=auth)
        offer = next(o for o in offers.json() if o["need_id"] == need.need_id)
        accepted = await agency.post(f"/agency/v1/offers/{offer['offer_id']}/accept", headers=auth)
        assert accepted.status_code == 202, accepted.text
    await eventually(lambda: worker.needs(intake_path)[0].status == "accepted", "accepted")

    # Then: the acceptance email to the worker is counted as sent
    sent_before = before["notifications"].value(
        "refnet_reminders_sent_total", channel="email", kind="worker_email"
    )

    async def emailed() -> Mapping[str, Scrape] | None:
        now = await scrape(stack)
        sent = now["notifications"].value(
            "refnet_reminders_sent_total", channel="email", kind="worker_email"
        )
        return now if sent > sent_before else None

    after = await eventually(emailed, "the acceptance email counted")

    # And each service's counters moved by this one need
    def moved(service: str, name: str, **labels: str) -> float:
        return after[service].value(name, **labels) - before[service].value(name, **labels)

    need_labels = {"category": CATEGORY, "urgency": URGENCY}
    assert moved("intake", "refnet_needs_submitted_total", **need_labels) == 1
    assert moved("matching", "refnet_offers_made_total", **need_labels) == 1
    assert moved("matching", "refnet_acceptance_latency_seconds_count", urgency=URGENCY) == 1
    latency = after["matching"].value("refnet_acceptance_latency_seconds_sum", urgency=URGENCY)
    assert latency >= 0
    assert moved("notifications", "refnet_reminders_sent_total", kind="worker_email") >= 1

    # And every service exposes the gauges and the DLQ counter
    for service, page in after.items():
        assert page.families.get("refnet_dlq_messages") == "counter", service
        assert {"service": service} in page.labelled("refnet_outbox_backlog"), service
        lag_topics = {
            labels["topic"]
            for labels in page.labelled("refnet_consumer_lag")
            if labels["service"] == service
        }
        assert lag_topics, f"{service} reports no consumer lag per topic"
    assert "refnet.needs.v1" in {
        labels["topic"] for labels in after["matching"].labelled("refnet_consumer_lag")
    }
    matching = after["matching"].families
    assert matching["refnet_acceptance_latency_seconds"] == "histogram"
    for counter in ("refnet_offer_declines", "refnet_offer_expiries", "refnet_needs_unmatched"):
        assert matching[counter] == "counter"
    notifications = after["notifications"].families
    assert notifications["refnet_reminders_due"] == "gauge"
    assert notifications["refnet_reminders_failed"] == "counter"
