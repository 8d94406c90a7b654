"""Intake's side of aftercare on a real Postgres: the person's contact preferences travel on
NeedSubmitted, the notifications service's contact lookup gives only what one message needs
and audits every call, and a check-in answer of "I need help" reaches the worker's list."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, time, timedelta
from types import SimpleNamespace
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import SecretStr, ValidationError

from services.intake import internal_api
from services.intake import repository as repo
from services.intake.handlers import (
    ContactNotAllowed,
    Crypto,
    LookupRefused,
    NotAcceptedYet,
    Submitted,
    UnknownNeed,
    follow_up_check_in,
    lookup_contact,
    on_event,
    revoke_consent,
    submit_intake,
)
from services.intake.models import IntakeRequest
from services.intake.security import generate_key
from services.intake.settings import IntakeSettings
from services.intake.tracker import need_view
from shared.clock import ManualClock
from shared.cloudevents import Envelope
from shared.events import (
    CheckInAnswer,
    CheckInAnswered,
    ContactChannel,
    NeedSubmitted,
    ReferralStatus,
    ReferralStatusChanged,
)
from shared.topics import NEEDS
from tests.factories import intake_request

pytestmark = pytest.mark.integration
NOW = datetime(2026, 11, 21, 15, 0, tzinfo=UTC)
TOKEN = "internal-token-" + "x" * 32


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(NOW)


async def a_need(
    pool: asyncpg.Pool,
    crypto: Crypto,
    clock: ManualClock,
    worker: asyncpg.Record,
    status: ReferralStatus | None = ReferralStatus.ACCEPTED,
    **overrides: Any,
) -> UUID:
    """A new person's first need, moved to ``status`` (None leaves it submitted)."""
    body = intake_request(NOW.date(), new_person=True, **overrides)
    outcome = await submit_intake(pool, crypto, clock, worker, IntakeRequest.model_validate(body))
    assert isinstance(outcome, Submitted)
    async with pool.acquire() as conn:
        need_id: UUID = await conn.fetchval(
            "SELECT need_id FROM needs WHERE intake_id = $1 ORDER BY position", outcome.intake_id
        )
        if status is not None:
            await repo.apply_status(conn, _status_change(need_id, status))
    return need_id


def _status_change(need_id: UUID, status: ReferralStatus) -> ReferralStatusChanged:
    return ReferralStatusChanged(
        need_id=need_id,
        status=status,
        sequence=2 if status == ReferralStatus.ACCEPTED else 3,
        occurred_at=NOW,
        agency_id="ag-007",
        agency_name="Agency",
    )


async def lookups_of(pool: asyncpg.Pool, need_id: UUID) -> list[asyncpg.Record]:
    async with pool.acquire() as conn:
        return list(await conn.fetch("SELECT * FROM contact_lookups WHERE need_id = $1", need_id))


async def _refused(coro: Any) -> LookupRefused:
    with pytest.raises(LookupRefused) as refused:
        await coro
    return refused.value


# --- contact preferences on NeedSubmitted ---------------------------------------------------


async def test_need_submitted_carries_the_channel_and_hours_not_the_address(
    intake_pool: asyncpg.Pool, crypto: Crypto, clock: ManualClock, worker: asyncpg.Record
) -> None:
    need_id = await a_need(intake_pool, crypto, clock, worker, status=None)

    async with intake_pool.acquire() as conn:
        value = await conn.fetchval(
            "SELECT value FROM outbox WHERE topic = $1 AND key = $2", NEEDS.name, str(need_id)
        )
    event = NeedSubmitted.model_validate_json(value)

    assert event.contact is not None
    assert event.contact.channel == ContactChannel.SMS
    assert (event.contact.window_from, event.contact.window_until) == (time(9), time(17, 30))
    assert b"503-555-0142" not in value


# --- the contact lookup ---------------------------------------------------------------------


