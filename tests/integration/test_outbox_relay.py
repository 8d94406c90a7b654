"""The outbox publishes what committed, in order, once; what rolled back never leaves."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client import REGISTRY

from services import cli
from shared import db, outbox
from shared.clock import ManualClock
from shared.cloudevents import decode
from shared.events import (
    Event,
    ExcludedAgency,
    OfferAccepted,
    ReferralStatus,
    ReferralStatusChanged,
)
from shared.infra import Infrastructure
from shared.kafka import ensure_topics, make_producer
from shared.settings import BaseServiceSettings
from shared.topics import AGENCIES, TopicSpec
from tests.integration.conftest import fresh_schema
from tests.kafka_reader import eventually, read_topic

pytestmark = pytest.mark.integration
CLOCK = ManualClock(datetime(2026, 11, 21, tzinfo=UTC))


def an_acceptance(need_id: object) -> OfferAccepted:
    return OfferAccepted(
        offer_id=uuid4(), need_id=need_id, agency_id="ag-001", accepted_at=CLOCK.now()
    )


@dataclass
class Relays:
    """A topic of the test's own, a fresh schema with its outbox, a started producer, and
    the relays a test starts on them (stopped, with the rest, when the test ends)."""

    infra: Infrastructure
    spec: TopicSpec
    schema: str
    pool: asyncpg.Pool
    producer: AIOKafkaProducer
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(
        self,
        *,
        producer: AIOKafkaProducer | None = None,
        poll_interval_s: float = 0.1,
        retention: timedelta | None = None,
    ) -> asyncio.Task[None]:
        relay = outbox.OutboxRelay(
            self.pool,
            producer or self.producer,
            self.infra.database_url,
            self.schema,
            poll_interval_s,
            retention=retention,
        )
        self.tasks.append(asyncio.create_task(relay.run()))
        return self.tasks[-1]


@contextlib.asynccontextmanager
async def relays(infra: Infrastructure) -> AsyncIterator[Relays]:
    spec = TopicSpec(
        f"test.outbox.{uuid4().hex[:8]}", "need_id", (OfferAccepted, ReferralStatusChanged)
    )
    await ensure_topics(infra.kafka_bootstrap_servers, [spec.name], partitions=1)
    schema, pool = await fresh_schema(infra, "matching")
    settings = BaseServiceSettings(
        database_url=infra.database_url, kafka_bootstrap_servers=infra.kafka_bootstrap_servers
    )
    producer = make_producer(settings, "test-outbox")
    await producer.start()
    running = Relays(infra, spec, schema, pool, producer)
    try:
        yield running
    finally:
        for task in running.tasks:
            task.cancel()
        await asyncio.gather(*running.tasks, return_exceptions=True)
        await producer.stop()
        await pool.close()


async def enqueue(pool: asyncpg.Pool, spec: TopicSpec, events: list[Event]) -> None:
    async with pool.acquire() as conn, conn.transaction():
        for event in events:
            await outbox.enqueue(conn, spec, event, source="/tests", clock=CLOCK)


async def drained(pool: asyncpg.Pool) -> bool:
    async with pool.acquire() as conn:
        return await outbox.backlog(conn) == 0


async def relay_backends(pool: asyncpg.Pool, schema: str) -> dict[int, bool]:
    """The backend of each relay connection of ``schema`` and whether it holds the lock."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT a.pid, EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid "
            "AND l.locktype = 'advisory' AND l.granted) AS holds "
            "FROM pg_stat_activity a WHERE a.application_name = $1",
            f"refnet-{schema}-outbox",
        )
    return {row["pid"]: row["holds"] for row in rows}


async def lock_holder(pool: asyncpg.Pool, schema: str, relays: int) -> int | None:
    """The backend holding the lock, once ``relays`` relay connections exist and exactly
    one of them holds it; else None."""
    backends = await relay_backends(pool, schema)
    holders = [pid for pid, holds in backends.items() if holds]
    return holders[0] if len(backends) == relays and len(holders) == 1 else None


async def published(infra: Infrastructure, spec: TopicSpec) -> list[object]:
    records = await read_topic(infra.kafka_bootstrap_servers, spec.name)
    return [decode(spec, r.key, r.value, r.headers).event for r in records]


