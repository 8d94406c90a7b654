"""A service starts while its database is down and says so, then follows its dependencies
going away and coming back without a restart: GET /readyz answers 503 with the failing
check, then 200 again.

The test runs its own Postgres and broker (the session's are shared with other tests and
must not be stopped). Postgres is stopped (fast shutdown) and started again on the same data
directory. The broker is Tansu with memory storage, which a restart would leave without its
topics and consumer group, so it is "stopped" by freezing its process (SIGSTOP) and
resumed with SIGCONT: to the service it stops answering, as a hung or partitioned broker
does.
"""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI

from services.intake.app import create_app
from services.intake.security import generate_key
from services.intake.settings import IntakeSettings
from shared.db import migrate
from shared.embedded import EmbeddedKafka, EmbeddedPostgres, free_port
from shared.kafka import ensure_topics, topics_with_dlqs
from shared.topics import PLATFORM_TOPICS
from tests.kafka_reader import eventually

pytestmark = pytest.mark.integration

MIGRATIONS = Path(__file__).parents[2] / "services" / "intake" / "migrations"


@pytest.fixture(scope="module")
def own_infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any]]:
    run_dir = tmp_path_factory.mktemp("readiness")
    postgres = EmbeddedPostgres(run_dir / "pgdata", free_port())
    broker = EmbeddedKafka(run_dir, free_port())
    postgres.start()
    try:
        broker.start()
        try:
            yield postgres, broker
        finally:
            broker_process(broker).send_signal(signal.SIGCONT)  # never leave it frozen
            broker.stop()
    finally:
        postgres.stop()


def broker_process(broker: EmbeddedKafka) -> Any:
    assert broker._proc is not None  # the Tansu process this test started
    return broker._proc


@pytest_asyncio.fixture(loop_scope="session")
async def client(own_infra: tuple[Any, Any]) -> AsyncIterator[httpx.AsyncClient]:
    postgres, broker = own_infra
    migrate(postgres.url, "intake", MIGRATIONS)
    await ensure_topics(broker.bootstrap_servers, topics_with_dlqs(PLATFORM_TOPICS), 1)
    postgres.stop()  # the service starts without its database
    settings = IntakeSettings(
        refnet_env="local",
        database_url=postgres.url,
        kafka_bootstrap_servers=broker.bootstrap_servers,
        kafka_session_timeout_s=6,
        secret_key="s" * 32,
        pii_encryption_key=generate_key(),
        pii_index_key=generate_key(),
        internal_api_token="t" * 32,
        outbox_poll_interval_s=0.5,
    )
    app: FastAPI = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://intake") as http:
            yield http


async def readyz(http: httpx.AsyncClient) -> tuple[int, dict[str, Any]]:
    response = await http.get("/readyz")
    return response.status_code, response.json()


async def until(http: httpx.AsyncClient, status: int, what: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        code, body = await readyz(http)
        return body if code == status else None

    body: dict[str, Any] = await eventually(check, what, timeout_s=120)
    return body


async def test_readiness_follows_postgres_and_the_broker_without_a_restart(
    own_infra: tuple[Any, Any], client: httpx.AsyncClient
) -> None:
    postgres, broker = own_infra

    # Started without its database: alive, not ready, pages held back
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    code, body = await readyz(client)
    assert code == 503 and body["service"] == "intake" and body["ready"] is False
    assert body["checks"]["postgres"] == {"ok": False, "detail": "not connected yet"}
    assert body["checks"]["outbox_backlog"]["value"] == -1
    assert (await client.get("/login")).status_code == 503

    # The database arrives: start-up completes and the service becomes ready
    postgres.start()
    body = await until(client, 200, "ready once Postgres is up")
    assert all(check["ok"] for check in body["checks"].values())
    assert body["checks"]["consumer_lag"]["threshold"] == 10000
    assert set(body["checks"]["consumer_lag"]["per_topic"]) == {
        "refnet.referral-events.v1",
        "refnet.aftercare.v1",
    }
    assert (await client.get("/login")).status_code == 200
    metrics = (await client.get("/metrics")).text
    assert 'refnet_outbox_backlog{service="intake"} 0.0' in metrics

    # Postgres stops: not ready, and why
    postgres.stop()
    body = await until(client, 503, "not ready without Postgres")
    assert not body["checks"]["postgres"]["ok"]
    assert body["checks"]["kafka"]["ok"]
    # A request that needs the database meanwhile is told to retry, not a server error
    unavailable = await client.get(
        "/api/v1/intakes/00000000-0000-4000-8000-000000000000",
        headers={"Authorization": "Bearer rnw_any"},
    )
    assert unavailable.status_code == 503 and unavailable.headers["retry-after"]
    # ...and comes back: ready again, same process
    postgres.start()
    await until(client, 200, "ready again with Postgres back")

    # The broker stops answering: not ready, and why
    os.kill(broker_process(broker).pid, signal.SIGSTOP)
    try:
        body = await until(client, 503, "not ready with the broker frozen")
        assert not body["checks"]["kafka"]["ok"]
        assert body["checks"]["postgres"]["ok"]
    finally:
        os.kill(broker_process(broker).pid, signal.SIGCONT)
    body = await until(client, 200, "ready again with the broker back")
    assert body["checks"]["kafka"]["ok"] and body["checks"]["consumer"]["ok"]
