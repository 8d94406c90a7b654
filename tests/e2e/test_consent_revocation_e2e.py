"""Revoking consent cancels the person's open offers (each agency hears OfferWithdrawn on its
own topic) and the worker's tracker shows every need cancelled."""

from __future__ import annotations

import pytest

from services.local_stack import DEMO_WORKER_EMAIL, LocalStack
from shared.events import Event, OfferWithdrawn, ReferralOffered
from shared.topics import agency_offers
from tests.e2e.browser import (
    NeedRow,
    Person,
    WorkerBrowser,
    csrf_token,
    intake_form,
    stack_today,
)
from tests.kafka_reader import eventually, read_events

pytestmark = pytest.mark.e2e


async def agency_topic(stack: LocalStack, agency_id: str) -> list[Event]:
    assert stack.infra is not None
    return await read_events(stack.infra.kafka_bootstrap_servers, agency_offers(agency_id))


async def test_revoking_consent_withdraws_every_open_offer_and_cancels_the_needs(
    stack: LocalStack,
) -> None:
    # Given an intake whose two needs are offered to agencies
    worker = WorkerBrowser(stack.intake_url)
    assert (
        worker.log_in(DEMO_WORKER_EMAIL, stack.secrets["DEMO_WORKER_PASSWORD"]).status_code == 200
    )
    submitted = worker.submit_intake(
        intake_form(Person.new("Ngozi", "Adeyemi"), stack_today(stack))
    )
    assert submitted.status_code == 200, submitted.text
    intake_path = submitted.url.path

    offered: list[NeedRow] = await eventually(
        lambda: (r := worker.needs(intake_path)) and all(n.status == "offered" for n in r) and r,
        "both needs offered",
    )
    assert len(offered) == 2 and all(n.agency_id for n in offered)
    offer_ids = {}
    for need in offered:

        async def offer_of(need: NeedRow = need) -> list[ReferralOffered]:
            return [
                e
                for e in await agency_topic(stack, need.agency_id)
                if isinstance(e, ReferralOffered) and str(e.need_id) == need.need_id
            ]

        offers = await eventually(offer_of, f"the offer of {need.need_id} on its agency's topic")
        offer_ids[need.need_id] = offers[-1].offer_id

    # When the worker sends the revoke form without saying how the person revoked
    page = worker.http.get(intake_path)
    revoke_path = f"{intake_path}/consent/revoke"
    assert f'action="{revoke_path}"' in page.text
    refused = worker.http.post(revoke_path, data={"csrf_token": csrf_token(page.text)})

    # Then nothing is revoked
    assert refused.status_code == 422
    assert 'id="revoke-error"' in refused.text
    assert [n.status for n in worker.needs(intake_path)] == ["offered", "offered"]

    # When they revoke it properly on the tracker page
    revoked = worker.http.post(
        revoke_path,
        data={"method": "in-person", "confirm": "yes", "csrf_token": csrf_token(page.text)},
    )
    assert revoked.status_code == 200
    assert revoked.url.path == intake_path
    assert "was revoked on" in revoked.text
    assert f'action="{revoke_path}"' not in revoked.text, "there is nothing left to revoke"

    # Then each agency hears that its offer is withdrawn, on its own topic
    for need in offered:

        async def withdrawn(need: NeedRow = need) -> list[OfferWithdrawn]:
            return [
                e
                for e in await agency_topic(stack, need.agency_id)
                if isinstance(e, OfferWithdrawn) and str(e.need_id) == need.need_id
            ]

        notices = await eventually(withdrawn, f"OfferWithdrawn for {need.need_id}")
        assert {n.offer_id for n in notices} == {offer_ids[need.need_id]}
        assert all(n.agency_id == need.agency_id and n.reason for n in notices)

    # And the tracker shows every need cancelled, on the fragment and on the page
    cancelled = await eventually(
        lambda: (r := worker.needs(intake_path)) and all(n.status == "cancelled" for n in r) and r,
        "every need cancelled on the tracker",
    )
    assert {n.need_id for n in cancelled} == set(offer_ids)
    assert [n.status for n in worker.status(intake_path)] == ["cancelled", "cancelled"]

    # And revoking again changes nothing
    again = worker.http.post(
        revoke_path,
        data={"method": "phone", "confirm": "yes", "csrf_token": csrf_token(page.text)},
    )
    assert again.status_code == 200
    assert [n.status for n in worker.needs(intake_path)] == ["cancelled", "cancelled"]
