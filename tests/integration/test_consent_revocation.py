"""Matching on real Postgres (and, once, through the real broker): a revoked consent cancels
every open referral under it, tells the agency holding one, and stops anything new."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import uuid4

import asyncpg
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaProducer

from services.matching.handlers import (
    Deps,
    handle_consent_event,
    handle_need_submitted,
    handle_offer_response,
)
from shared.cloudevents import Envelope, decode, encode
from shared.events import (
    ConsentRecipients,
    ConsentRevoked,
    ConsentScope,
    Constraints,
    DeclineReason,
    Insurance,
    NeedSubmitted,
    OfferAccepted,
    OfferDeclined,
    RecoveryStage,
)
from shared.infra import Infrastructure
from shared.kafka import DeadLetters, RawMessage, ensure_topics, make_producer, process_record
from shared.outbox import OutboxRelay, backlog
from shared.settings import BaseServiceSettings
from shared.topics import CONSENT_EVENTS, PLATFORM_TOPICS, REFERRAL_EVENTS, agency_offers
from tests.integration.conftest import fresh_schema
from tests.integration.test_matching_state_machine import (
    AGENCIES,
    CLOCK,
    a_need,
    emitted,
    envelope,
    given_a_directory,
    last_offer,
    settings,
    statuses,
)
from tests.kafka_reader import eventually, header, read_topic

pytestmark = pytest.mark.integration
REVOKED = "consent revoked"


@pytest_asyncio.fixture(loop_scope="session")
async def deps(matching_pool: asyncpg.Pool) -> Deps:
    """Matching's dependencies over a directory of three peer-support agencies."""
    await given_a_directory(matching_pool)
    return Deps(matching_pool, CLOCK, settings())


def revocation_of(need: NeedSubmitted) -> ConsentRevoked:
    return ConsentRevoked(
        consent_id=need.consent.consent_id, person_ref=need.person_ref, revoked_at=CLOCK.now()
    )


