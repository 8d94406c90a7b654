"""The dead-letter queues: list what the consumers gave up on, and replay one record.

A consumer that gives up on a record writes it to ``<topic>.dlq`` (``shared.kafka.DeadLetters``)
with the original key, value and headers plus ``dlq_reason``, ``dlq_consumer``, ``dlq_topic``,
``dlq_partition`` and ``dlq_offset``. Listing reads every platform topic's DLQ outside any
consumer group, from the beginning to its end as of now (bounded in time and per topic), so
it never moves anyone's offsets. Agencies' offers topics have no DLQ: refnet only produces
them.

Replaying re-produces the original key, value and headers (the ``dlq_*`` ones removed) to
the original topic and partition, so every consumer of that topic sees the record again, in
its key's order. It keeps the record's CloudEvents id: a consumer that had processed it
(another group of the same topic) recognises it in its inbox and does nothing twice.

Each replay is written to ``dlq_replays``, an append-only table in the caller's schema
(intake's, where the operator dashboard lives; ``services/intake/migrations``), with who
replayed it and when: the audit trail, and what refuses a second replay of the same record.
Replays take a table lock one at a time: checked, produced, recorded, committed. Should the
commit fail after the produce, the record was replayed without a trace and may be replayed
again; consumers' inboxes make that second copy harmless.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import asyncpg
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from shared.kafka import caught_up, kafka_security, make_producer
from shared.settings import BaseServiceSettings
from shared.topics import DLQ_SUFFIX, PLATFORM_TOPICS

log = logging.getLogger(__name__)

DLQ_HEADER_PREFIX = "dlq_"
# Bounds on one listing: the newest records kept per DLQ topic, and how long the read may take.
MAX_PER_TOPIC = 500
READ_TIMEOUT_S = 10.0
# How long a replay waits for the broker to take the record.
PRODUCE_TIMEOUT_S = 15.0


class ReplayRefused(Exception):
    """The record was not replayed; the message says why, for the operator."""


class NotFound(ReplayRefused):
    pass


class AlreadyReplayed(ReplayRefused):
    pass


@dataclass(frozen=True, order=True)
class Position:
    """Where a record is: topic, partition and offset."""

    topic: str
    partition: int
    offset: int

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


@dataclass(frozen=True)
class Replay:
    """One replay, as recorded: who, when, which dead letter, and where the copy went."""

    dead_letter: Position
    original: Position
    to: Position
    replayed_by: str
    replayed_at: datetime


@dataclass(frozen=True)
class DeadLetter:
    """A dead letter as an operator may see it: never the value, only its size."""

    at: Position  # its place in the DLQ topic: what `replay` takes
    dead_lettered_at: datetime | None
    original: Position | None  # None if the record lacks the dlq_* headers
    consumer: str | None
    reason: str
    ce_type: str | None
    key: str | None
    size: int
    # Set from the replay log: the replay of this record, or of another dead letter of the
    # same original record (two consumers may give up on one record).
    replay: Replay | None = None
    # This record is itself a replayed copy that failed again: the replay it came from.
    replay_of: Replay | None = None

    @property
    def replayable(self) -> bool:
        return self.original is not None and self.replay is None


@dataclass(frozen=True)
class Listing:
    letters: list[DeadLetter]  # newest first
    # False when the read stopped at its time bound or kept only the newest MAX_PER_TOPIC.
    complete: bool


def dlq_name(topic: str) -> str:
    """The DLQ of ``topic``; a DLQ's own name is returned as it is."""
    return topic if topic.endswith(DLQ_SUFFIX) else topic + DLQ_SUFFIX


def dlq_topics(topics: Iterable[str] | None = None) -> list[str]:
    """The DLQs to read: those of ``topics`` (topic or DLQ names), else of every platform
    topic."""
    names = [spec.name for spec in PLATFORM_TOPICS] if topics is None else list(topics)
    return list(dict.fromkeys(dlq_name(name) for name in names))


def _consumer(settings: BaseServiceSettings) -> AIOKafkaConsumer:
    """A plain consumer in no group: it reads where it is told and commits nothing. It logs
    in as the service it runs in (intake: the DLQ operator, services/kafka_init.py)."""
    return AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        client_id="refnet-dlq",
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **kafka_security(settings),
    )


