"""The transactional outbox: a state change and the events it causes commit together; the
relay then publishes unpublished rows in order and marks them sent.

A crash between publish and mark re-publishes the same ce_id, which consumers' inboxes
recognise, so the outbox is at-least-once and the system effectively-once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError

from shared import metrics, tracing
from shared.clock import Clock
from shared.cloudevents import encode
from shared.db import connect
from shared.events import Event
from shared.logs import log_context
from shared.topics import PLATFORM_TOPICS, TopicSpec, is_agency_offers

log = logging.getLogger(__name__)

BATCH_SIZE = 200
# Topics keyed by need_id (the agency offer topics are too), so a row's key names its need.
_NEED_KEYED = frozenset(spec.name for spec in PLATFORM_TOPICS if spec.key_field == "need_id")


def _keyed_by_need(topic: str) -> bool:
    return topic in _NEED_KEYED or is_agency_offers(topic)


@dataclass(frozen=True)
class OutboxRow:
    """An event encoded for the outbox. Encoding happens when the row is made, so the
    traceparent it carries is the one current then, however late the row is written."""

    event_id: UUID
    topic: str
    key: str
    headers: list[list[str]]
    value: bytes


def outbox_row(
    spec: TopicSpec, event: Event, *, source: str, clock: Clock, event_id: UUID | None = None
) -> OutboxRow:
    event_id = event_id or uuid4()
    headers, value = encode(event, event_id=event_id, source=source, time=clock.now())
    stored_headers = [[name, raw.decode()] for name, raw in headers]
    return OutboxRow(event_id, spec.name, spec.key_of(event), stored_headers, value)


def insert_sql(event_ids: str, topics: str, keys: str, headers: str, values: str) -> str:
    """An INSERT of events into the outbox, in the order given, from arrays in the five
    placeholders given (the arrays ``columns`` makes): for a statement that writes the
    outbox along with other things, in one round trip."""
    return (
        "INSERT INTO outbox (event_id, topic, key, headers, value) "
        f"SELECT e, t, k, h, v FROM unnest({event_ids}, {topics}, {keys}, {headers}, "
        f"{values}) WITH ORDINALITY AS r(e, t, k, h, v, n) ORDER BY n"
    )


def columns(rows: Sequence[OutboxRow]) -> list[tuple[list[Any], str]]:
    """The rows as insert_sql's five arrays, each with the cast its placeholder needs."""
    return [
        ([row.event_id for row in rows], "uuid[]"),
        ([row.topic for row in rows], "text[]"),
        ([row.key for row in rows], "text[]"),
        ([json.dumps(row.headers) for row in rows], "text[]::jsonb[]"),
        ([row.value for row in rows], "bytea[]"),
    ]


async def write(conn: asyncpg.Connection, rows: Sequence[OutboxRow]) -> None:
    """Add encoded events to the outbox inside the caller's transaction, in one statement
    (so one NOTIFY wakes the relay), in the order given."""
    if not rows:
        return
    arrays = columns(rows)
    placeholders = (f"${i}::{cast}" for i, (_, cast) in enumerate(arrays, start=1))
    await conn.execute(insert_sql(*placeholders), *(values for values, _ in arrays))


async def enqueue(
    conn: asyncpg.Connection,
    spec: TopicSpec,
    event: Event,
    *,
    source: str,
    clock: Clock,
    event_id: UUID | None = None,
) -> UUID:
    """Add ``event`` to the outbox inside the caller's transaction."""
    row = outbox_row(spec, event, source=source, clock=clock, event_id=event_id)
    await write(conn, [row])
    return row.event_id


async def enqueue_tombstone(conn: asyncpg.Connection, spec: TopicSpec, key: str) -> None:
    """A null value for ``key`` on a compacted topic: the record it replaces is deleted."""
    if not spec.compacted:
        raise ValueError(f"{spec.name} is not compacted; a tombstone there means nothing")
    await conn.execute(
        "INSERT INTO outbox (event_id, topic, key, headers, value) VALUES ($1, $2, $3, '[]', NULL)",
        uuid4(),
        spec.name,
        key,
    )


async def backlog(conn: asyncpg.Connection, *, through: int | None = None) -> int:
    """Rows not yet published; with ``through`` (a ``last_row_id``), only rows up to it, so
    a caller waiting for its own rows is not kept waiting by ones added since."""
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM outbox WHERE published_at IS NULL AND rejected_at IS NULL "
            "AND ($1::bigint IS NULL OR id <= $1)",
            through,
        )
    )


@dataclass(frozen=True)
class SetAside:
    """A row the relay set aside because the broker could not take it."""

    event_id: UUID
    topic: str
    key: str
    size: int
    rejected_at: datetime
    rejection: str


