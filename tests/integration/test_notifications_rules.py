"""Who is told what, on real Postgres, a real SMTP server and the local SMS provider:
the person only on the channel they chose, inside their hours, in their language, never
when they chose no contact; check-in links that work once; the agency's outcome closing the
loop; webhooks signed, retried with backoff, disabled, and replayed."""

from __future__ import annotations

import dataclasses
import json
from datetime import time, timedelta
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest
from fastapi import FastAPI

from services.notifications import repository as repo
from services.notifications import webhooks
from services.notifications.handlers import handle_events
from services.notifications.jobs import JobKind
from services.notifications.links import CHECK_IN, Link
from services.notifications.pages import router as pages
from services.notifications.scheduler import Deps, run_due_jobs
from services.sms_sink import SmsSink
from services.smtp_sink import SmtpSink
from shared.clock import ManualClock
from shared.db import create_pool
from shared.events import (
    CheckInAnswer,
    ContactChannel,
    ContactPreferences,
    NeedCategory,
    NeedSubmitted,
    ReferralStatus,
    ReferralStatusChanged,
)
from shared.infra import Infrastructure
from shared.kafka import Delivery
from tests.contacts import StaticContactBook
from tests.factories import need_submitted
from tests.integration.conftest import Receiver, deliver, envelope_of

pytestmark = pytest.mark.integration
AGENCY = "ag-rules"


async def given_an_accepted_need(
    deps: Deps,
    contacts: StaticContactBook,
    channel: ContactChannel = ContactChannel.EMAIL,
    *,
    languages: tuple[str, ...] = ("en",),
    hours: tuple[time, time] | None = None,
) -> tuple[NeedSubmitted, UUID]:
    contact = ContactPreferences(
        channel=channel,
        window_from=hours[0] if hours else None,
        window_until=hours[1] if hours else None,
    )
    need = need_submitted(
        NeedCategory.COUNSELING, at=deps.clock.now(), languages=languages, contact=contact
    )
    address = "503-555-0142" if channel == ContactChannel.SMS else "mari@example.net"
    contacts.add(need.need_id, channel.value, address, name="Mari")
    offer_id = uuid4()
    await deliver(deps, need)
    for sequence, status in enumerate((ReferralStatus.OFFERED, ReferralStatus.ACCEPTED), 2):
        await deliver(deps, change(deps, need, status, sequence, offer_id))
    return need, offer_id


def change(
    deps: Deps, need: NeedSubmitted, status: ReferralStatus, sequence: int, offer_id: UUID
) -> ReferralStatusChanged:
    return ReferralStatusChanged(
        need_id=need.need_id,
        status=status,
        sequence=sequence,
        occurred_at=deps.clock.now(),
        agency_id=AGENCY,
        agency_name="Harbor Counseling",
        offer_id=offer_id,
        attempt=1,
        respond_by=deps.clock.now() + timedelta(hours=24),
    )


def mail_to(sink: SmtpSink, address: str) -> list[Any]:
    return [m for m in sink.messages if m["To"] == address]


async def run_days(deps: Deps, clock: ManualClock, days: int) -> None:
    for _ in range(days * 2):
        await run_due_jobs(deps)
        clock.advance(timedelta(hours=12))
    await run_due_jobs(deps)


# --- channel, hours, language, no contact ------------------------------------------------


async def test_the_person_is_told_who_will_contact_them_by_email(
    deps: Deps, sink: SmtpSink, contacts: StaticContactBook
) -> None:
    need, _ = await given_an_accepted_need(deps, contacts)

    await run_due_jobs(deps)

    [notice] = mail_to(sink, "mari@example.net")
    assert notice["Subject"] == "Harbor Counseling will contact you"
    assert "Hello Mari" in notice.get_content()
    assert contacts.lookups == [(need.need_id, "acceptance-notice")]
    async with deps.pool.acquire() as conn:
        logged = await conn.fetch("SELECT * FROM deliveries WHERE channel = 'email'")
    assert "m***@example.net" in {r["recipient"] for r in logged}  # the log keeps no address


