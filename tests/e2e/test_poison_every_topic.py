"""Poison and hostile records on every topic a service consumes, for every consumer of it.

Per topic, one record of each kind that can never be processed (not JSON, a schema version
that is not a number, zero, or newer than the readers know, an event type the topic does
not carry, a value over the size limit, no key), then one valid record on the same
partition. Each consumer of the topic dead-letters every poison record to <topic>.dlq with
its own name and the reason, and goes on to process the valid record behind them: seen in
its inbox (the row written in the transaction of the record's effect), or for the
directory, in matching's view of it.

The stack is shared with the other e2e tests, so the valid records change nothing they rely
on: events about needs and consents nobody else uses, a throwaway agency with no services
(removed again by tombstone), a capacity report that repeats what the directory holds."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

from services.intake.handlers import CHECK_IN_CONSUMER, STATUS_CONSUMER
from services.local_stack import LocalStack
from services.matching.handlers import (
    CAPACITY_CONSUMER,
    CONSENTS_CONSUMER,
    NEEDS_CONSUMER,
    RESPONSES_CONSUMER,
)
from services.notifications.handlers import CONSUMER as NOTIFICATIONS
from shared.cloudevents import MAX_VALUE_BYTES, encode
from shared.events import (
    CapacityStatus,
    CapacityUpdated,
    CheckInAnswer,
    CheckInAnswered,
    ConsentRevoked,
    Event,
    NeedCategory,
    OfferAccepted,
    Outcome,
    OutcomeReported,
    ReferralStatus,
    ReferralStatusChanged,
)
from shared.topics import (
    AFTERCARE,
    AGENCIES,
    CAPACITY_UPDATES,
    CONSENT_EVENTS,
    NEEDS,
    OFFER_RESPONSES,
    REFERRAL_EVENTS,
    TopicSpec,
)
from tests.e2e.browser import WorkerBrowser, add_worker
from tests.factories import agency_profile, need_submitted
from tests.kafka_reader import decodable, eventually, header, read_topic

pytestmark = pytest.mark.e2e

SOURCE = "/tests/poison"
# Who dead-letters each topic's records (the dlq_consumer header): intake and notifications
# name their consumer group; matching's agents all write "matching".
MATCHING = "matching"
DEAD_LETTERERS: dict[str, tuple[str, ...]] = {
    NEEDS.name: (MATCHING, NOTIFICATIONS),
    OFFER_RESPONSES.name: (MATCHING,),
    REFERRAL_EVENTS.name: (STATUS_CONSUMER, NOTIFICATIONS),
    CONSENT_EVENTS.name: (MATCHING, NOTIFICATIONS),
    AGENCIES.name: (MATCHING,),
    CAPACITY_UPDATES.name: (MATCHING,),
    AFTERCARE.name: (STATUS_CONSUMER,),
}
# An event type that is also markup: the operator dashboard lists dead letters' types.
HOSTILE_TYPE = "org.refnet.<script>alert(1)</script>"
ESCAPED_TYPE = "org.refnet.&lt;script&gt;alert(1)&lt;/script&gt;"


@dataclass(frozen=True)
class Poison:
    kind: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]
    reason: str  # part of the dlq_reason that names the problem


def _headers(event: Event) -> tuple[list[tuple[str, bytes]], bytes]:
    return encode(event, event_id=uuid4(), source=SOURCE, time=datetime.now(UTC))


def _with(headers: list[tuple[str, bytes]], name: str, value: str) -> list[tuple[str, bytes]]:
    return [(k, value.encode() if k == name else v) for k, v in headers]


def poison_records(event: Event, key: bytes) -> list[Poison]:
    """One record of each kind no consumer can process, built from a valid ``event``."""
    headers, value = _headers(event)
    newer = str(type(event).schema_version + 1)
    # Valid JSON of the valid event, padded past the limit: only its size is wrong.
    padded = value[:-1] + b',"padding":"' + b"x" * MAX_VALUE_BYTES + b'"}'
    return [
        Poison("invalid-json", key, b'{"need_id": ', headers, "not valid JSON"),
        Poison(
            "version-not-a-number",
            key,
            value,
            _with(headers, "ce_schemaversion", "v1"),
            "is not an integer",
        ),
        Poison(
            "version-zero",
            key,
            value,
            _with(headers, "ce_schemaversion", "0"),
            "is not a schema version",
        ),
        Poison(
            "version-from-the-future",
            key,
            value,
            _with(headers, "ce_schemaversion", newer),
            "newer than this reader understands",
        ),
        Poison(
            "unknown-type", key, value, _with(headers, "ce_type", HOSTILE_TYPE), "is not carried by"
        ),
        Poison("oversized", key, padded, headers, f"exceeds {MAX_VALUE_BYTES}"),
        Poison("no-key", None, value, headers, "has no key"),
    ]


class Sender:
    """Writes a topic's poison records and then its valid one on the valid key's partition,
    so the consumer meets them in that order."""

    def __init__(self, producer: AIOKafkaProducer, run: str) -> None:
        self.producer = producer
        self.run = run

    async def partition(self, spec: TopicSpec, key: bytes) -> int:
        partitions = sorted(await self.producer.partitions_for(spec.name))
        return int(DefaultPartitioner()(key, partitions, partitions))

    async def poison(
        self, spec: TopicSpec, event: Event, key: bytes, *, as_key: bytes | None = None
    ) -> None:
        """``event``'s poison records, on ``key``'s partition; keyed ``as_key`` if given
        (every kind fails before its key is compared)."""
        partition = await self.partition(spec, key)
        for p in poison_records(event, as_key or key):
            marker = ("poison_case", f"{self.run}:{spec.name}:{p.kind}".encode())
            await self.producer.send_and_wait(
                spec.name,
                key=p.key,
                value=p.value,
                headers=[*p.headers, marker],
                partition=partition,
            )

    async def valid(self, spec: TopicSpec, event: Event, key: bytes) -> str:
        """Send ``event``; the id its consumers' inboxes record it under."""
        event_id = uuid4()
        headers, value = encode(event, event_id=event_id, source=SOURCE, time=datetime.now(UTC))
        await self.producer.send_and_wait(
            spec.name,
            key=key,
            value=value,
            headers=headers,
            partition=await self.partition(spec, key),
        )
        return f"{SOURCE} {event_id}"