async def test_an_accepted_sms_need_gets_only_the_phone_and_is_audited(
    intake_pool: asyncpg.Pool, crypto: Crypto, clock: ManualClock, worker: asyncpg.Record
) -> None:
    need_id = await a_need(intake_pool, crypto, clock, worker)

    found = await lookup_contact(intake_pool, crypto, clock, need_id, "acceptance-notice")

    assert found == {"channel": "sms", "address": "503-555-0142", "name": "Mari"}
    [audit] = await lookups_of(intake_pool, need_id)
    assert audit["granted"] and audit["reason"] is None
    assert (audit["requested_by"], audit["purpose"], audit["channel"]) == (
        "notifications",
        "acceptance-notice",
        "sms",
    )
    assert audit["person_id"] is not None and audit["looked_up_at"] == NOW
    async with intake_pool.acquire() as conn:
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await conn.execute("DELETE FROM contact_lookups")


async def test_an_email_need_gets_only_the_email(
    intake_pool: asyncpg.Pool, crypto: Crypto, clock: ManualClock, worker: asyncpg.Record
) -> None:
    need_id = await a_need(intake_pool, crypto, clock, worker, person__preferred_channel="email")

    found = await lookup_contact(intake_pool, crypto, clock, need_id, "aftercare-check-in")

    assert found == {"channel": "email", "address": "marisol.qv@example.net", "name": "Mari"}


async def test_a_need_not_accepted_yet_is_refused_for_now_and_audited(
    intake_pool: asyncpg.Pool, crypto: Crypto, clock: ManualClock, worker: asyncpg.Record
) -> None:
    need_id = await a_need(intake_pool, crypto, clock, worker, status=ReferralStatus.OFFERED)

    refused = await _refused(
        lookup_contact(intake_pool, crypto, clock, need_id, "acceptance-notice")
    )

    assert isinstance(refused, NotAcceptedYet)
    [audit] = await lookups_of(intake_pool, need_id)
    assert not audit["granted"]
    assert audit["reason"] == "the need is offered, not accepted yet"


async def test_a_revoked_consent_refuses_the_lookup(
    intake_pool: asyncpg.Pool, crypto: Crypto, clock: ManualClock, worker: asyncpg.Record
) -> None:
    need_id = await a_need(intake_pool, crypto, clock, worker)
    async with intake_pool.acquire() as conn:
        consent_id = await conn.fetchval(
            "SELECT i.consent_id FROM needs n JOIN intakes i USING (intake_id) "
            "WHERE n.need_id = $1",
            need_id,
        )
    await revoke_consent(intake_pool, clock, consent_id, worker, "phone")

    refused = await _refused(
        lookup_contact(intake_pool, crypto, clock, need_id, "aftercare-check-in")
    )

    assert isinstance(refused, ContactNotAllowed)
    [audit] = await lookups_of(intake_pool, need_id)
    assert (audit["granted"], audit["reason"]) == (False, "the person's consent is revoked")


@pytest.mark.parametrize("channel", ["none", "phone"])
async def test_a_person_who_wants_no_automated_messages_is_never_looked_up(
    intake_pool: asyncpg.Pool,
    crypto: Crypto,
    clock: ManualClock,
    worker: asyncpg.Record,
    channel: str,
) -> None:
    need_id = await a_need(intake_pool, crypto, clock, worker, person__preferred_channel=channel)

    refused = await _refused(
        lookup_contact(intake_pool, crypto, clock, need_id, "acceptance-notice")
    )

    assert isinstance(refused, ContactNotAllowed)
    [audit] = await lookups_of(intake_pool, need_id)
    assert (audit["granted"], audit["channel"]) == (False, channel)


async def test_an_unknown_need_is_refused_and_audited(
    intake_pool: asyncpg.Pool, crypto: Crypto, clock: ManualClock
) -> None:
    need_id = uuid4()

    refused = await _refused(
        lookup_contact(intake_pool, crypto, clock, need_id, "acceptance-notice")
    )

    assert isinstance(refused, UnknownNeed)
    [audit] = await lookups_of(intake_pool, need_id)
    assert (audit["granted"], audit["person_id"], audit["channel"]) == (False, None, None)


# --- the route ------------------------------------------------------------------------------


