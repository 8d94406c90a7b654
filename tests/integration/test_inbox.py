from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
import pytest

from shared.cloudevents import Envelope
from shared.inbox import first_delivery
from tests.factories import need_submitted

pytestmark = pytest.mark.integration


def envelope(source: str, event_id: str) -> Envelope:
    return Envelope(event_id, source, "t", datetime.now(UTC), 1, need_submitted())


async def test_an_event_is_processed_once_per_consumer(matching_pool: asyncpg.Pool) -> None:
    async with matching_pool.acquire() as conn:
        assert await first_delivery(conn, "a", envelope("/agencies/ag-001", "1"))
        assert not await first_delivery(conn, "a", envelope("/agencies/ag-001", "1"))
        assert await first_delivery(conn, "b", envelope("/agencies/ag-001", "1"))


async def test_two_producers_may_use_the_same_event_id(matching_pool: asyncpg.Pool) -> None:
    # CloudEvents ids are unique per source; offer-responses has a producer per agency.
    async with matching_pool.acquire() as conn:
        assert await first_delivery(conn, "a", envelope("/agencies/ag-001", "1"))
        assert await first_delivery(conn, "a", envelope("/agencies/ag-002", "1"))
