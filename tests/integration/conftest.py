from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

import asyncpg
import pytest
import pytest_asyncio

from services.notifications.handlers import Deps
from services.notifications.mailer import Mailer
from services.notifications.settings import NotificationsSettings
from services.smtp_sink import SmtpSink
from shared.clock import ManualClock
from shared.db import create_pool, migrate
from shared.embedded import free_port
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


# The notifications service's dependencies over a real SMTP server. Modules testing another
# service define their own `deps` (and `clock`), which take precedence there.


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[SmtpSink]:
    smtp = SmtpSink(tmp_path / "mail", free_port())
    smtp.start()
    yield smtp
    smtp.stop()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime(2026, 11, 22, 9, tzinfo=UTC))


@pytest.fixture
def deps(notifications_pool: asyncpg.Pool, sink: SmtpSink, clock: ManualClock) -> Deps:
    settings = NotificationsSettings(
        database_url="postgresql://unused",
        kafka_bootstrap_servers="unused",
        smtp_host="127.0.0.1",
        smtp_port=sink.port,
    )
    return Deps(notifications_pool, clock, settings, Mailer(settings))
