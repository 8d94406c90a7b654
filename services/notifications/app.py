"""The notifications service: the agency HTTP API, plus, in the background, the consumer of
needs, referral events and consent events, the durable scheduler and the outbox relay."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from services.notifications.api import router
from services.notifications.handlers import CONSUMER, Deps, handle_event, run_due_jobs
from services.notifications.mailer import Mailer
from services.notifications.settings import NotificationsSettings
from shared.clock import Clock, clock_for
from shared.db import create_pool
from shared.kafka import (
    DeadLetters,
    cancel_and_wait,
    consume,
    make_consumer,
    make_producer,
    wait_until_ready,
)
from shared.outbox import OutboxRelay
from shared.topics import CONSENT_EVENTS, NEEDS, REFERRAL_EVENTS

log = logging.getLogger(__name__)
SCHEMA = "notifications"


async def run_scheduler(deps: Deps) -> None:
    while True:
        try:
            claimed = await run_due_jobs(deps)
        except Exception:  # keep the scheduler alive; the jobs stay pending and leased
            log.exception("scheduler cycle failed; retrying")
            claimed = 0
        if claimed < deps.settings.scheduler_batch_size:
            await asyncio.sleep(deps.settings.scheduler_poll_interval_s)


def create_app(settings: NotificationsSettings, clock: Clock | None = None) -> FastAPI:
    clock = clock or clock_for(settings.clock_offset_file)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = None

        async def connect() -> None:
            nonlocal pool
            pool = await create_pool(settings.database_url, SCHEMA)

        await wait_until_ready("Postgres", connect)
        assert pool is not None
        deps = Deps(pool, clock, settings, Mailer(settings))
        app.state.deps = deps
        producer = make_producer(settings, "notifications")
        await wait_until_ready("Kafka producer", producer.start)
        topics = [NEEDS, REFERRAL_EVENTS, CONSENT_EVENTS]
        consumer = make_consumer(settings, CONSUMER, *(spec.name for spec in topics))
        await wait_until_ready("Kafka consumer", consumer.start)
        relay = OutboxRelay(
            pool, producer, settings.database_url, SCHEMA, settings.outbox_poll_interval_s
        )
        tasks = [
            asyncio.create_task(relay.run(), name="notifications-outbox"),
            asyncio.create_task(run_scheduler(deps), name="notifications-scheduler"),
            asyncio.create_task(
                consume(
                    consumer,
                    topics,
                    lambda env: handle_event(deps, env),
                    DeadLetters(producer, CONSUMER),
                    max_attempts=settings.consumer_max_attempts,
                ),
                name="notifications-consumer",
            ),
        ]
        try:
            yield
        finally:
            await cancel_and_wait(*tasks)
            with contextlib.suppress(Exception):
                await consumer.stop()
            await producer.stop()
            await pool.close()

    app = FastAPI(title="refnet agency API", version="1", lifespan=lifespan)
    app.include_router(router)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
