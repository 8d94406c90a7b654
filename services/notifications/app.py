"""The notifications service: the agency HTTP API and the pages behind one-click links,
plus, in the background, the consumer of needs, referral events and consent events, the
durable scheduler and the outbox relay."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import asyncpg
from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from starlette.middleware.sessions import SessionMiddleware

from services.notifications.accounts import ensure_demo_user
from services.notifications.api import router
from services.notifications.channels import EmailChannel
from services.notifications.contacts import IntakeContactBook
from services.notifications.handlers import CONSUMER, handle_event, handle_events
from services.notifications.inbox import router as inbox
from services.notifications.links import Links
from services.notifications.pages import router as pages
from services.notifications.scheduler import Deps, measure_due_jobs, run_scheduler
from services.notifications.settings import NotificationsSettings
from services.notifications.sms import SmsChannel
from services.notifications.webhooks import WebhookSender
from shared.clock import Clock, clock_for
from shared.contract import asyncapi_router
from shared.health import (
    DATABASE_UNAVAILABLE,
    Probe,
    StartupGate,
    database_unavailable,
    start_in_background,
)
from shared.health import router as health_router
from shared.service import ServiceLifecycle
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
        life = ServiceLifecycle("notifications", settings, SCHEMA, app.state.probe)

        async def start() -> None:
            pool = await life.postgres()
            deps = build_deps(pool, clock, settings)
            life.on_stop(lambda: close_deps(deps))
            life.probe.on_scrape.append(lambda conn: measure_due_jobs(conn, clock))
            if settings.is_local and settings.demo_agency_user_password:
                await ensure_demo_user(pool, settings)
            app.state.deps = deps
            life.probe.accepting = True
            topics = [NEEDS, REFERRAL_EVENTS, CONSENT_EVENTS]
            await life.kafka(
                pool,
                CONSUMER,
                topics,
                partial(handle_event, deps),
                batch_handler=partial(handle_events, deps),
            )
            life.spawn(run_scheduler(deps), "scheduler")

        startup = start_in_background(start(), "notifications-start-up")
        try:
            yield
        finally:
            await life.stop(startup)

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
