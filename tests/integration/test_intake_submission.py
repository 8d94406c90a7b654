"""An intake submission is one statement on a real Postgres: what it writes, what it refuses
when others get there first, and the API answer built from what it wrote. Also the status
consumer's one-statement inbox."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import httpx
import pytest
import pytest_asyncio

from services.intake import repository as repo
from services.intake.app import create_app
from services.intake.handlers import (
    Crypto,
    Submitted,
    TokenRefused,
    on_event,
    on_events,
    submit_intake,
)
from services.intake.security import new_api_token
from services.intake.settings import IntakeSettings
from shared.clock import ManualClock
from shared.cloudevents import Envelope, decode
from shared.db import create_pool
from shared.events import NeedSubmitted, ReferralStatus, ReferralStatusChanged
from shared.infra import Infrastructure
from shared.kafka import Delivery
from shared.outbox import outbox_row
from shared.topics import NEEDS
from tests.factories import intake_request
from tests.integration.test_intake import NOW, a_request

pytestmark = pytest.mark.integration


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(NOW)


async def events_of(pool: asyncpg.Pool, intake_id: UUID) -> list[NeedSubmitted]:
    """The intake's NeedSubmitted events, in the order the relay would publish them."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT o.* FROM outbox o JOIN needs n ON o.key = n.need_id::text "
            "WHERE n.intake_id = $1 ORDER BY o.id",
            intake_id,
        )
    events = []
    for row in rows:
        headers = [(name, raw.encode()) for name, raw in row["headers"]]
        event = decode(NEEDS, row["key"].encode(), bytes(row["value"]), headers).event
        assert isinstance(event, NeedSubmitted)
        events.append(event)
    return events


async def test_an_intake_writes_its_rows_and_one_event_per_need_in_form_order(
    intake_pool: asyncpg.Pool, crypto: Crypto, clock: ManualClock, worker: asyncpg.Record
) -> None:
    request = a_request()

    outcome = await submit_intake(intake_pool, crypto, clock, worker, request)

    assert isinstance(outcome, Submitted) and outcome.created
    async with intake_pool.acquire() as conn:
        intake = await conn.fetchrow(
            "SELECT i.*, c.version, c.categories, c.witnessed_by, c.given_at, p.person_ref "
            "FROM intakes i JOIN consents c USING (consent_id) "
            "JOIN persons p ON p.person_id = i.person_id "
            "WHERE i.intake_id = $1",
            outcome.intake_id,
        )
        needs = await conn.fetch(
            "SELECT * FROM needs WHERE intake_id = $1 ORDER BY position", outcome.intake_id
        )
        outbox = await conn.fetch(
            "SELECT headers FROM outbox WHERE key = ANY($1::text[])",
            [str(n["need_id"]) for n in needs],
        )
    assert (intake["submission_id"], intake["worker_id"]) == (
        request.submission_id,
        worker["worker_id"],
    )
    assert (intake["version"], intake["given_at"], intake["created_at"]) == (1, NOW, NOW)
    assert intake["categories"] == ["employment", "peer-support"]
    assert [(n["position"], n["category"], n["status"]) for n in needs] == [
        (0, "peer-support", "submitted"),
        (1, "employment", "submitted"),
    ]
    assert crypto.cipher.open(needs[0]["note"], needs[0]["need_id"]) == {
        "note": "Evening groups only"
    }
    events = await events_of(intake_pool, outcome.intake_id)
    assert [e.need_id for e in events] == [n["need_id"] for n in needs]
    assert {e.person_ref for e in events} == {intake["person_ref"]}
    assert {e.consent.consent_id for e in events} == {intake["consent_id"]}
    # The stored headers are the ones shared.outbox makes for the event, value for value
    # but for the event's own id, time and trace.
    expected = outbox_row(NEEDS, events[0], source="/refnet/intake", clock=clock).headers
    own = {"ce_id", "ce_time", "traceparent"}
    assert [h for h in outbox[0]["headers"] if h[0] not in own] == [
        h for h in expected if h[0] not in own
    ]
    # The answer carries the rows as written, in form order.
    assert [row["need_id"] for row in outcome.written] == [n["need_id"] for n in needs]