async def test_a_needs_events_in_one_batch_act_as_delivered_one_by_one(
    deps: Deps, sink: SmtpSink, contacts: StaticContactBook
) -> None:
    """As the consumer hands a fetch's batch over: the need, its offer and the
    acceptance in one transaction, then the same batch again (a redelivery)."""
    email = ContactPreferences(channel=ContactChannel.EMAIL)
    need = need_submitted(NeedCategory.COUNSELING, at=deps.clock.now(), contact=email)
    contacts.add(need.need_id, "email", "mari@example.net", name="Mari")
    offer_id = uuid4()
    events = [need] + [
        change(deps, need, status, sequence, offer_id)
        for sequence, status in enumerate((ReferralStatus.OFFERED, ReferralStatus.ACCEPTED), 2)
    ]
    batch = [Delivery(envelope_of(deps, event)) for event in events]

    await handle_events(deps, batch)
    await handle_events(deps, batch)
    await run_due_jobs(deps)

    [notice] = mail_to(sink, "mari@example.net")
    assert notice["Subject"] == "Harbor Counseling will contact you"
    async with deps.pool.acquire() as conn:
        offer = await conn.fetchrow("SELECT * FROM offers WHERE offer_id = $1", offer_id)
    assert offer is not None and offer["agency_id"] == AGENCY


async def test_a_person_who_chose_sms_gets_texts_and_no_email(
    deps: Deps,
    sink: SmtpSink,
    sms_sink: SmsSink,
    clock: ManualClock,
    contacts: StaticContactBook,
) -> None:
    await given_an_accepted_need(deps, contacts, ContactChannel.SMS)

    await run_days(deps, clock, 8)

    texts = [m for m in sms_sink.messages if m["to"] == "+15035550142"]
    assert len(texts) == 3  # the notice and the check-ins of days 1 and 7
    assert "Harbor Counseling will help you" in texts[0]["body"]
    assert "day 7" in texts[2]["body"] and "/l/" in texts[2]["body"]
    assert mail_to(sink, "mari@example.net") == []


async def test_a_spanish_speaker_is_written_to_in_spanish(
    deps: Deps, sink: SmtpSink, clock: ManualClock, contacts: StaticContactBook
) -> None:
    await given_an_accepted_need(deps, contacts, languages=("es", "en"))

    await run_days(deps, clock, 2)

    notice, check_in = mail_to(sink, "mari@example.net")
    assert notice["Subject"] == "Harbor Counseling se pondrá en contacto con usted"
    assert "consejería y terapia" in notice.get_content()
    assert check_in["Subject"] == "¿Cómo le va con Harbor Counseling?"


async def test_a_language_we_do_not_write_in_falls_back_to_english(
    deps: Deps, sink: SmtpSink, contacts: StaticContactBook
) -> None:
    await given_an_accepted_need(deps, contacts, languages=("vi",))
    await run_due_jobs(deps)
    assert mail_to(sink, "mari@example.net")[0]["Subject"] == "Harbor Counseling will contact you"


async def test_nothing_goes_to_the_person_inside_quiet_hours(
    deps: Deps, sink: SmtpSink, clock: ManualClock, contacts: StaticContactBook
) -> None:
    clock.advance(timedelta(hours=12))  # 22:00 in Portland: quiet hours (21:00-09:00)
    await given_an_accepted_need(deps, contacts)

    await run_due_jobs(deps)
    clock.advance(timedelta(hours=10))  # 08:00: still quiet
    await run_due_jobs(deps)
    assert mail_to(sink, "mari@example.net") == []

    clock.advance(timedelta(hours=1, minutes=1))  # 09:01
    await run_due_jobs(deps)
    assert len(mail_to(sink, "mari@example.net")) == 1