async def status_change(
    bootstrap: str, need_id: UUID, status: ReferralStatus
) -> ReferralStatusChanged | None:
    # The topic holds this test's poison records too: they are skipped, as consumers do.
    for change in decodable(REFERRAL_EVENTS, await read_topic(bootstrap, REFERRAL_EVENTS.name)):
        if change.need_id == need_id and change.status == status:
            return change
    return None


async def unprocessed(
    conn: asyncpg.Connection, expected: Sequence[tuple[str, str, str]]
) -> list[tuple[str, str, str]]:
    """The (schema, consumer, event id) among ``expected`` with no inbox row yet."""
    missing = []
    for schema, consumer, event_id in expected:
        found = await conn.fetchval(
            f"SELECT EXISTS (SELECT 1 FROM {schema}.inbox WHERE consumer = $1 AND event_id = $2)",
            consumer,
            event_id,
        )
        if not found:
            missing.append((schema, consumer, event_id))
    return missing


async def dead_letters(bootstrap: str, run: str) -> dict[tuple[str, str, str], Any]:
    """This run's dead letters by (topic, consumer, kind)."""
    found = {}
    for topic in DEAD_LETTERERS:
        for record in await read_topic(bootstrap, topic + ".dlq"):
            case = header(record, "poison_case") or ""
            if case.startswith(f"{run}:"):
                _, source_topic, kind = case.split(":")
                found[(source_topic, header(record, "dlq_consumer") or "", kind)] = record
    return found


