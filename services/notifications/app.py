"""The notifications service: the agency HTTP API and the pages behind one-click links,
plus, in the background, the consumer of needs, referral events and consent events, the
durable scheduler and the outbox relay."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import asyncpg
from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from starlette.middleware.sessions import SessionMiddleware

from services.notifications.accounts import ensure_demo_user
from services.notifications.api import router
from services.notifications.channels import EmailChannel
from services.notifications.contacts import IntakeContactBook
from services.notifications.handlers import CONSUMER, handle_event
from services.notifications.inbox import router as inbox
from services.notifications.links import Links
from services.notifications.pages import router as pages
from services.notifications.scheduler import Deps, measure_due_jobs, run_scheduler
from services.notifications.settings import NotificationsSettings
from services.notifications.sms import SmsChannel
from services.notifications.webhooks import WebhookSender
from shared.clock import Clock, clock_for
from shared.contract import asyncapi_router
from shared.db import create_pool
from shared.health import (
    DATABASE_UNAVAILABLE,
    AiokafkaConsumerProbe,
    Probe,
    StartupGate,
    database_unavailable,
    start_in_background,
)
from shared.health import router as health_router
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
from shared.tracing import TraceMiddleware

log = logging.getLogger(__name__)
SCHEMA = "notifications"


def build_deps(pool: asyncpg.Pool, clock: Clock, settings: NotificationsSettings) -> Deps:
    """The service's clients, built in the lifespan (never at import) and handed to handlers."""
    return Deps(
        pool=pool,
        clock=clock,
        settings=settings,
        email=EmailChannel(settings),
        contacts=IntakeContactBook(
            settings.intake_internal_url, settings.internal_api_token.get_secret_value()
        ),
        links=Links(
            settings.link_secret.get_secret_value(),
            clock,
            settings.link_max_age_days,
            settings.public_url,
        ),
        sms=SmsChannel.from_settings(settings),
        webhooks=WebhookSender(settings.webhook_timeout_s),
    )


async def close_deps(deps: Deps) -> None:
    await deps.email.close()
    await deps.contacts.close()
    if deps.sms:
        await deps.sms.close()
    if deps.webhooks:
        await deps.webhooks.close()


def create_app(settings: NotificationsSettings, clock: Clock | None = None) -> FastAPI:
    clock = clock or clock_for(settings.clock_offset_file)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Start-up waits for Postgres and Kafka in the background, so the server answers
        # /healthz and /readyz (503, saying what is missing) while they are down; the API
        # and pages are served once the database is there.
        probe: Probe = app.state.probe
        stops: list[Callable[[], Awaitable[None]]] = []
        tasks: list[asyncio.Task[None]] = []

        async def start() -> None:
            pool = None

            async def connect() -> None:
                nonlocal pool
                pool = await create_pool(settings.database_url, SCHEMA)

            await wait_until_ready("Postgres", connect)
            assert pool is not None
            stops.append(pool.close)
            probe.pool = pool
            deps = build_deps(pool, clock, settings)
            stops.append(lambda: close_deps(deps))
            probe.on_scrape.append(lambda conn: measure_due_jobs(conn, clock))
            if settings.is_local and settings.demo_agency_user_password:
                await ensure_demo_user(pool, settings)
            app.state.deps = deps
            probe.accepting = True
            producer = make_producer(settings, "notifications")
            # Registered before starting: a shutdown while Kafka is down still closes it.
            stops.append(producer.stop)
            await wait_until_ready("Kafka producer", producer.start)
            probe.producer = producer
            topics = [NEEDS, REFERRAL_EVENTS, CONSENT_EVENTS]
            consumer = make_consumer(settings, CONSUMER, *(spec.name for spec in topics))
            stops.append(consumer.stop)
            await wait_until_ready("Kafka consumer", consumer.start)
            probe.consumer = AiokafkaConsumerProbe(consumer)
            relay = OutboxRelay(
                pool, producer, settings.database_url, SCHEMA, settings.outbox_poll_interval_s
            )
            tasks.append(asyncio.create_task(relay.run(), name="notifications-outbox"))
            tasks.append(asyncio.create_task(run_scheduler(deps), name="notifications-scheduler"))
            tasks.append(
                asyncio.create_task(
                    consume(
                        consumer,
                        topics,
                        lambda env: handle_event(deps, env),
                        DeadLetters(producer, CONSUMER),
                        max_attempts=settings.consumer_max_attempts,
                    ),
                    name="notifications-consumer",
                )
            )

        startup = start_in_background(start(), "notifications-start-up")
        try:
            yield
        finally:
            probe.accepting = False
            await cancel_and_wait(startup, *tasks)
            # The consumer, the producer, the clients, then the pool.
            for stop in reversed(stops):
                with contextlib.suppress(Exception):
                    await stop()

    app = FastAPI(title="refnet agency API", version="1", lifespan=lifespan)
    app.state.probe = Probe(
        "notifications", settings.ready_max_outbox_backlog, settings.ready_max_consumer_lag
    )
    app.add_middleware(
        SessionMiddleware,
        secret_key=settings.inbox_secret_key.get_secret_value(),
        session_cookie="refnet_inbox",
        max_age=settings.inbox_session_max_age_s,
        same_site="strict",
        https_only=not settings.is_local,
    )
    app.add_middleware(StartupGate)
    for error in DATABASE_UNAVAILABLE:
        app.add_exception_handler(error, database_unavailable)
    app.add_middleware(TraceMiddleware)
    app.include_router(health_router())
    app.include_router(router)
    app.include_router(pages)
    app.include_router(inbox)
    app.include_router(asyncapi_router)

    @app.get("/", include_in_schema=False)
    async def home() -> RedirectResponse:
        return RedirectResponse("/inbox", status_code=303)

    return app
