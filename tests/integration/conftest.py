from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from uuid import uuid4

import asyncpg
import pytest
import pytest_asyncio

from shared.db import create_pool, migrate
from shared.infra import Infrastructure, provision

SERVICES = Path(__file__).parents[2] / "services"


@pytest.fixture(scope="session")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Infrastructure]:
    """Real Postgres and a Kafka-protocol broker: explicit settings, else testcontainers
    when Docker answers, else embedded."""
    found = provision(tmp_path_factory.mktemp("infra"))
    try:
        yield found
    finally:
        found.stop()


async def fresh_schema(infra: Infrastructure, service: str) -> tuple[str, asyncpg.Pool]:
    schema = f"{service}_{uuid4().hex[:8]}"
    migrate(infra.database_url, schema, SERVICES / service / "migrations")
    return schema, await create_pool(infra.database_url, schema)


@pytest_asyncio.fixture(loop_scope="session")
async def matching_pool(infra: Infrastructure) -> AsyncIterator[asyncpg.Pool]:
    _, pool = await fresh_schema(infra, "matching")
    yield pool
    await pool.close()


@pytest_asyncio.fixture(loop_scope="session")
async def notifications_pool(infra: Infrastructure) -> AsyncIterator[asyncpg.Pool]:
    _, pool = await fresh_schema(infra, "notifications")
    yield pool
    await pool.close()