async def read_dead_letters(
    settings: BaseServiceSettings,
    topics: Iterable[str] | None = None,
    *,
    max_per_topic: int = MAX_PER_TOPIC,
    timeout_s: float = READ_TIMEOUT_S,
) -> Listing:
    """Every dead letter on the DLQs of ``topics`` (default: every platform topic), from the
    beginning to the end as of now, newest first."""
    names = dlq_topics(topics)
    consumer = _consumer(settings)
    await consumer.start()
    kept: dict[TopicPartition, deque[DeadLetter]] = {}
    complete = True
    try:
        await consumer.topics()  # the cluster's metadata, partitions included
        tps = [
            TopicPartition(name, p)
            for name in names
            for p in sorted(consumer.partitions_for_topic(name) or ())
        ]
        if not tps:
            return Listing([], complete=True)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        kept = {tp: deque(maxlen=max_per_topic) for tp in tps}
        seen = dict.fromkeys(tps, 0)
        deadline = asyncio.get_running_loop().time() + timeout_s
        while pending := [tp for tp in tps if not await caught_up(consumer, tp, ends[tp])]:
            if asyncio.get_running_loop().time() > deadline:
                log.warning("DLQ listing stopped at its time bound; %d partition(s) unread",
                            len(pending))  # fmt: skip
                complete = False
                break
            batches = await consumer.getmany(*pending, timeout_ms=500)
            for tp, records in batches.items():
                for record in records:
                    kept[tp].append(_dead_letter(record))
                    seen[tp] += 1
        if any(seen[tp] > max_per_topic for tp in tps):
            complete = False
    finally:
        await consumer.stop()
    by_topic: dict[str, list[DeadLetter]] = {}
    for tp, partition_letters in kept.items():
        by_topic.setdefault(tp.topic, []).extend(partition_letters)
    newest: list[DeadLetter] = []
    for topic_letters in by_topic.values():
        topic_letters.sort(key=_newest_first)
        if len(topic_letters) > max_per_topic:
            complete = False
        newest.extend(topic_letters[:max_per_topic])
    newest.sort(key=_newest_first)
    return Listing(newest, complete)


def _newest_first(letter: DeadLetter) -> tuple[float, Position]:
    stamp = letter.dead_lettered_at.timestamp() if letter.dead_lettered_at else 0.0
    return (-stamp, letter.at)


def _headers(record: ConsumerRecord) -> dict[str, bytes]:
    return {name: bytes(value or b"") for name, value in record.headers or ()}


def _text(raw: bytes | None, limit: int) -> str | None:
    if raw is None:
        return None
    text = raw.decode(errors="replace")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _original(headers: dict[str, bytes]) -> Position | None:
    try:
        return Position(
            headers["dlq_topic"].decode(),
            int(headers["dlq_partition"]),
            int(headers["dlq_offset"]),
        )
    except (KeyError, ValueError, UnicodeDecodeError):
        return None


def _dead_letter(record: ConsumerRecord) -> DeadLetter:
    headers = _headers(record)
    stamp, value = record.timestamp, record.value
    return DeadLetter(
        at=Position(str(record.topic), int(record.partition), int(record.offset)),
        dead_lettered_at=datetime.fromtimestamp(stamp / 1000, UTC) if stamp else None,
        original=_original(headers),
        consumer=_text(headers.get("dlq_consumer"), 100),
        reason=_text(headers.get("dlq_reason"), 500) or "(no reason recorded)",
        ce_type=_text(headers.get("ce_type"), 100),
        key=_text(record.key, 100),
        size=len(value) if value is not None else 0,
    )


# --- the replay log ------------------------------------------------------------------------

_REPLAY_COLUMNS = (
    "dlq_topic, dlq_partition, dlq_offset, topic, original_partition, original_offset, "
    "replay_partition, replay_offset, replayed_by, replayed_at"
)


def _replay(row: asyncpg.Record) -> Replay:
    return Replay(
        dead_letter=Position(row["dlq_topic"], row["dlq_partition"], row["dlq_offset"]),
        original=Position(row["topic"], row["original_partition"], row["original_offset"]),
        to=Position(row["topic"], row["replay_partition"], row["replay_offset"]),
        replayed_by=row["replayed_by"],
        replayed_at=row["replayed_at"],
    )


async def replays(conn: asyncpg.Connection) -> list[Replay]:
    """Every replay recorded, oldest first."""
    rows = await conn.fetch(f"SELECT {_REPLAY_COLUMNS} FROM dlq_replays ORDER BY replayed_at")
    return [_replay(row) for row in rows]


def with_replays(listing: Listing, done: Sequence[Replay]) -> Listing:
    """The listing with each dead letter's replay (or its original record's) filled in, and
    each replayed copy that failed again linked to the replay it came from."""
    by_dead_letter = {r.dead_letter: r for r in done}
    by_original = {r.original: r for r in done}
    by_copy = {r.to: r for r in done}
    letters = []
    for letter in listing.letters:
        found = by_dead_letter.get(letter.at) or (
            by_original.get(letter.original) if letter.original else None
        )
        copy_of = by_copy.get(letter.original) if letter.original else None
        letters.append(replace(letter, replay=found, replay_of=copy_of))
    return Listing(letters, listing.complete)