async def test_the_persons_own_hours_decide_when_they_are_written_to(
    deps: Deps, sink: SmtpSink, clock: ManualClock, contacts: StaticContactBook
) -> None:
    # 10:00 now; the person said 18:00-20:00 only.
    await given_an_accepted_need(deps, contacts, hours=(time(18), time(20)))

    await run_due_jobs(deps)
    assert mail_to(sink, "mari@example.net") == []
    async with deps.pool.acquire() as conn:
        due = await conn.fetchval(
            "SELECT due_at FROM scheduled_jobs WHERE kind = 'person_message' "
            "AND payload->>'about' = 'accepted' AND status = 'pending'"
        )
    assert due == clock.now() + timedelta(hours=8)  # postponed to 18:00, not retried
    clock.advance(timedelta(hours=8))
    await run_due_jobs(deps)
    assert len(mail_to(sink, "mari@example.net")) == 1


async def test_a_person_who_chose_no_contact_gets_nothing_and_the_worker_is_told(
    deps: Deps,
    sink: SmtpSink,
    sms_sink: SmsSink,
    clock: ManualClock,
    contacts: StaticContactBook,
) -> None:
    need, _ = await given_an_accepted_need(deps, contacts, ContactChannel.NONE)

    await run_days(deps, clock, 31)

    assert mail_to(sink, "mari@example.net") == [] and sms_sink.messages == []
    assert contacts.lookups == []  # the address is not even asked for
    [worker_mail] = mail_to(sink, "worker@refnet.local")
    assert "chose no automated messages" in " ".join(worker_mail.get_content().split())
    async with deps.pool.acquire() as conn:
        kinds = await conn.fetchval(
            "SELECT count(*) FROM scheduled_jobs WHERE need_id = $1 AND kind = $2",
            need.need_id,
            JobKind.PERSON_MESSAGE.value,
        )
    assert kinds == 0


async def test_a_person_who_chose_phone_calls_is_called_by_the_worker(
    deps: Deps, sink: SmtpSink, clock: ManualClock, contacts: StaticContactBook
) -> None:
    await given_an_accepted_need(deps, contacts, ContactChannel.PHONE)

    await run_days(deps, clock, 8)

    subjects = [m["Subject"] for m in mail_to(sink, "worker@refnet.local")]
    assert "Aftercare check-in call due (day 1): Counseling and therapy" in subjects
    assert "Aftercare check-in call due (day 7): Counseling and therapy" in subjects
    assert contacts.lookups == []


async def test_intake_refusing_the_address_for_good_cancels_the_message(
    deps: Deps, sink: SmtpSink, contacts: StaticContactBook
) -> None:
    need, _ = await given_an_accepted_need(deps, contacts)
    contacts.refuse(need.need_id, "intake 403: consent revoked", permanent=True)

    await run_due_jobs(deps)

    assert mail_to(sink, "mari@example.net") == []
    async with deps.pool.acquire() as conn:
        status = await conn.fetchval(
            "SELECT status FROM scheduled_jobs WHERE need_id = $1 AND kind = 'person_message' "
            "AND payload->>'about' = 'accepted'",
            need.need_id,
        )
    assert status == "cancelled"


# --- check-in links ------------------------------------------------------------------------


@pytest.fixture
def link_pages(deps: Deps) -> httpx.AsyncClient:
    app = FastAPI()
    app.state.deps = deps
    app.include_router(pages)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://n.test")


def link_in(message: Any, deps: Deps) -> str:
    body = message.get_content()
    start = body.index(deps.settings.public_url)
    return body[start:].split()[0].removeprefix(deps.settings.public_url)


async def a_check_in_link(
    deps: Deps, sink: SmtpSink, clock: ManualClock, contacts: StaticContactBook
) -> tuple[NeedSubmitted, str]:
    need, _ = await given_an_accepted_need(deps, contacts)
    await run_days(deps, clock, 1)
    check_in = next(m for m in mail_to(sink, "mari@example.net") if "going" in m["Subject"])
    return need, link_in(check_in, deps)