async def test_committed_events_are_published_in_order_and_rolled_back_ones_never(
    infra: Infrastructure,
) -> None:
    need_id = uuid4()
    committed = [an_acceptance(need_id) for _ in range(5)]
    async with relays(infra) as r:
        await enqueue(r.pool, r.spec, committed)
        with pytest.raises(RuntimeError):
            async with r.pool.acquire() as conn, conn.transaction():
                await outbox.enqueue(
                    conn, r.spec, an_acceptance(need_id), source="/tests", clock=CLOCK
                )
                raise RuntimeError("the state change failed")

        r.start()
        await eventually(lambda: drained(r.pool), "the outbox relayed")

    assert await published(infra, r.spec) == committed


async def test_a_second_relay_waits_and_takes_over_when_the_first_one_ends(
    infra: Infrastructure,
) -> None:
    need_id = uuid4()
    events = [an_acceptance(need_id) for _ in range(6)]
    async with relays(infra) as r:
        first, _ = r.start(), r.start()
        await enqueue(r.pool, r.spec, events[:3])
        await eventually(lambda: drained(r.pool), "the first rows relayed")
        # one relay active, the other waiting
        await eventually(lambda: lock_holder(r.pool, r.schema, relays=2), "one relay holding")
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        await enqueue(r.pool, r.spec, events[3:])
        await eventually(lambda: drained(r.pool), "the rest relayed by the relay that took over")
        await eventually(lambda: lock_holder(r.pool, r.schema, relays=1), "the other one holding")

    assert await published(infra, r.spec) == events


async def test_a_standby_relay_takes_over_from_one_whose_backend_was_terminated(
    infra: Infrastructure,
) -> None:
    """As when Postgres ends the active relay's session (pg_terminate_backend, a failover,
    a dead host's socket timing out): the standby takes the lock and publishes what comes
    next, in order, and the relay that lost its session reconnects as the new standby."""
    need_id = uuid4()
    events = [an_acceptance(need_id) for _ in range(6)]
    async with relays(infra) as r:
        pool, schema = r.pool, r.schema
        # The active relay polls slowly (NOTIFY still wakes it), so after its session ends
        # it reconnects well after the standby, polling fast, has taken the lock: which of
        # the two gets it is otherwise a race this test is not about.
        r.start(poll_interval_s=2.0)
        active = await eventually(lambda: lock_holder(pool, schema, relays=1), "a relay active")
        r.start(poll_interval_s=0.1)
        await eventually(lambda: lock_holder(pool, schema, relays=2), "a standby waiting")
        (standby,) = set(await relay_backends(pool, schema)) - {active}
        await enqueue(pool, r.spec, events[:3])
        await eventually(lambda: drained(pool), "the first rows relayed")

        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT pg_terminate_backend($1, 60000)", active)
        await enqueue(pool, r.spec, events[3:])

        await eventually(lambda: drained(pool), "the rest relayed after the termination")
        assert (await relay_backends(pool, schema)).get(standby), "the standby took the lock"

        async def killed_one_is_the_new_standby() -> bool:
            backends = await relay_backends(pool, schema)
            return active not in backends and await lock_holder(pool, schema, relays=2) == standby

        await eventually(killed_one_is_the_new_standby, "the terminated relay back, waiting")

    assert await published(infra, r.spec) == events


