"""Records handled in batches (shared.kafka.process_batch) on a real broker: poison in a
batch is dead-lettered with its reason and the rest handled together; a batch that fails is
handled again one record at a time, so only the record that keeps failing is dead-lettered.
The consume loop hands over what a fetch brings of a topic, every partition's in its order,
and commits every partition it read."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from datetime import UTC, datetime
from uuid import UUID, uuid4

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client import REGISTRY

from shared import dlq
from shared.cloudevents import Envelope, encode
from shared.events import NeedSubmitted
from shared.infra import Infrastructure
from shared.kafka import DeadLetters, Delivery, RawMessage, consume, process_batch
from shared.logs import current_fields
from shared.topics import NEEDS
from tests.factories import need_submitted
from tests.kafka_reader import eventually, read_topic

pytestmark = pytest.mark.integration
NOW = datetime(2026, 11, 21, 15, 0, tzinfo=UTC)


def records(topic: str, needs: Sequence[NeedSubmitted | bytes]) -> list[RawMessage]:
    """Records as the consumer reads them: an event encoded, or raw bytes as they came."""
    raws = []
    for offset, need in enumerate(needs):
        if isinstance(need, bytes):
            raws.append(RawMessage(topic, 0, offset, b"k", need, ()))
            continue
        headers, value = encode(need, event_id=uuid4(), source="/tests", time=NOW)
        raws.append(RawMessage(topic, 0, offset, str(need.need_id).encode(), value, tuple(headers)))
    return raws


class Recorder:
    """Handlers that remember what they were given; ``failing`` names a need the handlers
    refuse, as a bug in handling it would."""

    def __init__(self, failing: UUID | None = None) -> None:
        self.failing = failing
        self.batches: list[list[UUID]] = []
        self.singles: list[UUID] = []
        self.fields: list[dict[str, str]] = []

    async def batch(self, deliveries: Sequence[Delivery]) -> None:
        ids = [_need_id(d.envelope) for d in deliveries]
        for delivery in deliveries:
            with delivery.context():
                self.fields.append(current_fields())
        if self.failing in ids:
            raise RuntimeError("cannot handle this batch")
        self.batches.append(ids)

    async def single(self, envelope: Envelope) -> None:
        if _need_id(envelope) == self.failing:
            raise RuntimeError(f"cannot handle {self.failing}")
        self.singles.append(_need_id(envelope))


def _need_id(envelope: Envelope) -> UUID:
    assert isinstance(envelope.event, NeedSubmitted)
    return envelope.event.need_id


def batch_sizes_observed() -> tuple[float, float]:
    """How many batches refnet_consumer_batch_records has counted for these tests' consumer,
    and how many records in them."""
    labels = {"topic": NEEDS.name, "consumer": "tests"}
    count = REGISTRY.get_sample_value("refnet_consumer_batch_records_count", labels)
    total = REGISTRY.get_sample_value("refnet_consumer_batch_records_sum", labels)
    return count or 0.0, total or 0.0


async def dead_letters_of(infra: Infrastructure, topic: str) -> list[tuple[bytes, str]]:
    letters = await read_topic(infra.kafka_bootstrap_servers, dlq.dlq_name(topic))
    return [(r.value, dict(r.headers)["dlq_reason"].decode()) for r in letters]


async def test_poison_is_dead_lettered_and_the_rest_handled_as_one_batch(
    infra: Infrastructure, producer: AIOKafkaProducer, topic: str
) -> None:
    needs = [need_submitted() for _ in range(3)]
    raws = records(topic, [needs[0], b"{not json", needs[1], needs[2]])
    recorder = Recorder()
    before = batch_sizes_observed()

    await process_batch(
        NEEDS, raws, recorder.batch, recorder.single, DeadLetters(producer, "tests"),
        max_attempts=2,
    )  # fmt: skip

    assert recorder.batches == [[n.need_id for n in needs]]
    assert recorder.singles == []
    assert batch_sizes_observed() == (before[0] + 1, before[1] + 3)  # poison not counted
    [(value, reason)] = await dead_letters_of(infra, topic)
    assert value == b"{not json" and "ce_id" in reason
    # Each record is handled in its own context: its offset and need id in every log line.
    assert [f["offset"] for f in recorder.fields] == ["0", "2", "3"]
    assert [f["need_id"] for f in recorder.fields] == [str(n.need_id) for n in needs]


async def test_a_failed_batch_is_handled_one_by_one_and_only_the_bad_record_dead_lettered(
    infra: Infrastructure, producer: AIOKafkaProducer, topic: str
) -> None:
    needs = [need_submitted() for _ in range(3)]
    recorder = Recorder(failing=needs[1].need_id)
    before = batch_sizes_observed()

    await process_batch(
        NEEDS, records(topic, needs), recorder.batch, recorder.single,
        DeadLetters(producer, "tests"), max_attempts=2,
    )  # fmt: skip

    assert recorder.batches == []
    assert recorder.singles == [needs[0].need_id, needs[2].need_id]
    assert batch_sizes_observed() == before, "a batch redone one by one is no batch"
    [(_, reason)] = await dead_letters_of(infra, topic)
    assert (
        reason == f"handler failed after 2 attempts: RuntimeError: cannot handle {needs[1].need_id}"
    )


async def test_the_consume_loop_hands_over_each_partition_in_order_once_and_commits_them_all(
    infra: Infrastructure, producer: AIOKafkaProducer, topic: str
) -> None:
    needs = [need_submitted() for _ in range(40)]
    for need in needs:
        headers, value = encode(need, event_id=uuid4(), source="/tests", time=NOW)
        await producer.send_and_wait(topic, value, key=str(need.need_id).encode(), headers=headers)
    handled: list[tuple[int, int, UUID]] = []
    partitions_per_batch: list[set[int]] = []

    async def batch(deliveries: Sequence[Delivery]) -> None:
        for d in deliveries:
            assert d.raw is not None
            handled.append((d.raw.partition, d.raw.offset, _need_id(d.envelope)))
        partitions_per_batch.append({d.raw.partition for d in deliveries if d.raw})

    async def single(envelope: Envelope) -> None:
        raise AssertionError("no batch fails here")

    group = f"test-consume-{uuid4().hex[:8]}"
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=infra.kafka_bootstrap_servers,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=50,
    )
    await consumer.start()
    spec = dataclasses.replace(NEEDS, name=topic)
    loop = asyncio.create_task(
        consume(
            consumer, [spec], single, DeadLetters(producer, "tests"), max_attempts=2,
            handle_batch=batch,
        )
    )  # fmt: skip
    try:
        await eventually(lambda: len(handled) >= len(needs), "every need handled")
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        ends = await consumer.end_offsets(partitions)

        async def all_committed() -> bool:
            return all([await consumer.committed(tp) == ends[tp] for tp in partitions])

        await eventually(all_committed, "every partition's offset committed")
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
        await consumer.stop()

    assert sorted(n for _, _, n in handled) == sorted(n.need_id for n in needs)
    for partition in {p for p, _, _ in handled}:
        offsets = [o for p, o, _ in handled if p == partition]
        assert offsets == sorted(offsets)
    assert len({p for p, _, _ in handled}) == 2  # the topic's both partitions were read
    # Every record was on the broker before the consumer started, so a fetch brings both
    # partitions' records; they reach the handler in one call, not one call per partition.
    assert any(len(partitions) == 2 for partitions in partitions_per_batch), partitions_per_batch