_SET_ASIDE_COLUMNS = (
    "event_id, topic, key, coalesce(length(value), 0) AS size, rejected_at, rejection"
)


def _set_aside_of(row: asyncpg.Record) -> SetAside:
    return SetAside(**{name: row[name] for name in SetAside.__dataclass_fields__})


async def set_aside(conn: asyncpg.Connection) -> list[SetAside]:
    """The rows the relay set aside, oldest first."""
    rows = await conn.fetch(
        f"SELECT {_SET_ASIDE_COLUMNS} FROM outbox WHERE rejected_at IS NOT NULL ORDER BY id"
    )
    return [_set_aside_of(row) for row in rows]


class ResendRefused(Exception):
    """Why a set-aside row was not given back to the relay."""


async def resend(
    conn: asyncpg.Connection, event_id: UUID, *, refused_topics: Mapping[str, str] | None = None
) -> SetAside:
    """Give a set-aside row back to the relay, which publishes it at its next round (and
    sets it aside again if the broker still cannot take it). Refused where publishing it
    now would undo something: a newer event with its key has been written since (it would
    go out after that one), or its topic is one of ``refused_topics`` (topic: what to do
    instead), whose owner makes its events again another way."""
    async with conn.transaction():
        row = await conn.fetchrow(
            f"SELECT id, {_SET_ASIDE_COLUMNS} FROM outbox WHERE event_id = $1 FOR UPDATE",
            event_id,
        )
        if row is None:
            raise ResendRefused(f"no event {event_id} in this outbox")
        if row["rejected_at"] is None:
            raise ResendRefused(f"event {event_id} was not set aside")
        instead = (refused_topics or {}).get(row["topic"])
        if instead is not None:
            raise ResendRefused(f"event {event_id} is on {row['topic']}: {instead}")
        newer = await conn.fetchval(
            "SELECT event_id FROM outbox WHERE id > $1 AND topic = $2 AND key = $3 "
            "ORDER BY id LIMIT 1",
            row["id"],
            row["topic"],
            row["key"],
        )
        if newer is not None:
            raise ResendRefused(
                f"event {event_id} would reach {row['topic']} after {newer}, a newer event "
                f"with the same key ({row['key']}), and readers would take it as the latest"
            )
        await conn.execute(
            "UPDATE outbox SET rejected_at = NULL, rejection = NULL WHERE id = $1", row["id"]
        )
    return _set_aside_of(row)


async def last_row_id(conn: asyncpg.Connection) -> int:
    """The newest row's id (0 for an empty outbox)."""
    return int(await conn.fetchval("SELECT coalesce(max(id), 0) FROM outbox"))


# One relay per schema at a time: the key of the advisory lock the active one holds.
_RELAY_LOCK = "hashtext(current_schema() || '.outbox')"
# The server gives up on the relay's connection after about 25 s without an answer, so the
# lock of a relay whose host vanished (no FIN, as when a machine or its network dies) is
# freed that soon, not hours later. Keepalive probes find the loss while the connection is
# idle (else the kernel's default waits two hours); they are not sent while data the relay
# has not acknowledged (NOTIFYs, say) is queued, and there tcp_user_timeout ends the
# retransmissions the kernel would otherwise keep up for about 15 minutes.
_RELAY_KEEPALIVE = {
    "tcp_keepalives_idle": "10",
    "tcp_keepalives_interval": "5",
    "tcp_keepalives_count": "3",
    "tcp_user_timeout": "25000",  # ms
}
# A relay that cannot reach the broker this many times in a row gives up the lock, so that
# a replica whose broker connection works can publish; a success starts the count again.
BROKER_FAILURES_BEFORE_RELEASE = 3
# How long, in poll intervals, a relay that gave up the lock waits before competing for it
# again: long enough for a waiting replica (which tries every poll interval) to take it,
# jittered so that replicas which all lost the broker do not keep trying in step.
_RELEASE_BACKOFF_POLLS = (3.0, 6.0)
# The active relay deletes published rows older than its retention this many at a time,
# once it has published what was waiting, so an outbox that has grown for months is cut
# down in short steps between rounds of publishing; once a step finds fewer, it looks again
# an hour on (not each time it takes the lock, which a flapping relay might do often).
PRUNE_BATCH = 1000
PRUNE_EVERY_S = 3600.0


class BrokerUnreachable(Exception):
    """The relay failed to publish BROKER_FAILURES_BEFORE_RELEASE times in a row."""