async def test_a_relay_that_cannot_reach_the_broker_gives_the_lock_to_one_that_can(
    infra: Infrastructure, caplog: pytest.LogCaptureFixture
) -> None:
    """One replica's broker trouble does not stop the others publishing: after
    BROKER_FAILURES_BEFORE_RELEASE failures in a row the relay gives up the lock, and a
    replica whose producer works takes it; the first keeps running, as the standby."""
    need_id = uuid4()
    events = [an_acceptance(need_id) for _ in range(5)]
    caplog.set_level(logging.WARNING, logger=outbox.__name__)
    async with relays(infra) as r:
        pool, schema = r.pool, r.schema
        # A producer that learned the topic from the broker, then stopped: each send raises
        # ProducerClosed, a KafkaError, at once, where a replica cut off from the broker
        # would get a KafkaTimeoutError after its request timeout.
        cut_off = AIOKafkaProducer(bootstrap_servers=infra.kafka_bootstrap_servers)
        await cut_off.start()
        await cut_off.partitions_for(r.spec.name)
        await cut_off.stop()
        broken = r.start(producer=cut_off)
        await eventually(lambda: lock_holder(pool, schema, relays=1), "the cut-off relay active")
        r.start()
        await eventually(lambda: lock_holder(pool, schema, relays=2), "a standby waiting")

        await enqueue(pool, r.spec, events)

        await eventually(lambda: drained(pool), "the rows relayed by the healthy relay")
        await eventually(lambda: lock_holder(pool, schema, relays=2), "the cut-off one waiting")
        assert not broken.done(), "the relay that gave up the lock keeps running"

    assert await published(infra, r.spec) == events
    released = [r.getMessage() for r in caplog.records if "released its lock" in r.getMessage()]
    assert released, "the relay says it gave up the lock"
    assert (
        f"publishing failed {outbox.BROKER_FAILURES_BEFORE_RELEASE} times in a row" in released[0]
    )
    assert "ProducerClosed" in released[0]


def unmatched_among_many(need_id: object, services: int) -> ReferralStatusChanged:
    """An unmatched need that lists every service it considered and why it was left out."""
    return ReferralStatusChanged(
        need_id=need_id,
        status=ReferralStatus.UNMATCHED,
        sequence=2,
        occurred_at=CLOCK.now(),
        reason="no eligible agency left",
        excluded=tuple(
            ExcludedAgency(
                agency_id=f"ag-{i:05d}", service_id=f"svc-{i:05d}", reason="reports no capacity"
            )
            for i in range(services)
        ),
    )


async def test_an_event_the_broker_can_never_take_is_set_aside_and_the_rest_go_out(
    infra: Infrastructure, caplog: pytest.LogCaptureFixture
) -> None:
    """A row larger than the producer may send (its max_request_size set below what the
    event contract allows, or a row written before events were checked for size) fails the
    same way however often it is tried:
    it is set aside with the reason, and the rows behind it, which used to wait for it for
    good, are published; the relay keeps its lock."""
    need_id = uuid4()
    before, after = [an_acceptance(need_id)], [an_acceptance(uuid4()) for _ in range(3)]
    too_large = unmatched_among_many(need_id, 500)
    caplog.set_level(logging.WARNING, logger=outbox.__name__)
    async with relays(infra) as r:
        small = AIOKafkaProducer(
            bootstrap_servers=infra.kafka_bootstrap_servers, acks="all", max_request_size=16_384
        )
        await small.start()
        try:
            await enqueue(r.pool, r.spec, [*before, too_large, *after])
            r.start(producer=small)

            await eventually(lambda: drained(r.pool), "the rows behind the large one relayed")
            async with r.pool.acquire() as conn:
                set_aside = await conn.fetch(
                    "SELECT headers, value, rejection, published_at FROM outbox "
                    "WHERE rejected_at IS NOT NULL"
                )
                assert len(await outbox.set_aside(conn)) == 1
            assert await lock_holder(r.pool, r.schema, relays=1), "the relay keeps the lock"
        finally:
            for task in r.tasks:
                task.cancel()
            await asyncio.gather(*r.tasks, return_exceptions=True)
            await small.stop()

    assert await published(infra, r.spec) == [*before, *after]
    (row,) = set_aside
    assert row["published_at"] is None
    headers = [(name, raw.encode()) for name, raw in row["headers"]]
    assert decode(r.spec, str(need_id).encode(), bytes(row["value"]), headers).event == too_large
    assert "MessageSizeTooLargeError" in row["rejection"]
    (logged,) = [rec for rec in caplog.records if rec.levelno == logging.ERROR]
    message = logged.getMessage()
    assert r.spec.name in message and "MessageSizeTooLargeError" in message
    assert "released its lock" not in caplog.text


