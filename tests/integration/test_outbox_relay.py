"""The outbox publishes what committed, in order, once; what rolled back never leaves."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from uuid import uuid4

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from shared import outbox
from shared.clock import ManualClock
from shared.cloudevents import decode
from shared.events import OfferAccepted
from shared.infra import Infrastructure
from shared.kafka import ensure_topics, make_producer
from shared.settings import BaseServiceSettings
from shared.topics import TopicSpec
from tests.integration.conftest import fresh_schema
from tests.kafka_reader import eventually, read_topic

pytestmark = pytest.mark.integration
CLOCK = ManualClock(datetime(2026, 11, 21, tzinfo=UTC))


def an_acceptance(need_id: object) -> OfferAccepted:
    return OfferAccepted(
        offer_id=uuid4(), need_id=need_id, agency_id="ag-001", accepted_at=CLOCK.now()
    )


async def a_topic_schema_and_producer(
    infra: Infrastructure,
) -> tuple[TopicSpec, str, asyncpg.Pool, AIOKafkaProducer]:
    """A topic of the test's own, a fresh schema with its outbox, and a started producer."""
    spec = TopicSpec(f"test.outbox.{uuid4().hex[:8]}", "need_id", (OfferAccepted,))
    await ensure_topics(infra.kafka_bootstrap_servers, [spec.name], partitions=1)
    schema, pool = await fresh_schema(infra, "matching")
    settings = BaseServiceSettings(
        database_url=infra.database_url, kafka_bootstrap_servers=infra.kafka_bootstrap_servers
    )
    producer = make_producer(settings, "test-outbox")
    await producer.start()
    return spec, schema, pool, producer


async def test_committed_events_are_published_in_order_and_rolled_back_ones_never(
    infra: Infrastructure,
) -> None:
    spec, schema, pool, producer = await a_topic_schema_and_producer(infra)
    need_id = uuid4()
    committed = [an_acceptance(need_id) for _ in range(5)]
    try:
        async with pool.acquire() as conn, conn.transaction():
            for event in committed:
                await outbox.enqueue(conn, spec, event, source="/tests", clock=CLOCK)
        with pytest.raises(RuntimeError):
            async with pool.acquire() as conn, conn.transaction():
                await outbox.enqueue(
                    conn, spec, an_acceptance(need_id), source="/tests", clock=CLOCK
                )
                raise RuntimeError("the state change failed")

        relay = outbox.OutboxRelay(pool, producer, infra.database_url, schema, 0.1)
        task = asyncio.create_task(relay.run())
        try:

            async def drained() -> bool:
                async with pool.acquire() as conn:
                    return await outbox.backlog(conn) == 0

            await eventually(drained, "the outbox relayed")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    finally:
        await producer.stop()
        await pool.close()

    records = await read_topic(infra.kafka_bootstrap_servers, spec.name)
    published = [decode(spec, r.key, r.value, r.headers).event for r in records]
    assert published == committed


async def test_a_second_relay_waits_and_takes_over_when_the_first_one_ends(
    infra: Infrastructure,
) -> None:
    spec, schema, pool, producer = await a_topic_schema_and_producer(infra)
    need_id = uuid4()
    events = [an_acceptance(need_id) for _ in range(6)]

    async def enqueue(batch: list[OfferAccepted]) -> None:
        async with pool.acquire() as conn, conn.transaction():
            for event in batch:
                await outbox.enqueue(conn, spec, event, source="/tests", clock=CLOCK)

    async def drained() -> bool:
        async with pool.acquire() as conn:
            return await outbox.backlog(conn) == 0

    async def relay_locks() -> int:
        async with pool.acquire() as conn:
            return int(
                await conn.fetchval(
                    "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
                    "WHERE l.locktype = 'advisory' AND l.granted "
                    "AND a.application_name = $1",
                    f"refnet-{schema}-outbox",
                )
            )

    tasks = []
    try:
        for _ in range(2):
            relay = outbox.OutboxRelay(pool, producer, infra.database_url, schema, 0.1)
            tasks.append(asyncio.create_task(relay.run()))
        await enqueue(events[:3])
        await eventually(drained, "the first rows relayed")
        assert await relay_locks() == 1  # one relay active, the other waiting
        first = tasks.pop(0)
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        await enqueue(events[3:])
        await eventually(drained, "the rest relayed by the relay that took over")
        assert await relay_locks() == 1
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await producer.stop()
        await pool.close()

    records = await read_topic(infra.kafka_bootstrap_servers, spec.name)
    assert [decode(spec, r.key, r.value, r.headers).event for r in records] == events