async def test_the_submission_statement_is_planned_once_and_then_reused(
    infra: Infrastructure,
    intake_pool: asyncpg.Pool,
    crypto: Crypto,
    clock: ManualClock,
    worker: asyncpg.Record,
) -> None:
    # Planned afresh for every call, the write cost Postgres more than the writing
    # (migration 0008). Postgres plans a prepared statement for its values five times, then
    # keeps a reusable plan if that one looks no dearer.
    async with intake_pool.acquire() as conn:
        schema = await conn.fetchval("SELECT current_schema()")
    pool = await create_pool(infra.database_url, schema, max_size=1)  # one session's plans
    try:
        for n in range(8):
            await submit_intake(
                pool, crypto, clock, worker, a_request(person__legal_family_name=f"Plan{n}")
            )
        async with pool.acquire() as conn:
            plans = await conn.fetchrow(
                "SELECT generic_plans, custom_plans FROM pg_prepared_statements "
                "WHERE statement = $1",
                repo._WRITE_INTAKE,
            )
    finally:
        await pool.close()
    assert (plans["custom_plans"], plans["generic_plans"]) == (5, 3)


async def test_two_intakes_for_one_new_person_at_once_make_one_person(
    intake_pool: asyncpg.Pool, crypto: Crypto, clock: ManualClock, worker: asyncpg.Record
) -> None:
    # Two forms (two submission ids) for the same name and date of birth
    outcomes = await asyncio.gather(
        *(submit_intake(intake_pool, crypto, clock, worker, a_request()) for _ in range(2))
    )

    assert sorted(type(o).__name__ for o in outcomes) == ["KnownPerson", "Submitted"]


async def test_reusing_one_person_at_once_gives_each_intake_its_own_consent_version(
    intake_pool: asyncpg.Pool, crypto: Crypto, clock: ManualClock, worker: asyncpg.Record
) -> None:
    original = await submit_intake(intake_pool, crypto, clock, worker, a_request())
    assert isinstance(original, Submitted)
    async with intake_pool.acquire() as conn:
        person_id = await conn.fetchval(
            "SELECT person_id FROM intakes WHERE intake_id = $1", original.intake_id
        )
    reuses = [a_request(reuse_person_id=str(person_id)) for _ in range(3)]

    outcomes = await asyncio.gather(
        *(submit_intake(intake_pool, crypto, clock, worker, r) for r in reuses)
    )

    assert all(isinstance(o, Submitted) and o.created for o in outcomes)
    versions = []
    for outcome in outcomes:
        assert isinstance(outcome, Submitted)
        (version,) = {e.consent.version for e in await events_of(intake_pool, outcome.intake_id)}
        assert version == outcome.written[0]["consent_version"]
        versions.append(version)
    assert sorted(versions) == [2, 3, 4]


async def test_a_token_revoked_since_it_was_checked_writes_nothing(
    intake_pool: asyncpg.Pool, crypto: Crypto, clock: ManualClock, worker: asyncpg.Record
) -> None:
    _, digest = new_api_token()
    async with intake_pool.acquire() as conn:
        await repo.insert_token(conn, digest, worker["worker_id"], "test")
        await conn.execute(
            "UPDATE worker_tokens SET revoked_at = now() WHERE token_digest = $1", digest
        )
    request = a_request()

    with pytest.raises(TokenRefused):
        await submit_intake(intake_pool, crypto, clock, worker, request, token=digest)

    async with intake_pool.acquire() as conn:
        made = await conn.fetchval(
            "SELECT count(*) FROM intakes WHERE submission_id = $1", request.submission_id
        )
    assert made == 0


