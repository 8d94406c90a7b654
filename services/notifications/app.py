"""The notifications service: the agency HTTP API and the pages behind one-click links,
plus, in the background, the consumer of needs, referral events and consent events, the
durable scheduler and the outbox relay."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
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
from services.notifications.scheduler import Deps, run_scheduler
from services.notifications.settings import NotificationsSettings
from services.notifications.sms import SmsChannel
from services.notifications.webhooks import WebhookSender
from shared.clock import Clock, clock_for
from shared.contract import asyncapi_router
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
        pool = None

        async def connect() -> None:
            nonlocal pool
            pool = await create_pool(settings.database_url, SCHEMA)

        await wait_until_ready("Postgres", connect)
        assert pool is not None
        deps = build_deps(pool, clock, settings)
        app.state.deps = deps
        if settings.is_local and settings.demo_agency_user_password:
            await ensure_demo_user(pool, settings)
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
            await close_deps(deps)
            await pool.close()

    app = FastAPI(title="refnet agency API", version="1", lifespan=lifespan)
    app.add_middleware(
        SessionMiddleware,
        secret_key=settings.inbox_secret_key.get_secret_value(),
        session_cookie="refnet_inbox",
        max_age=settings.inbox_session_max_age_s,
        same_site="strict",
        https_only=not settings.is_local,
    )
    app.include_router(router)
    app.include_router(pages)
    app.include_router(inbox)
    app.include_router(asyncapi_router)

    @app.get("/", include_in_schema=False)
    async def home() -> RedirectResponse:
        return RedirectResponse("/inbox", status_code=303)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