class OutboxRelay:
    """Publishes a service's outbox. The active relay holds a session advisory lock on a
    connection of its own, which also LISTENs for new rows; a replica's relay waits for the
    lock and takes over when that connection ends (its process died, say) or when the
    active relay gives the lock up, having failed to reach the broker
    BROKER_FAILURES_BEFORE_RELEASE times in a row. One relay per schema keeps per-key order
    even when the service runs as several replicas.

    Holding the lock for the session rather than per transaction makes a wake two round
    trips (read the batch, mark it sent) instead of five, which counts at low load, where
    nearly every committed change wakes the relay on its own.

    With a ``retention``, the active relay also deletes rows published longer ago than
    that (none of its set-aside or unpublished rows): a service's relay has one; a one-off
    drain, such as `refnet directory import`'s, has none."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        producer: AIOKafkaProducer,
        database_url: str,
        schema: str,
        poll_interval_s: float,
        *,
        retention: timedelta | None = None,
    ) -> None:
        self._pool = pool
        self._producer = producer
        self._database_url = database_url
        self._schema = schema
        self._poll_interval_s = poll_interval_s
        self._retention = retention
        self._prune_at = 0.0  # the event loop's time the next prune is due (at once)
        self._wakeup = asyncio.Event()

    async def run(self) -> None:
        while True:
            try:
                await self._relay()
            except BrokerUnreachable as exc:
                pause = self._poll_interval_s * random.uniform(*_RELEASE_BACKOFF_POLLS)
                log.warning(
                    "outbox relay for %s released its lock because %s; another replica's relay "
                    "can publish meanwhile, and this one competes for the lock again in %.1f s "
                    "(check this replica's network and credentials for the broker)",
                    self._schema, exc, pause,
                )  # fmt: skip
                await asyncio.sleep(pause)
            except Exception as exc:  # Postgres down: the rows wait, unmarked
                log.warning("outbox relay for %s will retry: %s", self._schema, exc)
                await asyncio.sleep(self._poll_interval_s)

    async def _relay(self) -> None:
        """Wait for the lock, then publish until the broker fails too often in a row."""
        conn = await connect(
            self._database_url, self._schema, f"refnet-{self._schema}-outbox", **_RELAY_KEEPALIVE
        )
        try:
            await conn.add_listener(f"{self._schema}_outbox", lambda *_: self._wakeup.set())
            while not await conn.fetchval(f"SELECT pg_try_advisory_lock({_RELAY_LOCK})"):
                await self._sleep()  # another replica's relay is active
            await self._publish_while_the_broker_answers(conn)
        finally:
            await conn.close()  # which releases the lock, on cancellation too

    async def _publish_while_the_broker_answers(self, conn: asyncpg.Connection) -> None:
        failures = 0
        while True:
            try:
                published = await self._publish(conn)
                failures = 0
            except KafkaError as exc:
                failures += 1
                if failures >= BROKER_FAILURES_BEFORE_RELEASE:
                    raise BrokerUnreachable(
                        f"publishing failed {failures} times in a row (last: "
                        f"{type(exc).__name__}: {exc})"
                    ) from exc
                log.warning(
                    "outbox relay for %s could not publish (%s: %s); retrying, and releasing "
                    "its lock after %d failures in a row (this is %d)",
                    self._schema, type(exc).__name__, exc, BROKER_FAILURES_BEFORE_RELEASE,
                    failures,
                )  # fmt: skip
                published = 0
            if published < BATCH_SIZE and not await self._prune_if_due(conn):
                await self._sleep()

    async def _prune_if_due(self, conn: asyncpg.Connection) -> bool:
        """Delete a batch of old rows if that is due; True when more may be due at once."""
        loop = asyncio.get_running_loop()
        if self._retention is None or loop.time() < self._prune_at:
            return False
        try:
            more = await self._prune(conn, self._retention) == PRUNE_BATCH
        except asyncpg.PostgresError as exc:
            # Housekeeping never stops publishing: a DELETE refused (a privilege, a lock
            # held too long) is tried again in an hour. A lost connection fails the next
            # publish too, and the relay reconnects as for any other Postgres error.
            log.warning(
                "outbox relay for %s could not delete old rows, and tries again in an hour: "
                "%s: %s", self._schema, type(exc).__name__, exc,
            )  # fmt: skip
            more = False
        self._prune_at = loop.time() + (0.0 if more else PRUNE_EVERY_S)
        return more

    async def _prune(self, conn: asyncpg.Connection, retention: timedelta) -> int:
        """Delete up to PRUNE_BATCH of the oldest rows published longer than ``retention``
        ago. Set-aside rows (never published) stay for an operator, and so do the rows
        published after one with its topic and key: they are what tells `resend` that
        sending it now would overtake a newer event. The condition is checked again on each
        row deleted, as an operator's replay may have marked it unpublished meanwhile."""
        deleted = int(
            await conn.fetchval(
                "WITH gone AS (DELETE FROM outbox WHERE id IN (SELECT o.id FROM outbox o "
                "WHERE o.published_at < now() - $1::interval AND NOT EXISTS (SELECT FROM "
                "outbox s WHERE s.rejected_at IS NOT NULL AND s.topic = o.topic "
                "AND s.key = o.key AND s.id < o.id) ORDER BY o.id LIMIT $2) "
                "AND published_at < now() - $1::interval RETURNING 1) "
                "SELECT count(*) FROM gone",
                retention,
                PRUNE_BATCH,
            )
        )
        if deleted:
            log.info(
                "outbox relay for %s deleted %d row(s) published more than %s ago",
                self._schema, deleted, retention,
            )  # fmt: skip
            metrics.OUTBOX_PRUNED.labels(self._schema).inc(deleted)
        return deleted

    async def publish_pending(self) -> int:
        """Publish one batch now from a pooled connection, unless a relay is active for the
        schema (then 0): a one-off drain, as `refnet directory import` does."""
        async with self._pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval(f"SELECT pg_try_advisory_xact_lock({_RELAY_LOCK})"):
                return 0
            return await self._publish(conn)

    async def _publish(self, conn: asyncpg.Connection) -> int:
        rows = await conn.fetch(
            "SELECT id, event_id, topic, key, headers, value FROM outbox "
            "WHERE published_at IS NULL AND rejected_at IS NULL ORDER BY id LIMIT $1",
            BATCH_SIZE,
        )
        if not rows:
            return 0
        sent: list[int] = []
        acks: list[asyncio.Future[Any]] = []
        set_aside: list[tuple[asyncpg.Record, str]] = []
        # The producer refuses a record larger than max_request_size before queueing it, and
        # would again however often it was tried: set aside, not retried. Errors on a send's
        # future (a broker's MESSAGE_TOO_LARGE for a batch, say) still take the retry path,
        # as they may belong to another record of the batch; keeping the producer's limit at
        # or below the broker's message.max.bytes (as the defaults are) makes the producer
        # the one to refuse an oversized record, on its own.
        for row in rows:
            try:
                acks.append(await self._send(row))
            except MessageSizeTooLargeError as exc:
                set_aside.append((row, f"{type(exc).__name__}: {exc}"))
            else:
                sent.append(row["id"])
        if set_aside:
            await conn.execute(
                "UPDATE outbox SET rejected_at = now(), rejection = r.reason "
                "FROM unnest($1::bigint[], $2::text[]) AS r(id, reason) WHERE outbox.id = r.id",
                [row["id"] for row, _ in set_aside],
                [reason for _, reason in set_aside],
            )
            for row, reason in set_aside:
                self._report_set_aside(row, reason)
        await asyncio.gather(*acks)
        await conn.execute(
            "UPDATE outbox SET published_at = now() WHERE id = ANY($1::bigint[])", sent
        )
        log.debug("outbox %s published %d", self._schema, len(sent))
        return len(rows)

    def _report_set_aside(self, row: asyncpg.Record, reason: str) -> None:
        with log_context(event_id=row["event_id"], topic=row["topic"]):
            log.error(
                "outbox relay for %s set aside event %s for %s (%d bytes): the broker can never "
                "take it (%s). The rows behind it are published; it stays in %s.outbox with "
                "rejected_at and the reason (docs/runbook.md, 'Events the broker would not "
                "take', says what to do)",
                self._schema, row["event_id"], row["topic"], len(row["value"] or b""), reason,
                self._schema,
            )  # fmt: skip
        metrics.record(metrics.OUTBOX_REJECTED.labels(self._schema).inc)

    async def _send(self, row: asyncpg.Record) -> asyncio.Future[Any]:
        """Queue one row for the broker; its traceparent is among the stored headers."""
        headers = [(name, raw.encode()) for name, raw in row["headers"]]
        if log.isEnabledFor(logging.DEBUG):  # the context costs more than the send itself
            trace = tracing.from_headers(headers)
            with log_context(
                event_id=row["event_id"],
                topic=row["topic"],
                need_id=row["key"] if _keyed_by_need(row["topic"]) else None,
                trace_id=trace.trace_id if trace else None,
            ):
                log.debug("outbox %s: publishing %s", self._schema, row["event_id"])
        future: asyncio.Future[Any] = await self._producer.send(
            row["topic"],
            key=row["key"].encode(),
            value=bytes(row["value"]) if row["value"] is not None else None,
            headers=headers,
        )
        return future

    async def _sleep(self) -> None:
        # NOTIFY only shortens latency; polling alone is still correct.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), self._poll_interval_s)
        self._wakeup.clear()