def _internal_app(pool: asyncpg.Pool, crypto: Crypto, clock: ManualClock) -> FastAPI:
    """The router alone, without the service's lifespan (Kafka, migrations)."""
    app = FastAPI()
    app.include_router(internal_api.router)
    app.state.settings = SimpleNamespace(internal_api_token=SecretStr(TOKEN))
    app.state.pool, app.state.crypto, app.state.clock = pool, crypto, clock
    return app


async def test_the_route_maps_each_outcome_to_its_status(
    intake_pool: asyncpg.Pool, crypto: Crypto, clock: ManualClock, worker: asyncpg.Record
) -> None:
    accepted = await a_need(intake_pool, crypto, clock, worker)
    offered = await a_need(intake_pool, crypto, clock, worker, status=ReferralStatus.OFFERED)
    by_phone = await a_need(intake_pool, crypto, clock, worker, person__preferred_channel="phone")
    transport = httpx.ASGITransport(app=_internal_app(intake_pool, crypto, clock))
    auth = {"Authorization": f"Bearer {TOKEN}"}

    async with httpx.AsyncClient(transport=transport, base_url="http://intake") as client:

        async def ask(need_id: UUID, headers: dict[str, str] = auth) -> httpx.Response:
            body = {"need_id": str(need_id), "purpose": "acceptance-notice"}
            return await client.post("/internal/v1/contact-lookups", json=body, headers=headers)

        granted = await ask(accepted)
        assert granted.status_code == 200
        assert granted.json() == {"channel": "sms", "address": "503-555-0142", "name": "Mari"}
        assert granted.headers["cache-control"] == "no-store"
        too_soon = await ask(offered)
        assert too_soon.status_code == 409 and "retry" in too_soon.json()["detail"]
        assert too_soon.headers["retry-after"]
        assert (await ask(by_phone)).status_code == 403
        assert (await ask(uuid4())).status_code == 404
        assert (await ask(accepted, {"Authorization": "Bearer " + "y" * 47})).status_code == 401
        assert (await ask(accepted, {})).status_code == 401
    # Refused credentials never reach the data, so they leave no audit row.
    assert len(await lookups_of(intake_pool, accepted)) == 1


def test_the_token_check_is_exact() -> None:
    def bearer(token: str) -> HTTPAuthorizationCredentials:
        return HTTPAuthorizationCredentials(scheme="Bearer", credentials=token)

    assert internal_api.token_matches(TOKEN, bearer(TOKEN))
    assert not internal_api.token_matches(TOKEN, bearer(TOKEN[:-1]))
    assert not internal_api.token_matches(TOKEN, bearer(TOKEN + "x"))
    assert not internal_api.token_matches(TOKEN, bearer("ünïcödé"))
    assert not internal_api.token_matches(TOKEN, None)


def _settings(**changes: Any) -> IntakeSettings:
    fields: dict[str, Any] = {
        "refnet_env": "local",
        "database_url": "postgresql://unused",
        "kafka_bootstrap_servers": "unused:9092",
        "secret_key": "s" * 32,
        "pii_encryption_key": generate_key(),
        "pii_index_key": generate_key(),
        "internal_api_token": TOKEN,
        "matching_url": "http://matching:8002",
        "notifications_url": "http://notifications:8001",
    }
    return IntakeSettings(**{**fields, **changes})


def test_the_internal_api_is_not_in_the_public_openapi() -> None:
    from services.intake.app import create_app

    paths = create_app(_settings()).openapi()["paths"]
    assert not [path for path in paths if path.startswith("/internal")]


def test_production_refuses_a_short_or_placeholder_internal_token() -> None:
    strong = secrets.token_urlsafe(48)
    with pytest.raises(ValidationError, match="INTERNAL_API_TOKEN"):
        _settings(refnet_env="production", secret_key=strong, internal_api_token="change-me" * 4)
    with pytest.raises(ValidationError, match="internal_api_token"):
        _settings(internal_api_token="too-short")
    assert _settings(refnet_env="production", secret_key=strong, internal_api_token=strong)


