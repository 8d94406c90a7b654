"""The dead-letter queues on a real broker and Postgres: listing reads exactly what
DeadLetters writes (never the content), and a replay re-produces the original record to its
topic once, recorded with who did it."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime
from uuid import uuid4

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from shared import dlq
from shared.cloudevents import encode
from shared.infra import Infrastructure
from shared.kafka import DeadLetters, RawMessage
from shared.settings import BaseServiceSettings
from shared.topics import PLATFORM_TOPICS, agency_offers
from tests.factories import need_submitted
from tests.kafka_reader import read_topic

pytestmark = pytest.mark.integration
NOW = datetime(2026, 11, 21, 15, 0, tzinfo=UTC)


@pytest.fixture
def settings(infra: Infrastructure) -> BaseServiceSettings:
    return BaseServiceSettings(
        database_url=infra.database_url, kafka_bootstrap_servers=infra.kafka_bootstrap_servers
    )


async def dead_letter(
    settings: BaseServiceSettings,
    producer: AIOKafkaProducer,
    topic: str,
    reason: str,
    consumer: str = "tests.consumer",
    value: bytes | None = None,
) -> tuple[RawMessage, dlq.Position]:
    """Produce a record to ``topic`` as a producer would, then dead-letter it exactly as a
    consumer does (shared.kafka.DeadLetters); the original and its place in the DLQ."""
    need = need_submitted()
    headers, payload = encode(need, event_id=uuid4(), source="/tests", time=NOW)
    value = payload if value is None else value
    key = str(need.need_id).encode()
    sent = await producer.send_and_wait(topic, key=key, value=value, headers=headers, partition=1)
    raw = RawMessage(topic, sent.partition, sent.offset, key, value, tuple(headers))
    await DeadLetters(producer, consumer).send(raw, reason)
    letters = await read_topic(settings.kafka_bootstrap_servers, dlq.dlq_name(topic))
    mine = [r for r in letters if r.key == key and ("dlq_reason", reason.encode()) in r.headers]
    return raw, dlq.Position(mine[-1].topic, mine[-1].partition, mine[-1].offset)


async def listed(settings: BaseServiceSettings, topic: str, pool: asyncpg.Pool) -> dlq.Listing:
    listing = await dlq.read_dead_letters(settings, [topic])
    async with pool.acquire() as conn:
        return dlq.with_replays(listing, await dlq.replays(conn))


def test_the_dlqs_read_are_those_of_every_platform_topic_and_no_agency_topic() -> None:
    names = dlq.dlq_topics()

    assert names == [spec.dlq for spec in PLATFORM_TOPICS]
    assert agency_offers("ag-001").dlq not in names
    assert dlq.dlq_topics(["refnet.needs.v1.dlq", "refnet.needs.v1"]) == ["refnet.needs.v1.dlq"]


async def test_a_dead_letter_is_listed_with_what_deadletters_wrote_but_not_its_content(
    settings: BaseServiceSettings, producer: AIOKafkaProducer, topic: str, intake_pool: asyncpg.Pool
) -> None:
    raw, at = await dead_letter(
        settings, producer, topic, "value is not valid JSON: Expecting value"
    )

    listing = await listed(settings, topic, intake_pool)

    assert listing.complete
    [letter] = listing.letters
    assert letter.at == at and at.topic == f"{topic}.dlq"
    assert letter.original == dlq.Position(topic, raw.partition, raw.offset)
    assert letter.reason == "value is not valid JSON: Expecting value"
    assert letter.consumer == "tests.consumer"
    assert letter.ce_type == "org.refnet.need.submitted"
    assert letter.key == raw.key.decode()  # type: ignore[union-attr]
    assert letter.size == len(raw.value or b"")
    assert letter.dead_lettered_at is not None
    assert letter.replayable and letter.replay is None
    # Nothing in a listed dead letter can carry the record's content.
    assert "value" not in {f.name for f in dataclasses.fields(dlq.DeadLetter)}


async def test_a_replay_sends_the_original_record_to_its_topic_once_and_is_recorded(
    settings: BaseServiceSettings, producer: AIOKafkaProducer, topic: str, intake_pool: asyncpg.Pool
) -> None:
    raw, at = await dead_letter(settings, producer, topic, "no offer for need")

    done = await dlq.replay(intake_pool, settings, at, "worker:ops@refnet.local", NOW)

    assert done.original == dlq.Position(topic, raw.partition, raw.offset)
    assert done.to.topic == topic and done.to.partition == raw.partition
    assert done.to.offset > raw.offset
    [copy] = [r for r in await read_topic(settings.kafka_bootstrap_servers, topic)
              if r.offset == done.to.offset and r.partition == done.to.partition]  # fmt: skip
    assert (copy.key, copy.value) == (raw.key, raw.value)
    assert list(copy.headers) == list(raw.headers), "the original headers, and no dlq_* ones"
    async with intake_pool.acquire() as conn:
        [row] = await conn.fetch("SELECT * FROM dlq_replays WHERE topic = $1", topic)
    assert row["replayed_by"] == "worker:ops@refnet.local" and row["replayed_at"] == NOW
    assert (row["reason"], row["consumer"]) == ("no offer for need", "tests.consumer")

    with pytest.raises(dlq.AlreadyReplayed, match="already replayed"):
        await dlq.replay(intake_pool, settings, at, "cli:someone", NOW)
    [letter] = (await listed(settings, topic, intake_pool)).letters
    assert letter.replay == done and not letter.replayable
    copies = [
        r for r in await read_topic(settings.kafka_bootstrap_servers, topic) if r.key == raw.key
    ]
    assert len(copies) == 2, "the original and one replayed copy"


async def test_two_consumers_dead_letters_of_one_record_are_replayed_once(
    settings: BaseServiceSettings, producer: AIOKafkaProducer, topic: str, intake_pool: asyncpg.Pool
) -> None:
    need = need_submitted()
    headers, value = encode(need, event_id=uuid4(), source="/tests", time=NOW)
    key = str(need.need_id).encode()
    sent = await producer.send_and_wait(topic, key=key, value=value, headers=headers, partition=0)
    raw = RawMessage(topic, sent.partition, sent.offset, key, value, tuple(headers))
    for consumer in ("matching", "notifications.needs"):
        await DeadLetters(producer, consumer).send(raw, f"{consumer} gave up")
    first, second = sorted((await listed(settings, topic, intake_pool)).letters, key=lambda d: d.at)

    await dlq.replay(intake_pool, settings, first.at, "worker:ops@refnet.local", NOW)

    with pytest.raises(dlq.AlreadyReplayed):
        await dlq.replay(intake_pool, settings, second.at, "worker:ops@refnet.local", NOW)
    letters = (await listed(settings, topic, intake_pool)).letters
    assert all(letter.replay is not None for letter in letters)
    assert {letter.replay.dead_letter for letter in letters if letter.replay} == {first.at}


async def test_replays_pressed_at_the_same_moment_replay_once(
    settings: BaseServiceSettings, producer: AIOKafkaProducer, topic: str, intake_pool: asyncpg.Pool
) -> None:
    raw, at = await dead_letter(settings, producer, topic, "handler failed after 3 attempts")

    outcomes = await asyncio.gather(
        *(dlq.replay(intake_pool, settings, at, f"worker:{n}", NOW) for n in range(3)),
        return_exceptions=True,
    )

    assert sum(isinstance(o, dlq.Replay) for o in outcomes) == 1
    assert sum(isinstance(o, dlq.AlreadyReplayed) for o in outcomes) == 2
    copies = [
        r for r in await read_topic(settings.kafka_bootstrap_servers, topic) if r.key == raw.key
    ]
    assert len(copies) == 2


async def test_a_replayed_copy_that_fails_again_is_a_new_dead_letter_linked_to_its_replay(
    settings: BaseServiceSettings, producer: AIOKafkaProducer, topic: str, intake_pool: asyncpg.Pool
) -> None:
    raw, at = await dead_letter(settings, producer, topic, "no offer for need")
    done = await dlq.replay(intake_pool, settings, at, "worker:ops@refnet.local", NOW)

    again = dataclasses.replace(raw, partition=done.to.partition, offset=done.to.offset)
    await DeadLetters(producer, "tests.consumer").send(again, "no offer for need")

    newest = (await listed(settings, topic, intake_pool)).letters[0]
    assert newest.original == done.to
    assert newest.replay_of == done
    assert newest.replayable, "the new dead letter can itself be replayed once fixed"


async def test_a_replay_of_nothing_is_refused(
    settings: BaseServiceSettings, producer: AIOKafkaProducer, topic: str, intake_pool: asyncpg.Pool
) -> None:
    await dead_letter(settings, producer, topic, "some reason")

    with pytest.raises(dlq.NotFound):
        await dlq.replay(intake_pool, settings, dlq.Position(topic, 1, 999), "cli:x", NOW)
    with pytest.raises(dlq.NotFound):
        await dlq.replay(intake_pool, settings, dlq.Position(topic, 7, 0), "cli:x", NOW)


async def test_a_record_without_its_origin_headers_is_listed_but_not_replayable(
    settings: BaseServiceSettings, producer: AIOKafkaProducer, topic: str, intake_pool: asyncpg.Pool
) -> None:
    await producer.send_and_wait(f"{topic}.dlq", key=b"k", value=b"{}", partition=0)

    [letter] = (await listed(settings, topic, intake_pool)).letters

    assert letter.original is None and not letter.replayable
    assert letter.reason == "(no reason recorded)"
    with pytest.raises(dlq.ReplayRefused, match="does not say where it came from"):
        await dlq.replay(intake_pool, settings, letter.at, "cli:x", NOW)


async def test_a_listing_keeps_the_newest_and_says_it_is_partial(
    settings: BaseServiceSettings, producer: AIOKafkaProducer, topic: str
) -> None:
    for n in range(3):
        await dead_letter(settings, producer, topic, f"reason {n}")

    listing = await dlq.read_dead_letters(settings, [topic], max_per_topic=2)

    assert not listing.complete
    assert [letter.reason for letter in listing.letters] == ["reason 2", "reason 1"]


async def test_the_replay_log_is_append_only(
    settings: BaseServiceSettings, producer: AIOKafkaProducer, topic: str, intake_pool: asyncpg.Pool
) -> None:
    _, at = await dead_letter(settings, producer, topic, "some reason")
    await dlq.replay(intake_pool, settings, at, "worker:ops@refnet.local", NOW)

    async with intake_pool.acquire() as conn:
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await conn.execute("UPDATE dlq_replays SET replayed_by = 'someone else'")
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await conn.execute("DELETE FROM dlq_replays")