async def a_capacity_report_changing_nothing(conn: asyncpg.Connection) -> CapacityUpdated:
    """A demo service's capacity exactly as the directory holds it: applying it rewrites
    the same rows, so the agency's profile is not even republished."""
    row = await conn.fetchrow(
        "SELECT s.data ->> 'organization_id' AS agency_id, c.data AS capacity, "
        "a.data ->> 'value' AS status FROM matching.directory_rows c "
        "JOIN matching.directory_rows a ON a.table_name = 'attribute' "
        "AND a.data ->> 'link_id' = c.data ->> 'service_id' "
        "AND a.data ->> 'taxonomy_term_id' = 'capacity-status' "
        "JOIN matching.directory_rows s ON s.table_name = 'service' "
        "AND s.row_id = c.data ->> 'service_id' "
        "WHERE c.table_name = 'service_capacity' AND c.data ->> 'updated' IS NOT NULL "
        "ORDER BY c.row_id LIMIT 1"
    )
    assert row is not None, "the demo directory has services with counted capacity"
    capacity = row["capacity"]
    capacity = json.loads(capacity) if isinstance(capacity, str) else capacity
    return CapacityUpdated(
        agency_id=row["agency_id"],
        service_id=capacity["service_id"],
        status=CapacityStatus(row["status"]),
        available=capacity["available"],
        maximum=capacity.get("maximum"),
        updated_at=datetime.fromisoformat(capacity["updated"]),
    )


