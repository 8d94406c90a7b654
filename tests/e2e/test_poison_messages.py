"""A record that breaks the needs contract is dead-lettered with its reason, and matching
goes on to the next need."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import uuid4

import pytest
from aiokafka import AIOKafkaProducer

from services.local_stack import LocalStack
from shared.cloudevents import encode
from shared.events import NeedCategory, ReferralStatus
from shared.topics import NEEDS, REFERRAL_EVENTS
from tests.factories import need_submitted
from tests.kafka_reader import decodable, eventually, header, read_topic

pytestmark = pytest.mark.e2e


async def test_malformed_need_goes_to_the_dlq_and_the_next_need_is_matched(
    stack: LocalStack,
) -> None:
    assert stack.infra is not None
    bootstrap = stack.infra.kafka_bootstrap_servers
    need = need_submitted(NeedCategory.HOUSING)
    headers, value = encode(need, event_id=uuid4(), source="/tests", time=datetime.now(UTC))
    poison_key = str(uuid4()).encode()

    # Given a malformed record and then a valid need, in that order on one partition
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(
            NEEDS.name, key=poison_key, value=b"{not json", headers=headers, partition=0
        )
        await producer.send_and_wait(
            NEEDS.name, key=str(need.need_id).encode(), value=value, headers=headers, partition=0
        )
    finally:
        await producer.stop()

    # Then the malformed one lands in the DLQ with matching's reason
    async def dead_letters() -> list[object]:
        return [
            r
            for r in await read_topic(bootstrap, NEEDS.dlq)
            if r.key == poison_key and header(r, "dlq_consumer") == "matching"
        ]

    # At least once: a rebalance may dead-letter it twice; each copy carries the reason.
    dead = (await eventually(dead_letters, "the malformed need in the DLQ"))[0]
    assert "not valid JSON" in (header(dead, "dlq_reason") or "")
    assert header(dead, "dlq_topic") == NEEDS.name
    assert dead.value == b"{not json"

    # And the valid need behind it is still offered to an agency
    async def offered() -> bool:
        records = await read_topic(bootstrap, REFERRAL_EVENTS.name)
        for change in decodable(REFERRAL_EVENTS, records):
            if change.need_id == need.need_id and change.status == ReferralStatus.OFFERED:
                return True
        return False

    await eventually(offered, "the next need offered")
