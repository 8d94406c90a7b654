"""Intake's promises on a real Postgres: one intake per submission however often it is sent,
returning persons found, consent revocation published, identifiers sealed at rest, and every
release of contact details written to an append-only ledger."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg
import pytest

from services.intake import repository as repo
from services.intake.handlers import (
    Crypto,
    KnownPerson,
    NotThatPerson,
    ReleaseRefused,
    Submitted,
    accounting_of_disclosures,
    release_contact,
    reseal_all,
    revoke_consent,
    submit_intake,
)
from services.intake.models import IntakeRequest
from services.intake.security import PersonIndex, PiiCipher, generate_key
from shared.clock import ManualClock
from shared.events import ReferralStatus, ReferralStatusChanged
from shared.topics import CONSENT_EVENTS, NEEDS
from tests.factories import INTAKE_IDENTIFIERS, intake_request

pytestmark = pytest.mark.integration
NOW = datetime(2026, 11, 21, 15, 0, tzinfo=UTC)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(NOW)


def a_request(**overrides: Any) -> IntakeRequest:
    return IntakeRequest.model_validate(intake_request(NOW.date(), **overrides))


async def outbox_events(pool: asyncpg.Pool, topic: str) -> list[asyncpg.Record]:
    async with pool.acquire() as conn:
        return list(await conn.fetch("SELECT * FROM outbox WHERE topic = $1", topic))


async def test_the_same_submission_sent_five_times_at_once_makes_one_intake(
    intake_pool: asyncpg.Pool, crypto: Crypto, clock: ManualClock, worker: asyncpg.Record
) -> None:
    request = a_request()

    outcomes = await asyncio.gather(
        *(submit_intake(intake_pool, crypto, clock, worker, request) for _ in range(5))
    )

    assert all(isinstance(o, Submitted) for o in outcomes)
    assert len({o.intake_id for o in outcomes if isinstance(o, Submitted)}) == 1
    assert sum(o.created for o in outcomes if isinstance(o, Submitted)) == 1
    assert len(await outbox_events(intake_pool, NEEDS.name)) == len(request.needs)


async def test_a_known_person_is_offered_for_reuse_not_duplicated(
    intake_pool: asyncpg.Pool, crypto: Crypto, clock: ManualClock, worker: asyncpg.Record
) -> None:
    first = await submit_intake(intake_pool, crypto, clock, worker, a_request())
    assert isinstance(first, Submitted)

    again = await submit_intake(intake_pool, crypto, clock, worker, a_request())

    assert isinstance(again, KnownPerson)
    person_id = again.candidates[0]["person_id"]
    assert again.candidates[0]["name"] == "Marisol Quintanilla-Verdugo"
    reused = await submit_intake(
        intake_pool, crypto, clock, worker, a_request(reuse_person_id=str(person_id))
    )
    assert isinstance(reused, Submitted)
    async with intake_pool.acquire() as conn:
        persons = await conn.fetchval(
            "SELECT count(DISTINCT person_id) FROM intakes WHERE intake_id = ANY($1)",
            [first.intake_id, reused.intake_id],
        )
        versions = await conn.fetch(
            "SELECT version FROM consents WHERE person_id = $1 ORDER BY version", person_id
        )
    assert persons == 1
    assert [v["version"] for v in versions] == [1, 2]


async def test_reuse_refuses_a_person_with_another_name(
    intake_pool: asyncpg.Pool, crypto: Crypto, clock: ManualClock, worker: asyncpg.Record
) -> None:
    other = a_request(person__legal_given_name="Teodora", person__date_of_birth="1970-01-02")
    first = await submit_intake(intake_pool, crypto, clock, worker, other)
    assert isinstance(first, Submitted)
    async with intake_pool.acquire() as conn:
        person_id = await conn.fetchval(
            "SELECT person_id FROM intakes WHERE intake_id = $1", first.intake_id
        )

    with pytest.raises(NotThatPerson):
        await submit_intake(
            intake_pool,
            crypto,
            clock,
            worker,
            a_request(reuse_person_id=str(person_id), new_person=False),
        )


async def test_raw_rows_hold_no_plaintext_identifiers(
    intake_pool: asyncpg.Pool, crypto: Crypto, clock: ManualClock, worker: asyncpg.Record
) -> None:
    outcome = await submit_intake(intake_pool, crypto, clock, worker, a_request(new_person=True))
    assert isinstance(outcome, Submitted)

    async with intake_pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT row_to_json(t)::text AS raw FROM ("
            " SELECT p.*, i.*, c.*, n.* FROM intakes i JOIN persons p USING (person_id)"
            " JOIN consents c ON c.consent_id = i.consent_id"
            " JOIN needs n ON n.intake_id = i.intake_id WHERE i.intake_id = $1) t",
            outcome.intake_id,
        )
        outbox = await conn.fetch("SELECT convert_from(value, 'UTF8') AS raw FROM outbox")
    assert rows
    for row in [*rows, *outbox]:
        for identifier in INTAKE_IDENTIFIERS:
            assert identifier.lower() not in row["raw"].lower(), identifier


async def test_revoking_consent_publishes_consent_revoked_once(
    intake_pool: asyncpg.Pool, crypto: Crypto, clock: ManualClock, worker: asyncpg.Record
) -> None:
    outcome = await submit_intake(intake_pool, crypto, clock, worker, a_request(new_person=True))
    assert isinstance(outcome, Submitted)
    consent_id = await _of_intake(intake_pool, "consent_id", outcome.intake_id)
    before = len(await outbox_events(intake_pool, CONSENT_EVENTS.name))

    assert await revoke_consent(intake_pool, clock, consent_id, worker, "phone")
    assert not await revoke_consent(intake_pool, clock, consent_id, worker, "phone")

    assert len(await outbox_events(intake_pool, CONSENT_EVENTS.name)) == before + 1


async def test_contact_release_goes_only_to_the_accepting_agency_and_is_accounted(
    intake_pool: asyncpg.Pool, crypto: Crypto, clock: ManualClock, worker: asyncpg.Record
) -> None:
    outcome = await submit_intake(intake_pool, crypto, clock, worker, a_request(new_person=True))
    assert isinstance(outcome, Submitted)
    need_id = await _first_need(intake_pool, outcome.intake_id)
    await _accepted_by(intake_pool, need_id, "ag-007")

    with pytest.raises(ReleaseRefused):
        await release_contact(intake_pool, crypto, clock, need_id, "ag-008")
    released = await release_contact(intake_pool, crypto, clock, need_id, "ag-007")

    assert released["phone"] == "503-555-0142"
    assert "42 CFR part 2" in released["notice"]
    person_id = await _of_intake(intake_pool, "person_id", outcome.intake_id)
    ledger = await accounting_of_disclosures(intake_pool, clock, person_id)
    assert [(d["recipient_id"], d["need_id"]) for d in ledger] == [("ag-007", need_id)]
    assert "phone" in ledger[0]["information"]
    async with intake_pool.acquire() as conn:
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await conn.execute("DELETE FROM disclosures")


async def test_no_release_after_consent_is_revoked(
    intake_pool: asyncpg.Pool, crypto: Crypto, clock: ManualClock, worker: asyncpg.Record
) -> None:
    outcome = await submit_intake(intake_pool, crypto, clock, worker, a_request(new_person=True))
    assert isinstance(outcome, Submitted)
    need_id = await _first_need(intake_pool, outcome.intake_id)
    await _accepted_by(intake_pool, need_id, "ag-007")
    await revoke_consent(
        intake_pool,
        clock,
        await _of_intake(intake_pool, "consent_id", outcome.intake_id),
        worker,
        "phone",
    )

    with pytest.raises(ReleaseRefused, match="revoked"):
        await release_contact(intake_pool, crypto, clock, need_id, "ag-007")


async def test_rotating_the_key_reseals_everything_under_the_new_one(
    intake_pool: asyncpg.Pool, clock: ManualClock, worker: asyncpg.Record
) -> None:
    old_key, new_key, index_key = generate_key(), generate_key(), generate_key()
    old = Crypto(PiiCipher([old_key]), PersonIndex(index_key))
    outcome = await submit_intake(intake_pool, old, clock, worker, a_request(new_person=True))
    assert isinstance(outcome, Submitted)

    resealed = await reseal_all(intake_pool, PiiCipher([new_key, old_key]))

    assert resealed >= 3  # the person, the signature and the need's note at least
    person_id = await _of_intake(intake_pool, "person_id", outcome.intake_id)
    async with intake_pool.acquire() as conn:
        person = await repo.person_by_id(conn, person_id)
    assert PiiCipher([new_key]).open(person["pii"], person_id)["legal_given_name"] == "Marisol"


async def _of_intake(pool: asyncpg.Pool, column: str, intake_id: UUID) -> UUID:
    """One id column of the intake row (column names come from this file, never input)."""
    async with pool.acquire() as conn:
        found: UUID = await conn.fetchval(
            f"SELECT {column} FROM intakes WHERE intake_id = $1",  # noqa: S608
            intake_id,
        )
        return found


async def _first_need(pool: asyncpg.Pool, intake_id: UUID) -> UUID:
    async with pool.acquire() as conn:
        found: UUID = await conn.fetchval(
            "SELECT need_id FROM needs WHERE intake_id = $1 ORDER BY position", intake_id
        )
        return found


async def _accepted_by(pool: asyncpg.Pool, need_id: UUID, agency_id: str) -> None:
    change = ReferralStatusChanged(
        need_id=need_id,
        status=ReferralStatus.ACCEPTED,
        sequence=2,
        occurred_at=NOW,
        agency_id=agency_id,
        agency_name="Agency",
    )
    async with pool.acquire() as conn:
        assert await repo.apply_status(conn, change)