def withdrawals(events: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    return [(t, p) for t, p in events if t.startswith("refnet.agency.") and "reason" in p]


def offers(events: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    return [(t, p) for t, p in events if t.startswith("refnet.agency.") and "attempt" in p]


def acceptance(offer: dict[str, Any]) -> Envelope:
    return envelope(
        OfferAccepted(
            offer_id=offer["offer_id"],
            need_id=offer["need_id"],
            agency_id=offer["agency_id"],
            accepted_at=CLOCK.now(),
        )
    )


async def test_revoking_consent_withdraws_the_open_offer_and_cancels_the_referral(
    deps: Deps,
) -> None:
    need = a_need()
    await handle_need_submitted(deps, envelope(need))
    offer = last_offer(await emitted(deps.pool, need.need_id))

    await handle_consent_event(deps, envelope(revocation_of(need)))

    events = await emitted(deps.pool, need.need_id)
    assert statuses(events) == ["submitted", "offered", "cancelled"]
    cancelled = events[-1][1]
    assert (cancelled["reason"], cancelled["sequence"]) == (REVOKED, 3)
    assert withdrawals(events) == [
        (
            agency_offers(offer["agency_id"]).name,
            {
                "offer_id": offer["offer_id"],
                "need_id": str(need.need_id),
                "agency_id": offer["agency_id"],
                "reason": REVOKED,
            },
        )
    ]


async def test_an_answer_to_a_cancelled_offer_changes_nothing(deps: Deps) -> None:
    need = a_need()
    await handle_need_submitted(deps, envelope(need))
    offer = last_offer(await emitted(deps.pool, need.need_id))
    await handle_consent_event(deps, envelope(revocation_of(need)))

    await handle_offer_response(deps, acceptance(offer))
    await handle_offer_response(
        deps,
        envelope(
            OfferDeclined(
                offer_id=offer["offer_id"],
                need_id=need.need_id,
                agency_id=offer["agency_id"],
                reason=DeclineReason.NO_CAPACITY,
                declined_at=CLOCK.now(),
            )
        ),
    )

    assert statuses(await emitted(deps.pool, need.need_id)) == ["submitted", "offered", "cancelled"]


async def test_an_accepted_referral_is_cancelled_and_the_agency_told_on_its_topic(
    deps: Deps,
) -> None:
    need = a_need()
    await handle_need_submitted(deps, envelope(need))
    offer = last_offer(await emitted(deps.pool, need.need_id))
    await handle_offer_response(deps, acceptance(offer))

    await handle_consent_event(deps, envelope(revocation_of(need)))

    events = await emitted(deps.pool, need.need_id)
    assert statuses(events) == ["submitted", "offered", "accepted", "cancelled"]
    assert events[-1][1]["agency_id"] == offer["agency_id"]
    assert [p["offer_id"] for _, p in withdrawals(events)] == [offer["offer_id"]]


async def test_a_need_arriving_after_its_consent_was_revoked_is_cancelled_not_offered(
    deps: Deps,
) -> None:
    need = a_need()
    await handle_consent_event(deps, envelope(revocation_of(need)))

    await handle_need_submitted(deps, envelope(need))

    events = await emitted(deps.pool, need.need_id)
    assert statuses(events) == ["submitted", "cancelled"]
    assert events[-1][1]["reason"] == REVOKED
    assert offers(events) == [] and withdrawals(events) == []


async def test_a_redelivered_revocation_has_no_second_effect(deps: Deps) -> None:
    need = a_need()
    await handle_need_submitted(deps, envelope(need))
    revoked = envelope(revocation_of(need))

    await handle_consent_event(deps, revoked)
    await handle_consent_event(deps, revoked)  # the same event redelivered
    await handle_consent_event(deps, envelope(revoked.event))  # the same revocation re-sent

    events = await emitted(deps.pool, need.need_id)
    assert statuses(events) == ["submitted", "offered", "cancelled"]
    assert len(withdrawals(events)) == 1


async def test_only_referrals_under_the_revoked_consent_are_cancelled(deps: Deps) -> None:
    revoked_need = a_need()
    same_person_other_consent = a_need().model_copy(update={"person_ref": revoked_need.person_ref})
    for need in (revoked_need, same_person_other_consent):
        await handle_need_submitted(deps, envelope(need))

    await handle_consent_event(deps, envelope(revocation_of(revoked_need)))

    assert statuses(await emitted(deps.pool, same_person_other_consent.need_id)) == [
        "submitted",
        "offered",
    ]


async def test_a_consent_naming_one_agency_is_never_offered_to_another(deps: Deps) -> None:
    need = a_need()
    named = ConsentScope(
        **{
            **need.consent.model_dump(),
            "recipients": ConsentRecipients.NAMED,
            "named_agencies": frozenset({"ag-wider"}),  # ranked last on locality
        }
    )
    need = need.model_copy(update={"consent": named})
    await handle_need_submitted(deps, envelope(need))
    offer = last_offer(await emitted(deps.pool, need.need_id))
    await handle_offer_response(
        deps,
        envelope(
            OfferDeclined(
                offer_id=offer["offer_id"],
                need_id=need.need_id,
                agency_id=offer["agency_id"],
                reason=DeclineReason.NO_CAPACITY,
                declined_at=CLOCK.now(),
            )
        ),
    )

    events = await emitted(deps.pool, need.need_id)
    assert {p["agency_id"] for _, p in offers(events)} == {"ag-wider"}
    assert statuses(events) == ["submitted", "offered", "declined", "unmatched"]
    excluded = {e["agency_id"]: e["reason"] for e in events[-1][1]["excluded"]}
    assert excluded["ag-near"] == excluded["ag-wide"] == "not named in the person's consent"


async def test_every_offer_carries_the_facts_an_agency_decides_on(deps: Deps) -> None:
    facts = {
        "county": "Multnomah",
        "age_years": 34,
        "recovery_stage": RecoveryStage.EARLY_RECOVERY,
        "constraints": Constraints(mat_friendly_required=True, insurance=Insurance.MEDICAID),
    }
    need = a_need().model_copy(update=facts)
    await handle_need_submitted(deps, envelope(need))
    first = last_offer(await emitted(deps.pool, need.need_id))
    await handle_offer_response(
        deps,
        envelope(
            OfferDeclined(
                offer_id=first["offer_id"],
                need_id=need.need_id,
                agency_id=first["agency_id"],
                reason=DeclineReason.NOT_ELIGIBLE,
                declined_at=CLOCK.now(),
            )
        ),
    )

    sent = offers(await emitted(deps.pool, need.need_id))
    assert len(sent) == 2
    for _, offer in sent:
        assert offer["county"] == "Multnomah"
        assert offer["age_years"] == 34
        assert offer["recovery_stage"] == "early-recovery"
        assert offer["constraints"]["mat_friendly_required"] is True
        assert offer["constraints"]["insurance"] == "medicaid"


async def test_a_revocation_racing_needs_and_answers_leaves_every_referral_cancelled_once(
    deps: Deps,
) -> None:
    """Needs, answers and the revocation arrive on different topics and so may be handled
    at the same moment; however they interleave, every referral ends cancelled exactly
    once and no offer outlives the revocation."""
    for _ in range(5):
        first = a_need()
        needs = [first] + [
            a_need().model_copy(update={"consent": first.consent, "person_ref": first.person_ref})
            for _ in range(3)
        ]
        await handle_need_submitted(deps, envelope(needs[0]))
        offer = last_offer(await emitted(deps.pool, needs[0].need_id))

        await asyncio.gather(
            handle_consent_event(deps, envelope(revocation_of(first))),
            handle_offer_response(deps, acceptance(offer)),
            *(handle_need_submitted(deps, envelope(n)) for n in needs[1:]),
        )

        for need in needs:
            events = await emitted(deps.pool, need.need_id)
            changes = [p for t, p in events if t == REFERRAL_EVENTS.name]
            assert changes[-1]["status"] == "cancelled"
            assert statuses(events).count("cancelled") == 1
            assert [c["sequence"] for c in changes] == list(range(1, len(changes) + 1))
            offered = {p["offer_id"] for _, p in offers(events)}
            assert offered == {p["offer_id"] for _, p in withdrawals(events)}


async def test_a_revocation_on_the_broker_reaches_the_agency_topic_and_bad_records_the_dlq(
    infra: Infrastructure,
) -> None:
    """The consent agent's path end to end over the real broker: the record is decoded and
    handled by the same rule the agent applies, and the outbox relay publishes the result."""
    bootstrap = infra.kafka_bootstrap_servers
    schema, pool = await fresh_schema(infra, "matching")
    await given_a_directory(pool)
    await ensure_topics(
        bootstrap,
        [n for s in PLATFORM_TOPICS for n in (s.name, s.dlq)]
        + [agency_offers(a).name for a in AGENCIES],
        partitions=3,
    )
    producer = make_producer(
        BaseServiceSettings(database_url=infra.database_url, kafka_bootstrap_servers=bootstrap),
        "test-consents",
    )
    await producer.start()
    try:
        deps = Deps(pool, CLOCK, settings())
        need = a_need()
        await handle_need_submitted(deps, envelope(need))
        person = await _publish_revocation_after_a_bad_record(producer, revocation_of(need))
        await _consume_as_the_agent_does(bootstrap, person, deps, DeadLetters(producer, "matching"))
        await _relay(infra, schema, pool, producer)
    finally:
        await producer.stop()
        await pool.close()

    agency_topic = agency_offers(AGENCIES[0])  # the most local agency got the offer
    on_agency_topic = [
        decode(agency_topic, r.key, r.value, r.headers).event
        for r in await read_topic(bootstrap, agency_topic.name)
        if r.key == str(need.need_id).encode()
    ]
    assert [type(e).__name__ for e in on_agency_topic] == ["ReferralOffered", "OfferWithdrawn"]
    changes = [
        decode(REFERRAL_EVENTS, r.key, r.value, r.headers).event
        for r in await read_topic(bootstrap, REFERRAL_EVENTS.name)
        if r.key == str(need.need_id).encode()
    ]
    assert [c.status for c in changes] == ["submitted", "offered", "cancelled"]
    dead = [r for r in await read_topic(bootstrap, CONSENT_EVENTS.dlq) if r.key == person]
    assert len(dead) == 1 and "not valid JSON" in (header(dead[0], "dlq_reason") or "")


async def _publish_revocation_after_a_bad_record(
    producer: AIOKafkaProducer, revoked: ConsentRevoked
) -> bytes:
    key = str(revoked.person_ref).encode()
    headers, value = encode(revoked, event_id=uuid4(), source="/tests", time=CLOCK.now())
    await producer.send_and_wait(CONSENT_EVENTS.name, key=key, value=b"{oops", headers=headers)
    await producer.send_and_wait(CONSENT_EVENTS.name, key=key, value=value, headers=headers)
    return key


async def _consume_as_the_agent_does(
    bootstrap: str, key: bytes, deps: Deps, dead_letters: DeadLetters
) -> None:
    records = [r for r in await read_topic(bootstrap, CONSENT_EVENTS.name) if r.key == key]
    assert len(records) == 2
    for r in records:
        raw = RawMessage(r.topic, r.partition, r.offset, r.key, r.value, tuple(r.headers))

        async def handle(env: Envelope) -> None:
            await handle_consent_event(deps, env)

        await process_record(CONSENT_EVENTS, raw, handle, dead_letters, max_attempts=3)


async def _relay(
    infra: Infrastructure, schema: str, pool: asyncpg.Pool, producer: AIOKafkaProducer
) -> None:
    relay = OutboxRelay(pool, producer, infra.database_url, schema, 0.1)
    task = asyncio.create_task(relay.run())

    async def drained() -> bool:
        async with pool.acquire() as conn:
            return await backlog(conn) == 0

    try:
        await eventually(drained, "matching's outbox relayed")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