async def aftercare_events(deps: Deps) -> list[dict[str, Any]]:
    async with deps.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT value FROM outbox WHERE topic = 'refnet.aftercare.v1' ORDER BY id"
        )
    return [json.loads(r["value"]) for r in rows]


async def test_i_need_help_reaches_the_intake_worker_once_and_the_link_then_is_used(
    deps: Deps,
    sink: SmtpSink,
    clock: ManualClock,
    contacts: StaticContactBook,
    link_pages: httpx.AsyncClient,
) -> None:
    need, path = await a_check_in_link(deps, sink, clock, contacts)

    page = await link_pages.get(path)
    assert page.status_code == 200 and "I need help" in page.text
    first = await link_pages.post(path, data={"answer": "need-help"})
    again = await link_pages.post(path, data={"answer": "connected"})

    assert first.status_code == 200 and "intake worker will be in touch" in first.text
    assert again.status_code == 409 and "already answered" in again.text
    [event] = await aftercare_events(deps)
    assert (event["need_id"], event["answer"], event["day"]) == (str(need.need_id), "need-help", 1)


async def test_stop_reminders_ends_the_check_ins_and_is_recorded(
    deps: Deps,
    sink: SmtpSink,
    clock: ManualClock,
    contacts: StaticContactBook,
    link_pages: httpx.AsyncClient,
) -> None:
    need, path = await a_check_in_link(deps, sink, clock, contacts)

    await link_pages.post(path, data={"answer": CheckInAnswer.STOP.value})
    sent_before = len(sink.messages)
    await run_days(deps, clock, 95)

    assert len(sink.messages) == sent_before
    async with deps.pool.acquire() as conn:
        stopped = await repo.referrer(conn, need.need_id)
        pending = await conn.fetchval(
            "SELECT count(*) FROM scheduled_jobs WHERE need_id = $1 AND kind = 'person_message' "
            "AND status = 'cancelled'",
            need.need_id,
        )
    assert stopped["reminders_stopped_at"] is not None
    assert pending == 3  # days 7, 30 and 90
    assert [e["answer"] for e in await aftercare_events(deps)] == ["stop"]


async def test_a_tampered_link_is_rejected(
    deps: Deps,
    sink: SmtpSink,
    clock: ManualClock,
    contacts: StaticContactBook,
    link_pages: httpx.AsyncClient,
) -> None:
    _, path = await a_check_in_link(deps, sink, clock, contacts)
    forged = deps.links.token(Link(uuid4(), uuid4(), CHECK_IN, day=1))
    tampered = path[:-3] + ("AAA" if not path.endswith("AAA") else "BBB")

    for bad in (tampered, "/l/" + forged[:-2] + "xx"):
        response = await link_pages.post(bad, data={"answer": "stop"})
        assert response.status_code == 404 and "not valid" in response.text
    assert await aftercare_events(deps) == []


async def test_an_expired_link_is_rejected(
    deps: Deps,
    sink: SmtpSink,
    clock: ManualClock,
    contacts: StaticContactBook,
    link_pages: httpx.AsyncClient,
) -> None:
    _, path = await a_check_in_link(deps, sink, clock, contacts)
    clock.advance(timedelta(days=deps.settings.link_max_age_days, hours=1))

    response = await link_pages.post(path, data={"answer": "connected"})

    assert response.status_code == 410 and "expired" in response.text
    assert await aftercare_events(deps) == []


# --- the closed loop -------------------------------------------------------------------------