async def fetch(
    settings: BaseServiceSettings, at: Position, timeout_s: float = 10.0
) -> ConsumerRecord:
    """The record at ``at`` (a DLQ position), as aiokafka returns it; NotFound if none."""
    consumer = _consumer(settings)
    await consumer.start()
    try:
        await consumer.topics()
        if at.partition not in (consumer.partitions_for_topic(at.topic) or ()):
            raise NotFound(f"no partition {at.partition} of {at.topic}")
        tp = TopicPartition(at.topic, at.partition)
        consumer.assign([tp])
        consumer.seek(tp, at.offset)
        deadline = asyncio.get_running_loop().time() + timeout_s
        while asyncio.get_running_loop().time() < deadline:
            records = (await consumer.getmany(tp, timeout_ms=500)).get(tp, [])
            for record in records:
                if record.offset == at.offset:
                    return record
                if record.offset > at.offset:
                    raise NotFound(f"no record at {at}: the topic has moved past it")
            highwater = consumer.highwater(tp)
            if not records and highwater is not None and at.offset >= int(highwater):
                break
        raise NotFound(f"no record at {at}")
    finally:
        await consumer.stop()


async def replay(
    pool: asyncpg.Pool,
    settings: BaseServiceSettings,
    at: Position,
    replayed_by: str,
    now: datetime,
) -> Replay:
    """Re-produce the dead letter at ``at`` to its original topic and partition, once, and
    record who did it. ReplayRefused (NotFound, AlreadyReplayed) says why not."""
    at = replace(at, topic=dlq_name(at.topic))
    record = await fetch(settings, at)
    headers = _headers(record)
    original = _original(headers)
    if original is None:
        raise ReplayRefused(f"the record at {at} does not say where it came from (dlq_* headers)")
    if dlq_name(original.topic) != at.topic:
        raise ReplayRefused(f"the record at {at} came from {original.topic}, not this DLQ's topic")
    kept = [
        (name, bytes(value or b""))
        for name, value in record.headers or ()
        if not name.startswith(DLQ_HEADER_PREFIX)
    ]
    async with pool.acquire() as conn, conn.transaction():
        # One replay at a time (they are rare): check, produce, record, commit.
        await conn.execute("LOCK TABLE dlq_replays IN SHARE ROW EXCLUSIVE MODE")
        earlier = await conn.fetchrow(
            f"SELECT {_REPLAY_COLUMNS} FROM dlq_replays WHERE (dlq_topic = $1 "
            "AND dlq_partition = $2 AND dlq_offset = $3) OR (topic = $4 "
            "AND original_partition = $5 AND original_offset = $6)",
            at.topic,
            at.partition,
            at.offset,
            original.topic,
            original.partition,
            original.offset,
        )
        if earlier is not None:
            done = _replay(earlier)
            raise AlreadyReplayed(
                f"{original} was already replayed (from {done.dead_letter}) by "
                f"{done.replayed_by} at {done.replayed_at.isoformat(timespec='seconds')}"
            )
        to = await _produce(settings, original, record.key, record.value, kept)
        done = Replay(at, original, to, replayed_by, now)
        await conn.execute(
            f"INSERT INTO dlq_replays ({_REPLAY_COLUMNS}, consumer, reason, ce_type, key) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
            at.topic,
            at.partition,
            at.offset,
            original.topic,
            original.partition,
            original.offset,
            to.partition,
            to.offset,
            replayed_by,
            now,
            _text(headers.get("dlq_consumer"), 100),
            _text(headers.get("dlq_reason"), 500),
            _text(headers.get("ce_type"), 100),
            _text(record.key, 100),
        )
    log.info("replayed %s (dead letter %s) to %s, by %s", original, at, to, replayed_by)
    return done


async def _produce(
    settings: BaseServiceSettings,
    original: Position,
    key: bytes | None,
    value: bytes | None,
    headers: list[tuple[str, bytes]],
) -> Position:
    producer = make_producer(settings, "refnet-dlq-replay")
    await producer.start()
    try:
        sent = await asyncio.wait_for(
            producer.send_and_wait(
                original.topic,
                key=key,
                value=value,
                headers=headers,
                partition=original.partition,
            ),
            PRODUCE_TIMEOUT_S,
        )
    finally:
        await producer.stop()
    return Position(original.topic, int(sent.partition), int(sent.offset))