@pytest.mark.parametrize("batched", [False, True], ids=["one by one", "one batch"])
async def test_a_status_event_delivered_twice_changes_the_need_once(
    intake_pool: asyncpg.Pool,
    crypto: Crypto,
    clock: ManualClock,
    worker: asyncpg.Record,
    batched: bool,
) -> None:
    outcome = await submit_intake(intake_pool, crypto, clock, worker, a_request())
    assert isinstance(outcome, Submitted)
    need_id = outcome.written[0]["need_id"]

    def delivery(sequence: int, status: ReferralStatus, event_id: str) -> Envelope:
        change = ReferralStatusChanged(
            need_id=need_id,
            status=status,
            sequence=sequence,
            occurred_at=NOW + timedelta(minutes=sequence),
            agency_id="ag-001",
            agency_name="Agency",
        )
        return Envelope(event_id, "/refnet/matching", change.ce_type, NOW, 1, change)

    declined = delivery(2, ReferralStatus.DECLINED, "e-2")
    envelopes = [declined, declined, delivery(1, ReferralStatus.OFFERED, "e-1")]
    await deliver(intake_pool, envelopes, batched)

    need, history = await need_and_history(intake_pool, need_id)
    assert (need["status"], need["status_sequence"], need["declines"]) == ("declined", 2, 1)
    assert [(h["sequence"], h["status"]) for h in history] == [(1, "offered"), (2, "declined")]


async def deliver(pool: asyncpg.Pool, envelopes: list[Envelope], batched: bool) -> None:
    if batched:  # as the consumer hands over a fetch's batch
        await on_events(pool, [Delivery(envelope) for envelope in envelopes])
    else:
        for envelope in envelopes:
            await on_event(pool, envelope)


async def need_and_history(
    pool: asyncpg.Pool, need_id: UUID
) -> tuple[asyncpg.Record, list[asyncpg.Record]]:
    async with pool.acquire() as conn:
        need = await conn.fetchrow("SELECT * FROM needs WHERE need_id = $1", need_id)
        history = await conn.fetch(
            "SELECT sequence, status, agency_id FROM status_changes WHERE need_id = $1 "
            "ORDER BY sequence",
            need_id,
        )
    return need, list(history)


@pytest.mark.parametrize("seed", range(6))
async def test_a_batch_of_status_changes_ends_as_applying_them_one_by_one_would(
    intake_pool: asyncpg.Pool, crypto: Crypto, clock: ManualClock, worker: asyncpg.Record, seed: int
) -> None:
    """A fetch's status changes go to the database in one round trip; out of order, stale,
    repeated and declined ones leave the need and its history as one at a time does."""
    rng = random.Random(seed)
    statuses = [ReferralStatus.OFFERED, ReferralStatus.DECLINED, ReferralStatus.EXPIRED]
    steps = [(n, rng.choice(statuses), rng.random()) for n in range(1, 9)]
    steps += [(n, ReferralStatus.UNMATCHED, 0.0) for n in (9,)]
    order = [*steps, *rng.sample(steps, 3)]  # some delivered twice
    rng.shuffle(order)

    async def need_after(batched: bool) -> tuple[Any, ...]:
        request = a_request(new_person=True)
        outcome = await submit_intake(intake_pool, crypto, clock, worker, request)
        assert isinstance(outcome, Submitted)
        need_id = outcome.written[0]["need_id"]
        envelopes = []
        for sequence, status, attempt in order:
            change = ReferralStatusChanged(
                need_id=need_id,
                status=status,
                sequence=sequence,
                occurred_at=NOW + timedelta(minutes=sequence),
                agency_id=f"ag-{sequence:03d}",
                agency_name="Agency",
                attempt=sequence if attempt > 0.5 else None,
            )
            event_id = f"{need_id}-{sequence}"
            envelopes.append(Envelope(event_id, "/refnet/matching", change.ce_type, NOW, 1, change))
        await deliver(intake_pool, envelopes, batched)
        need, history = await need_and_history(intake_pool, need_id)
        kept = {k: v for k, v in need.items() if k not in ("need_id", "intake_id", "note")}
        return tuple(sorted(kept.items())), [tuple(h) for h in history]

    assert await need_after(batched=True) == await need_after(batched=False)