async def test_an_outcome_link_reports_the_outcome_once(
    deps: Deps, contacts: StaticContactBook, link_pages: httpx.AsyncClient
) -> None:
    need, offer_id = await given_an_accepted_need(deps, contacts)
    link = Link(uuid4(), need.need_id, "outcome", offer_id=offer_id, agency_id=AGENCY)
    path = "/l/" + deps.links.token(link)

    first = await link_pages.post(path, data={"answer": "got-help"})
    again = await link_pages.post(path, data={"answer": "couldnt-contact"})

    assert first.status_code == 200 and "Got help" in first.text
    assert again.status_code == 409
    async with deps.pool.acquire() as conn:
        types = await conn.fetch(
            "SELECT headers FROM outbox WHERE topic = 'refnet.offer-responses.v1'"
        )
    assert sum(b"outcome-reported" in str(r["headers"]).encode() for r in types) == 1


# --- agency webhooks through the scheduler ----------------------------------------------------


async def test_an_offer_reaches_the_agency_webhook_signed_retried_disabled_and_replayed(
    deps: Deps, clock: ManualClock, contacts: StaticContactBook, receiver: Receiver
) -> None:
    async with deps.pool.acquire() as conn:
        secret = await webhooks.register(conn, AGENCY, receiver.url, clock.now())
    receiver.status = 503  # down at first
    need = need_submitted(NeedCategory.COUNSELING, at=clock.now())
    await deliver(deps, need)
    await deliver(deps, change(deps, need, ReferralStatus.OFFERED, 2, uuid4()))

    await run_due_jobs(deps)  # the offer.created call fails
    async with deps.pool.acquire() as conn:
        job = await conn.fetchrow(
            "SELECT * FROM scheduled_jobs WHERE kind = 'agency_webhook' "
            "AND payload->>'type' = 'offer.created' AND need_id = $1",
            need.need_id,
        )
    assert job["status"] == "pending" and job["last_error"] == "HTTP 503"
    assert job["lease_until"] > clock.now()  # backed off, not retried at once

    receiver.status = 204
    clock.advance(timedelta(seconds=deps.settings.retry_base_s))
    await run_due_jobs(deps)
    first, retried = receiver.requests[:2]
    assert first.body == retried.body  # the same delivery, the same bytes
    assert webhooks.verify(
        secret,
        retried.headers["Refnet-Webhook-Timestamp"],
        retried.headers["Refnet-Signature"],
        retried.body,
        clock.now(),
    )
    assert json.loads(retried.body)["data"]["need_id"] == str(need.need_id)

    async with deps.pool.acquire() as conn:  # an operator replays it
        assert await webhooks.replay(conn, job["job_id"], clock.now())
    await run_due_jobs(deps)
    assert receiver.requests[-1].body == first.body
    assert receiver.requests[-1].headers["Refnet-Webhook-Id"] == str(job["job_id"])