async def test_every_consumer_dead_letters_each_poison_record_and_goes_on(
    stack: LocalStack,
) -> None:
    assert stack.infra is not None
    bootstrap = stack.infra.kafka_bootstrap_servers
    run = uuid4().hex[:8]
    now = datetime.now(UTC)
    agency_id = f"ag-e2e-poison-{run}"
    conn = await asyncpg.connect(stack.infra.database_url)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    send = Sender(producer, run)
    try:
        # Given, on every topic, each kind of poison record, then a valid record behind them
        need = need_submitted(NeedCategory.HOUSING)
        need_key = str(need.need_id).encode()
        status = ReferralStatusChanged(
            need_id=uuid4(), status=ReferralStatus.SUBMITTED, sequence=1, occurred_at=now
        )
        check_in = CheckInAnswered(
            need_id=uuid4(), day=1, answer=CheckInAnswer.CONNECTED, answered_at=now
        )
        profile = agency_profile(agency_id, name="Poison Test Agency")
        capacity = await a_capacity_report_changing_nothing(conn)
        # (answers and revocations are about the valid need, so they follow its offer)
        answer_key = need_key
        consent_key = str(need.person_ref).encode()
        early_answer = OfferAccepted(
            offer_id=uuid4(), need_id=need.need_id, agency_id="ag-001", accepted_at=now
        )
        other_consent = ConsentRevoked(
            consent_id=uuid4(), person_ref=need.person_ref, revoked_at=now
        )
        for spec, event, key in [
            (NEEDS, need, need_key),
            (REFERRAL_EVENTS, status, str(status.need_id).encode()),
            (AFTERCARE, check_in, str(check_in.need_id).encode()),
            (AGENCIES, profile, agency_id.encode()),
            (OFFER_RESPONSES, early_answer, answer_key),
            (CONSENT_EVENTS, other_consent, consent_key),
        ]:
            await send.poison(spec, event, key)
        # (under the throwaway agency's name: other tests read a demo agency's dead letters)
        await send.poison(
            CAPACITY_UPDATES, capacity, capacity.agency_id.encode(), as_key=agency_id.encode()
        )
        need_event = await send.valid(NEEDS, need, need_key)
        status_event = await send.valid(REFERRAL_EVENTS, status, str(status.need_id).encode())
        check_in_event = await send.valid(AFTERCARE, check_in, str(check_in.need_id).encode())
        await send.valid(AGENCIES, profile, agency_id.encode())
        capacity_event = await send.valid(CAPACITY_UPDATES, capacity, capacity.agency_id.encode())
        expected = [
            ("matching", NEEDS_CONSUMER, need_event),
            ("notifications", NOTIFICATIONS, need_event),
            ("intake", STATUS_CONSUMER, status_event),
            ("notifications", NOTIFICATIONS, status_event),
            ("intake", CHECK_IN_CONSUMER, check_in_event),
            ("matching", CAPACITY_CONSUMER, capacity_event),
        ]
        # and, once the need is offered, an outcome for that open offer (ignored: it was
        # never accepted) and then the revocation of the need's consent (which cancels it)
        offer = await eventually(
            lambda: status_change(bootstrap, need.need_id, ReferralStatus.OFFERED),
            "the need offered",
        )
        assert offer.offer_id and offer.agency_id
        outcome = OutcomeReported(
            offer_id=offer.offer_id,
            need_id=need.need_id,
            agency_id=offer.agency_id,
            outcome=Outcome.GOT_HELP,
            reported_at=now,
        )
        outcome_event = await send.valid(OFFER_RESPONSES, outcome, answer_key)
        await eventually(
            lambda: _all_processed(conn, [("matching", RESPONSES_CONSUMER, outcome_event)]),
            "the outcome taken",
        )
        revoked = ConsentRevoked(
            consent_id=need.consent.consent_id, person_ref=need.person_ref, revoked_at=now
        )
        revoked_event = await send.valid(CONSENT_EVENTS, revoked, consent_key)
        expected += [
            ("matching", RESPONSES_CONSUMER, outcome_event),
            ("matching", CONSENTS_CONSUMER, revoked_event),
            ("notifications", NOTIFICATIONS, revoked_event),
        ]

        # Then every consumer dead-lettered every poison record of its topics, with its
        # name and the reason
        kinds = {p.kind: p.reason for p in poison_records(need, need_key)}
        wanted = {
            (topic, consumer, kind)
            for topic, consumers in DEAD_LETTERERS.items()
            for consumer in consumers
            for kind in kinds
        }

        async def all_dead_lettered() -> dict[tuple[str, str, str], Any] | None:
            found = await dead_letters(bootstrap, run)
            return found if wanted <= set(found) else None

        found = await eventually(all_dead_lettered, "every poison record in its DLQ")
        assert set(found) == wanted, "nothing else of this run was dead-lettered"
        for (topic, consumer, kind), record in found.items():
            reason = header(record, "dlq_reason") or ""
            assert kinds[kind] in reason, (topic, consumer, kind, reason)
            assert header(record, "dlq_topic") == topic
            assert record.topic == topic + ".dlq"

        # and each went on to process the valid record behind them
        await eventually(lambda: _all_processed(conn, expected), "every valid record processed")
        await eventually(
            lambda: conn.fetchval(
                "SELECT name FROM matching.agency_profiles WHERE agency_id = $1", agency_id
            ),
            "the throwaway agency in matching's directory",
        )
        # (the revocation behind the poison ones took effect: the need is cancelled)
        await eventually(
            lambda: status_change(bootstrap, need.need_id, ReferralStatus.CANCELLED),
            "the need cancelled",
        )

        # And the operator dashboard lists the hostile event type as text, never as markup
        admin = WorkerBrowser(stack.intake_url)
        admin.log_in(*add_worker(stack, "Poison Admin", role="admin"))
        page = admin.http.get("/admin/dashboard")
        assert page.status_code == 200
        assert "<script>alert(1)</script>" not in page.text
        assert ESCAPED_TYPE in page.text
    finally:
        # The throwaway agency leaves the directory (a matching restart must find the view
        # it reads back from the topic equal to what the directory's owner published).
        await producer.send_and_wait(AGENCIES.name, key=agency_id.encode(), value=None)
        await producer.stop()
        await eventually(
            lambda: _gone(conn, agency_id), "the throwaway agency removed by its tombstone"
        )
        await conn.close()


async def _all_processed(conn: asyncpg.Connection, expected: list[tuple[str, str, str]]) -> bool:
    return not await unprocessed(conn, expected)


async def _gone(conn: asyncpg.Connection, agency_id: str) -> bool:
    return not await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM matching.agency_profiles WHERE agency_id = $1)", agency_id
    )
