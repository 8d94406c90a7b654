"""Notifications on real Postgres: once a consent is revoked, or a referral cancelled, no
deadline, email or aftercare reminder for the needs concerned goes out, whatever order the
consent, need and referral events are read in."""

from __future__ import annotations

from datetime import timedelta
from uuid import UUID, uuid4

import pytest

from services.notifications import repository as repo
from services.notifications.handlers import Answer, answer_offer
from services.notifications.scheduler import Deps, run_due_jobs
from services.smtp_sink import SmtpSink
from shared.clock import ManualClock
from shared.events import (
    ConsentRevoked,
    ContactChannel,
    ContactPreferences,
    NeedCategory,
    NeedSubmitted,
    ReferralStatus,
    ReferralStatusChanged,
)
from tests.contacts import StaticContactBook
from tests.factories import need_submitted
from tests.integration.conftest import deliver

pytestmark = pytest.mark.integration
AGENCY = "ag-001"


def status(
    deps: Deps, need: NeedSubmitted, status: ReferralStatus, sequence: int, **extra: object
) -> ReferralStatusChanged:
    return ReferralStatusChanged(
        need_id=need.need_id,
        status=status,
        sequence=sequence,
        occurred_at=deps.clock.now(),
        **extra,
    )


def offered(deps: Deps, need: NeedSubmitted, offer_id: UUID) -> ReferralStatusChanged:
    return status(
        deps,
        need,
        ReferralStatus.OFFERED,
        2,
        agency_id=AGENCY,
        agency_name="Agency",
        offer_id=offer_id,
        attempt=1,
        respond_by=deps.clock.now() + timedelta(hours=24),
    )


def accepted(deps: Deps, need: NeedSubmitted, offer_id: UUID) -> ReferralStatusChanged:
    return status(
        deps,
        need,
        ReferralStatus.ACCEPTED,
        3,
        agency_id=AGENCY,
        agency_name="Agency",
        offer_id=offer_id,
        attempt=1,
    )


def revocation_of(deps: Deps, need: NeedSubmitted) -> ConsentRevoked:
    return ConsentRevoked(
        consent_id=need.consent.consent_id, person_ref=need.person_ref, revoked_at=deps.clock.now()
    )


async def given_an_accepted_need(deps: Deps) -> NeedSubmitted:
    """Accepted: the worker's email, the person's notice and aftercare check-ins are due."""
    need = need_submitted(
        NeedCategory.HOUSING,
        at=deps.clock.now(),
        contact=ContactPreferences(channel=ContactChannel.EMAIL),
    )
    assert isinstance(deps.contacts, StaticContactBook)
    deps.contacts.add(need.need_id, "email", "mari@example.net")
    offer_id = uuid4()
    await deliver(deps, need)
    await deliver(deps, offered(deps, need, offer_id))
    await deliver(deps, accepted(deps, need, offer_id))
    return need


async def jobs(deps: Deps, need: NeedSubmitted) -> dict[str, str]:
    async with deps.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT kind, payload, status FROM scheduled_jobs WHERE need_id = $1", need.need_id
        )
    return {
        ":".join(
            str(x) for x in (r["kind"], r["payload"].get("about"), r["payload"].get("day")) if x
        ): r["status"]
        for r in rows
    }


async def run_everything_due_for_weeks(deps: Deps, clock: ManualClock) -> None:
    for _ in range(3):
        clock.advance(timedelta(days=7))
        await run_due_jobs(deps)


async def test_revoking_consent_cancels_pending_aftercare_and_nothing_more_is_sent(
    deps: Deps, sink: SmtpSink, clock: ManualClock
) -> None:
    need = await given_an_accepted_need(deps)
    await run_due_jobs(deps)  # the worker's and the person's acceptance emails go at once
    assert len(sink.messages) == 2

    revoked = revocation_of(deps, need)
    await deliver(deps, revoked)
    await deliver(deps, revoked)  # re-sent: nothing more to do
    await run_everything_due_for_weeks(deps, clock)

    assert len(sink.messages) == 2
    assert await jobs(deps, need) == {
        "offer_deadline": "cancelled",
        "worker_email:stuck": "cancelled",
        "worker_email:accepted": "done",
        "person_message:accepted": "done",
        "person_message:check-in:1": "cancelled",
        "person_message:check-in:7": "cancelled",
        "person_message:check-in:30": "cancelled",
        "person_message:check-in:90": "cancelled",
    }


async def test_revocation_closes_the_open_offer_so_it_neither_expires_nor_takes_an_answer(
    deps: Deps, clock: ManualClock
) -> None:
    need = need_submitted(NeedCategory.HOUSING, at=clock.now())
    offer_id = uuid4()
    await deliver(deps, need)
    await deliver(deps, offered(deps, need, offer_id))

    await deliver(deps, revocation_of(deps, need))
    await run_everything_due_for_weeks(deps, clock)

    async with deps.pool.acquire() as conn:
        assert await repo.open_offers(conn, AGENCY) == []
        assert await conn.fetchval("SELECT count(*) FROM outbox") == 0, "no OfferExpired"
    assert await answer_offer(deps, AGENCY, offer_id, None) == Answer.NOT_OPEN
    assert await jobs(deps, need) == {
        "offer_deadline": "cancelled",
        "worker_email:stuck": "cancelled",
    }


async def test_a_cancelled_referral_has_its_pending_jobs_cancelled(
    deps: Deps, sink: SmtpSink, clock: ManualClock
) -> None:
    need = await given_an_accepted_need(deps)

    await deliver(deps, status(deps, need, ReferralStatus.CANCELLED, 4, reason="consent revoked"))
    await run_everything_due_for_weeks(deps, clock)

    assert sink.messages == []
    assert set((await jobs(deps, need)).values()) == {"cancelled"}


async def test_events_read_after_the_revocation_start_nothing(
    deps: Deps, sink: SmtpSink, clock: ManualClock
) -> None:
    need = need_submitted(NeedCategory.HOUSING, at=clock.now())
    offer_id = uuid4()

    await deliver(deps, revocation_of(deps, need))  # the consent topic read first
    await deliver(deps, need)
    await deliver(deps, offered(deps, need, offer_id))
    await deliver(deps, accepted(deps, need, offer_id))
    await run_everything_due_for_weeks(deps, clock)

    assert sink.messages == []
    assert await jobs(deps, need) == {}
    async with deps.pool.acquire() as conn:
        assert await repo.open_offers(conn, AGENCY) == []


async def test_a_job_scheduled_before_the_revocation_was_seen_is_cancelled_when_due(
    deps: Deps, sink: SmtpSink, clock: ManualClock
) -> None:
    need = await given_an_accepted_need(deps)
    async with deps.pool.acquire() as conn:  # recorded by a replica that left the jobs alone
        await repo.record_revocation(conn, revocation_of(deps, need))

    await run_everything_due_for_weeks(deps, clock)

    assert sink.messages == []
    assert set((await jobs(deps, need)).values()) == {"cancelled"}


async def test_needs_under_another_consent_keep_their_reminders(
    deps: Deps, sink: SmtpSink, clock: ManualClock
) -> None:
    revoked = await given_an_accepted_need(deps)
    kept = await given_an_accepted_need(deps)

    await deliver(deps, revocation_of(deps, revoked))
    await run_everything_due_for_weeks(deps, clock)

    # kept: the worker's and the person's acceptance emails, the check-ins of days 1 and 7
    assert len(sink.messages) == 4, [m["Subject"] for m in sink.messages]
    assert (await jobs(deps, kept))["person_message:check-in:7"] == "done"