async def test_an_offer_schedules_its_jobs_in_one_statement_webhooks_only_where_enabled(
    infra: Infrastructure, deps: Deps, clock: ManualClock, receiver: Receiver
) -> None:
    """Round trips cost more than the work they carry: a new need and its offer are read and
    written in a fixed handful of statements, the offer's jobs (deadline, the worker's
    'stuck' email, the agency's two webhook calls) in one of them, which schedules a webhook
    call only for an agency whose endpoint is enabled."""
    async with deps.pool.acquire() as conn:
        schema = await conn.fetchval("SELECT current_schema()")
        await webhooks.register(conn, AGENCY, receiver.url, clock.now())
        await webhooks.register(conn, "ag-hook-off", receiver.url, clock.now())
        await conn.execute("UPDATE agency_webhooks SET enabled = false WHERE agency_id = $1",
                           "ag-hook-off")  # fmt: skip
    pool = await create_pool(infra.database_url, schema, max_size=1)  # the connection watched
    sent: list[str] = []
    try:
        async with pool.acquire() as conn:
            conn.add_query_logger(lambda query: sent.append(query.query))
        needs = {}
        for agency_id in ("ag-warm-up", AGENCY, "ag-hook-off", "ag-no-hook"):
            need = need_submitted(NeedCategory.COUNSELING, at=clock.now())
            offered = change(deps, need, ReferralStatus.OFFERED, 2, uuid4())
            offered = offered.model_copy(update={"agency_id": agency_id})
            sent.clear()
            batch = [Delivery(envelope_of(deps, event)) for event in (need, offered)]
            await handle_events(dataclasses.replace(deps, pool=pool), batch)
            needs[agency_id] = (need.need_id, list(sent))
    finally:
        await pool.close()

    for agency_id, (need_id, statements) in needs.items():
        if agency_id != "ag-warm-up":  # asyncpg looked up the types it met there
            # BEGIN, the inbox, the need, the referrer read, the offer, its jobs, COMMIT
            assert len(statements) == 7, statements
            assert [q for q in statements if "scheduled_jobs" in q] == [statements[-2]]
        async with deps.pool.acquire() as conn:
            kinds = await conn.fetch(
                "SELECT kind, payload->>'type' AS type FROM scheduled_jobs WHERE need_id = $1",
                need_id,
            )
        webhook_calls = sorted(r["type"] for r in kinds if r["kind"] == JobKind.AGENCY_WEBHOOK)
        others = sorted(r["kind"] for r in kinds if r["kind"] != JobKind.AGENCY_WEBHOOK)
        assert others == [JobKind.OFFER_DEADLINE, JobKind.WORKER_EMAIL], agency_id
        expected = ["offer.created", "offer.deadline-approaching"] if agency_id == AGENCY else []
        assert webhook_calls == expected, agency_id


async def test_an_endpoint_failing_again_and_again_is_disabled_and_sent_nothing_more(
    deps: Deps, clock: ManualClock, receiver: Receiver
) -> None:
    async with deps.pool.acquire() as conn:
        await webhooks.register(conn, AGENCY, receiver.url, clock.now())
    receiver.status = 500
    need = need_submitted(NeedCategory.COUNSELING, at=clock.now())
    await deliver(deps, need)
    await deliver(deps, change(deps, need, ReferralStatus.OFFERED, 2, uuid4()))

    for _ in range(deps.settings.webhook_disable_after + 2):
        await run_due_jobs(deps)
        clock.advance(timedelta(seconds=deps.settings.retry_cap_s))

    calls = len(receiver.requests)
    clock.advance(timedelta(days=1))  # the deadline reminder comes due: nothing is sent
    await run_due_jobs(deps)
    assert len(receiver.requests) == calls
    async with deps.pool.acquire() as conn:
        endpoint = await webhooks.endpoint(conn, AGENCY)
        statuses = await conn.fetch(
            "SELECT status, last_error FROM scheduled_jobs WHERE kind = 'agency_webhook' "
            "AND need_id = $1",
            need.need_id,
        )
    assert not endpoint["enabled"] and endpoint["consecutive_failures"] >= 8
    assert calls == deps.settings.webhook_disable_after
    assert {r["status"] for r in statuses} <= {"failed", "cancelled"}


async def test_an_acceptance_read_before_its_need_still_reaches_the_person(
    deps: Deps, sink: SmtpSink, contacts: StaticContactBook
) -> None:
    need = need_submitted(
        NeedCategory.COUNSELING,
        at=deps.clock.now(),
        contact=ContactPreferences(channel=ContactChannel.EMAIL),
    )
    contacts.add(need.need_id, "email", "late@example.net")
    offer_id = uuid4()
    await deliver(deps, change(deps, need, ReferralStatus.OFFERED, 2, offer_id))
    await deliver(deps, change(deps, need, ReferralStatus.ACCEPTED, 3, offer_id))
    await run_due_jobs(deps)  # the need is not known yet: the messages wait
    await deliver(deps, need)  # the needs topic is read late

    deps.clock.advance(timedelta(seconds=deps.settings.retry_cap_s))
    await run_due_jobs(deps)

    assert [m["Subject"] for m in mail_to(sink, "late@example.net")] == [
        "Harbor Counseling will contact you"
    ]