async def test_rows_published_longer_ago_than_the_retention_are_deleted_and_no_others(
    infra: Infrastructure, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The active relay deletes what went out more than its retention ago, a batch at a time
    until none is left; rows published since, set-aside rows, rows still to publish and rows
    published after a set-aside row with the same key (which tell `resend` it would overtake
    them) are kept, however old."""
    monkeypatch.setattr(outbox, "PRUNE_BATCH", 2)  # so the five rows due take three rounds
    events = [an_acceptance(uuid4()) for _ in range(8)]
    waiting_event, behind_set_aside = an_acceptance(uuid4()), an_acceptance(events[7].need_id)
    async with relays(infra) as r:
        await enqueue(r.pool, r.spec, [*events, waiting_event, behind_set_aside])
        async with r.pool.acquire() as conn:
            ids = [row["id"] for row in await conn.fetch("SELECT id FROM outbox ORDER BY id")]
            due, recent, (set_aside, waiting, behind) = ids[:5], ids[5:7], ids[7:]
            await published_ago(conn, due, timedelta(days=8))
            await published_ago(conn, recent, timedelta(days=6))
            await published_ago(conn, [behind], timedelta(days=8))
            await conn.execute(
                "UPDATE outbox SET rejected_at = now() - interval '30 days', rejection = 'test', "
                "created_at = now() - interval '30 days' WHERE id = $1",
                set_aside,
            )
            await conn.execute(
                "UPDATE outbox SET created_at = now() - interval '30 days' WHERE id = $1", waiting
            )

        async def due_deleted_and_rest_published() -> bool:
            async with r.pool.acquire() as conn:
                left = await conn.fetchval(
                    "SELECT count(*) FROM outbox WHERE id = ANY($1::bigint[])", due
                )
            return left == 0 and await drained(r.pool)

        r.start(retention=timedelta(days=7))
        await eventually(due_deleted_and_rest_published, "the rows due deleted")
        async with r.pool.acquire() as conn:
            kept = {row["id"] for row in await conn.fetch("SELECT id FROM outbox")}

    assert kept == {*recent, set_aside, waiting, behind}
    assert await published(infra, r.spec) == [waiting_event]
    pruned = REGISTRY.get_sample_value("refnet_outbox_pruned_total", {"service": r.schema})
    assert pruned == len(due)


async def published_ago(conn: asyncpg.Connection, ids: list[int], ago: timedelta) -> None:
    await conn.execute(
        "UPDATE outbox SET published_at = now() - $2::interval WHERE id = ANY($1::bigint[])",
        ids,
        ago,
    )


async def test_a_set_aside_event_is_resent_unless_that_would_undo_a_newer_one(
    infra: Infrastructure,
) -> None:
    """`refnet outbox resend` gives a set-aside row back to the relay, which publishes it;
    not when a newer event with its key was written since (readers would take the old one
    as the latest), nor for an agency profile, nor twice."""
    first, second = uuid4(), uuid4()
    large_first, large_second = unmatched_among_many(first, 500), unmatched_among_many(second, 500)
    newer_first = an_acceptance(first)
    async with relays(infra) as r:
        small = AIOKafkaProducer(
            bootstrap_servers=infra.kafka_bootstrap_servers, acks="all", max_request_size=16_384
        )
        await small.start()
        try:
            await enqueue(r.pool, r.spec, [large_first, large_second, newer_first])
            r.start(producer=small)
            await eventually(lambda: drained(r.pool), "the newer event relayed")
        finally:
            for task in r.tasks:
                task.cancel()
            await asyncio.gather(*r.tasks, return_exceptions=True)
            await small.stop()
        async with r.pool.acquire() as conn:
            ids = {entry.key: entry.event_id for entry in await outbox.set_aside(conn)}
            profile_id = await set_aside_profile(conn)
            with pytest.raises(outbox.ResendRefused, match="newer event with the same key"):
                await outbox.resend(conn, ids[str(first)])
            with pytest.raises(outbox.ResendRefused, match="on refnet.agencies.v1: import"):
                await outbox.resend(
                    conn, profile_id, refused_topics={AGENCIES.name: "import the directory"}
                )
            with pytest.raises(outbox.ResendRefused, match="no event"):
                await outbox.resend(conn, uuid4())
            resent = await outbox.resend(conn, ids[str(second)])
            with pytest.raises(outbox.ResendRefused, match="was not set aside"):
                await outbox.resend(conn, ids[str(second)])
        r.start()  # a producer that may send it, as after raising the limit
        await eventually(lambda: drained(r.pool), "the resent event relayed")
        async with r.pool.acquire() as conn:
            still = {entry.event_id for entry in await outbox.set_aside(conn)}

    assert resent.key == str(second) and "MessageSizeTooLargeError" in resent.rejection
    assert still == {ids[str(first)], profile_id}
    assert await published(infra, r.spec) == [newer_first, large_second]


async def set_aside_profile(conn: asyncpg.Connection) -> UUID:
    event_id = uuid4()
    await conn.execute(
        "INSERT INTO outbox (event_id, topic, key, headers, value, rejected_at, rejection) "
        "VALUES ($1, $2, 'ag-001', '[]', '{}', now(), 'test')",
        event_id,
        AGENCIES.name,
    )
    return event_id


async def test_refnet_outbox_lists_set_aside_events_and_resends_one(
    infra: Infrastructure, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    schema, pool = await fresh_schema(infra, "matching")
    real_create_pool = db.create_pool

    opened: list[str] = []

    async def create_pool_in_test_schema(url: str, service: str, **kw: Any) -> asyncpg.Pool:
        opened.append(service)
        return await real_create_pool(url, schema, **kw)

    monkeypatch.setattr(db, "create_pool", create_pool_in_test_schema)
    monkeypatch.setenv("DATABASE_URL", infra.database_url)
    try:
        async with pool.acquire() as conn:
            profile_id = await set_aside_profile(conn)

        resend = ("outbox", "resend", "matching", str(profile_id))
        assert await asyncio.to_thread(run_cli, "outbox", "list", "--service", "matching") is None
        listed = capsys.readouterr().out
        refused = await asyncio.to_thread(run_cli, *resend)
        async with pool.acquire() as conn:
            await conn.execute("UPDATE outbox SET topic = 'refnet.needs.v1'")
        assert await asyncio.to_thread(run_cli, *resend) is None
        resent = capsys.readouterr().out
        not_an_id = await asyncio.to_thread(run_cli, "outbox", "resend", "matching", "nope")
        async with pool.acquire() as conn:
            left = await outbox.set_aside(conn)
    finally:
        await pool.close()

    assert f"matching {profile_id}" in listed and "reason   test" in listed
    assert listed.rstrip().endswith("1 set-aside event(s)")
    assert isinstance(refused, str) and "import the directory again" in refused
    assert not_an_id == "refnet outbox resend: 'nope' is not an event id"
    assert f"publishes {profile_id} to refnet.needs.v1 at its next round" in resent
    assert left == []
    assert set(opened) == {"matching"}


def run_cli(*argv: str) -> str | int | None:
    """The command's exit status or message (None when it ends normally)."""
    try:
        cli.main(list(argv))
    except SystemExit as exc:
        return exc.code
    return None


async def test_a_failing_prune_never_stops_publishing(
    infra: Infrastructure, caplog: pytest.LogCaptureFixture
) -> None:
    """Deleting old rows is housekeeping: when Postgres refuses it, the relay says so and
    goes on publishing."""
    caplog.set_level(logging.WARNING, logger=outbox.__name__)
    event = an_acceptance(uuid4())
    async with relays(infra) as r:
        async with r.pool.acquire() as conn:
            await conn.execute(
                "CREATE FUNCTION refuse_delete() RETURNS trigger LANGUAGE plpgsql AS $$ "
                "BEGIN RAISE EXCEPTION 'deleting is not allowed here'; END $$"
            )
            await conn.execute(
                "CREATE TRIGGER refuse_delete BEFORE DELETE ON outbox "
                "FOR EACH ROW EXECUTE FUNCTION refuse_delete()"
            )
        await enqueue(r.pool, r.spec, [an_acceptance(uuid4())])
        async with r.pool.acquire() as conn:
            await published_ago(conn, [await outbox.last_row_id(conn)], timedelta(days=8))
        r.start(retention=timedelta(days=7))
        await eventually(
            lambda: asyncio.sleep(0, "could not delete old rows" in caplog.text), "the warning"
        )
        await enqueue(r.pool, r.spec, [event])
        await eventually(lambda: drained(r.pool), "the new event relayed")

    assert await published(infra, r.spec) == [event]
    assert "deleting is not allowed here" in caplog.text
    assert "released its lock" not in caplog.text and "will retry" not in caplog.text