# --- aftercare check-ins ----------------------------------------------------------------------


def answered(need_id: UUID, day: int, answer: CheckInAnswer, event_id: str) -> Envelope:
    event = CheckInAnswered(
        need_id=need_id, day=day, answer=answer, answered_at=NOW + timedelta(days=day)
    )
    return Envelope(event_id, "/refnet/notifications", event.ce_type, NOW, 1, event)


async def view_of(pool: asyncpg.Pool, need_id: UUID) -> Any:
    async with pool.acquire() as conn:
        intake_id = await conn.fetchval("SELECT intake_id FROM needs WHERE need_id = $1", need_id)
        rows = await repo.needs_of_intake(conn, intake_id)
    return need_view(next(r for r in rows if r["need_id"] == need_id), NOW)


async def on_the_workers_list(pool: asyncpg.Pool, worker: asyncpg.Record, need_id: UUID) -> bool:
    async with pool.acquire() as conn:
        return any(r["need_id"] == need_id for r in await repo.open_needs(conn, worker))


async def test_need_help_delivered_twice_is_stored_once_and_flagged_on_the_tracker(
    intake_pool: asyncpg.Pool, crypto: Crypto, clock: ManualClock, worker: asyncpg.Record
) -> None:
    need_id = await a_need(intake_pool, crypto, clock, worker, status=ReferralStatus.COMPLETED)
    assert not await on_the_workers_list(intake_pool, worker, need_id)
    help_wanted = answered(need_id, 7, CheckInAnswer.NEED_HELP, str(uuid4()))

    await on_event(intake_pool, help_wanted)
    await on_event(intake_pool, help_wanted)

    async with intake_pool.acquire() as conn:
        stored = await conn.fetch("SELECT * FROM check_in_answers WHERE need_id = $1", need_id)
    assert [(r["day"], r["answer"]) for r in stored] == [(7, "need-help")]
    view = await view_of(intake_pool, need_id)
    assert view.asked_for_help
    assert "asked for help at the day-7 check-in" in view.stuck
    assert (view.check_in_answer, view.check_in_day) == ("need-help", 7)
    # Completed, yet back where the worker looks, until they follow it up.
    assert await on_the_workers_list(intake_pool, worker, need_id)
    assert await follow_up_check_in(intake_pool, clock, worker, need_id, 7)
    assert not await on_the_workers_list(intake_pool, worker, need_id)
    followed = await view_of(intake_pool, need_id)
    assert not followed.stuck
    assert followed.check_in == "Asked for help at the day-7 check-in; followed up 2026-11-21"


async def test_the_latest_answer_is_the_one_the_tracker_shows(
    intake_pool: asyncpg.Pool, crypto: Crypto, clock: ManualClock, worker: asyncpg.Record
) -> None:
    need_id = await a_need(intake_pool, crypto, clock, worker)

    await on_event(intake_pool, answered(need_id, 3, CheckInAnswer.NEED_HELP, str(uuid4())))
    await on_event(intake_pool, answered(need_id, 14, CheckInAnswer.CONNECTED, str(uuid4())))

    view = await view_of(intake_pool, need_id)
    assert (view.check_in, view.asked_for_help, view.stuck) == (
        "Connected (day 14 check-in)",
        False,
        (),
    )
    await on_event(intake_pool, answered(need_id, 30, CheckInAnswer.STOP, str(uuid4())))
    assert (await view_of(intake_pool, need_id)).check_in == "Stopped aftercare reminders"


async def test_an_answer_for_a_need_intake_never_had_is_ignored(
    intake_pool: asyncpg.Pool,
) -> None:
    unknown = uuid4()

    # No foreign-key failure, which would send the event to the DLQ.
    await on_event(intake_pool, answered(unknown, 7, CheckInAnswer.NEED_HELP, str(uuid4())))

    async with intake_pool.acquire() as conn:
        count = await conn.fetchval(
            "SELECT count(*) FROM check_in_answers WHERE need_id = $1", unknown
        )
    assert count == 0
