"""Read topics back the way an outside consumer would: plain aiokafka, no group."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from shared.cloudevents import PoisonMessage, decode
from shared.events import Event, ReferralOffered
from shared.topics import TopicSpec, agency_offers


async def read_topic(bootstrap: str, topic: str) -> list[Any]:
    """Every record currently on the topic, all partitions, from the beginning."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            await consumer._client.force_metadata_update()  # a topic created after start
            partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        records: list[Any] = []
        while [tp for tp in tps if await consumer.position(tp) < end[tp]]:
            batch = await consumer.getmany(*tps, timeout_ms=500)
            for recs in batch.values():
                records.extend(recs)
        return records
    finally:
        await consumer.stop()


async def read_events(bootstrap: str, spec: TopicSpec) -> list[Event]:
    """Every event on the topic, decoded strictly as a refnet consumer would."""
    records = await read_topic(bootstrap, spec.name)
    return [decode(spec, r.key, r.value, r.headers).event for r in records]


def decodable(spec: TopicSpec, records: Iterable[Any]) -> list[Event]:
    """The events among ``records`` that decode, in order. Shared topics also carry records
    written to be dead-lettered (tests/e2e/test_poison_every_topic.py): a reader skips them,
    as every refnet consumer does (to its DLQ)."""
    events = []
    for r in records:
        try:
            events.append(decode(spec, r.key, r.value, r.headers).event)
        except PoisonMessage:
            continue
    return events


async def list_topics(bootstrap: str) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return sorted(await admin.list_topics())
    finally:
        await admin.close()


async def eventually(check: Callable[[], Any], what: str, timeout_s: float = 90) -> Any:
    """Poll until ``check`` returns something truthy (awaiting it if needed). Not a timing
    assertion: the timeout only bounds how long a broken build takes to say so."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"gave up waiting for: {what}")
        await asyncio.sleep(0.25)


def header(record: Any, name: str) -> str | None:
    for key, value in record.headers or ():
        if key == name:
            return bytes(value).decode()
    return None


async def offers_not_yet_read(bootstrap: str, agency_id: str) -> int:
    """Offers on the agency's topic after what its consumer group (``agency-<id>``, as the
    README example and `refnet agency listen` use) has committed: how many it will see."""
    spec = agency_offers(agency_id)
    records = await read_topic(bootstrap, spec.name)
    reader = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=f"agency-{agency_id}", enable_auto_commit=False
    )
    await reader.start()
    try:
        start = {
            p: await reader.committed(TopicPartition(spec.name, p))
            for p in {r.partition for r in records}
        }
    finally:
        await reader.stop()
    return sum(
        1
        for r in records
        if r.offset >= (start.get(r.partition) or 0)
        and isinstance(decode(spec, r.key, r.value, r.headers).event, ReferralOffered)
    )