async def test_only_a_stale_status_is_logged_not_matchings_echo_of_submitted(
    intake_pool: asyncpg.Pool,
    crypto: Crypto,
    clock: ManualClock,
    worker: asyncpg.Record,
    caplog: pytest.LogCaptureFixture,
) -> None:
    outcome = await submit_intake(intake_pool, crypto, clock, worker, a_request(new_person=True))
    assert isinstance(outcome, Submitted)
    need_id = outcome.written[0]["need_id"]

    def envelope(sequence: int, status: ReferralStatus) -> Envelope:
        change = ReferralStatusChanged(
            need_id=need_id, status=status, sequence=sequence, occurred_at=NOW
        )
        return Envelope(
            f"{need_id}-{sequence}-{status.value}", "/m", change.ce_type, NOW, 1, change
        )

    caplog.set_level(logging.INFO, logger="services.intake.handlers")
    await on_event(intake_pool, envelope(0, ReferralStatus.SUBMITTED))  # as matching sends it
    await on_event(intake_pool, envelope(2, ReferralStatus.UNMATCHED))
    await on_event(intake_pool, envelope(1, ReferralStatus.DECLINED))  # stale: 2 came first

    stale = [r.getMessage() for r in caplog.records if "stale or unknown" in r.getMessage()]
    assert stale == [f"need {need_id}: status declined is stale or unknown"]


# --- the JSON API, in process ---------------------------------------------------------------


# The API's clock stands still at the wall-clock time the module was loaded: the bodies below
# are dated by it, so a run that crosses midnight still submits "today's" consent.
API_NOW = datetime.now(UTC)


@pytest_asyncio.fixture(loop_scope="session")
async def api(
    intake_pool: asyncpg.Pool, worker: asyncpg.Record
) -> AsyncIterator[httpx.AsyncClient]:
    settings = IntakeSettings(
        refnet_env="local",
        database_url="postgresql://unused",
        kafka_bootstrap_servers="unused:9092",
        secret_key="s" * 32,
        pii_encryption_key="x" * 43 + "=",
        pii_index_key="y" * 43 + "=",
        internal_api_token="t" * 32,
    )
    app = create_app(settings, ManualClock(API_NOW))
    app.state.pool = intake_pool  # the lifespan (Postgres, Kafka) is not run here
    app.state.probe.accepting = True
    token, digest = new_api_token()
    async with intake_pool.acquire() as conn:
        await repo.insert_token(conn, digest, worker["worker_id"], "test")
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://x", headers=headers) as c:
        yield c


async def test_the_api_answers_a_new_intake_as_reading_it_back_would(
    api: httpx.AsyncClient,
) -> None:
    body = intake_request(API_NOW.date(), new_person=True)

    created = await api.post("/api/v1/intakes", json=body)

    assert created.status_code == 201, created.text
    read = await api.get(f"/api/v1/intakes/{created.json()['intake_id']}")
    assert read.status_code == 200
    assert created.content == read.content
    assert created.headers["content-type"] == "application/json"
    again = await api.post("/api/v1/intakes", json=body)
    assert (again.status_code, again.content) == (200, read.content)


async def test_the_api_refuses_a_token_revoked_after_its_last_use_at_once(
    api: httpx.AsyncClient, intake_pool: asyncpg.Pool
) -> None:
    today = API_NOW.date()
    assert (
        await api.post("/api/v1/intakes", json=intake_request(today, new_person=True))
    ).is_success
    async with intake_pool.acquire() as conn:
        await conn.execute("UPDATE worker_tokens SET revoked_at = now()")

    refused = await api.post("/api/v1/intakes", json=intake_request(today, new_person=True))

    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"] == "Bearer"
    assert json.loads(refused.content)["detail"].startswith("Send a valid worker token")


async def test_a_revoked_token_cannot_learn_whether_details_fit_a_person_on_record(
    api: httpx.AsyncClient, intake_pool: asyncpg.Pool
) -> None:
    """Still remembered as valid, the token is refused before the person is compared: a 422
    ("that person's details differ") would tell whether a name and date of birth fit."""
    today = API_NOW.date()
    assert (
        await api.post("/api/v1/intakes", json=intake_request(today, new_person=True))
    ).is_success
    async with intake_pool.acquire() as conn:
        person_id = await conn.fetchval("SELECT person_id FROM persons LIMIT 1")
        await conn.execute("UPDATE worker_tokens SET revoked_at = now()")
    probe = intake_request(today, reuse_person_id=str(person_id))
    probe["person"]["legal_family_name"] = "Someone-Else"

    refused = await api.post("/api/v1/intakes", json=probe)

    assert refused.status_code == 401
