"""The intake service's FastAPI app: builds its clients in the lifespan, then serves the
worker-facing pages while relaying its outbox and following referral status events and
aftercare check-in answers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from uuid import uuid4

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.staticfiles import StaticFiles
from starlette.middleware.sessions import SessionMiddleware

from services.intake import api, internal_api, routes
from services.intake import repository as repo
from services.intake.auth import RecentTokens
from services.intake.handlers import STATUS_CONSUMER, Crypto, on_event, on_events
from services.intake.security import PersonIndex, PiiCipher
from services.intake.settings import IntakeSettings
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
from shared.passwords import hash_password
from shared.service import ServiceLifecycle
from shared.topics import AFTERCARE, REFERRAL_EVENTS
from shared.tracing import TraceMiddleware

log = logging.getLogger(__name__)
SCHEMA = "intake"


def create_app(settings: IntakeSettings, clock: Clock | None = None) -> FastAPI:
    clock = clock or clock_for(settings.clock_offset_file)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Start-up waits for Postgres and Kafka in the background, so the server answers
        # /healthz and /readyz (503, saying what is missing) while they are down; pages are
        # served once the database is there.
        life = ServiceLifecycle("intake", settings, SCHEMA, app.state.probe)

        async def start() -> None:
            pool = await life.postgres()
            if settings.is_local and settings.demo_worker_password:
                await _ensure_demo_worker(pool, settings)
            app.state.pool = pool
            life.probe.accepting = True
            # One group for both topics: the group id predates aftercare, and renaming it
            # would replay every referral event.
            followed = [REFERRAL_EVENTS, AFTERCARE]
            await life.kafka(
                pool,
                STATUS_CONSUMER,
                followed,
                partial(on_event, pool),
                batch_handler=partial(on_events, pool),
            )

        startup = start_in_background(start(), "intake-start-up")
        try:
            yield
        finally:
            await life.stop(startup)

    app = FastAPI(
        title="refnet intake API",
        version="1",
        description="Submit recovery intakes and follow their referrals. Authenticate with a "
        "worker token from `refnet users token EMAIL`.",
        lifespan=lifespan,
        openapi_url="/api/v1/openapi.json",
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.clock = clock
    app.state.probe = Probe(
        "intake", settings.ready_max_outbox_backlog, settings.ready_max_consumer_lag
    )
    app.state.recent_tokens = RecentTokens()
    app.state.crypto = Crypto(
        PiiCipher(settings.pii_keys), PersonIndex(settings.pii_index_key.get_secret_value())
    )
    app.add_middleware(
        SessionMiddleware,
        secret_key=settings.secret_key.get_secret_value(),
        session_cookie="refnet_session",
        max_age=settings.session_max_age_s,
        same_site="strict",
        https_only=not settings.is_local,
    )
    app.add_middleware(StartupGate)
    for error in DATABASE_UNAVAILABLE:
        app.add_exception_handler(error, database_unavailable)
    # Outermost: each request is a span, so a submitted need's events continue its trace.
    app.add_middleware(TraceMiddleware)
    static = Path(__file__).parent / "static"
    app.mount("/static", StaticFiles(directory=static), name="static")
    app.include_router(health_router())
    # Routes are tried in order: the JSON API (what systems call in bulk) before the pages.
    app.include_router(api.router)
    app.include_router(routes.router)
    app.include_router(internal_api.router)
    app.include_router(asyncapi_router)
    app.add_exception_handler(RequestValidationError, api.validation_error)
    return app


async def _ensure_demo_worker(pool: object, settings: IntakeSettings) -> None:
    assert settings.demo_worker_password is not None
    async with pool.acquire() as conn:  # type: ignore[attr-defined]
        await repo.upsert_worker(
            conn,
            uuid4(),
            settings.demo_worker_email,
            "Demo Worker",
            hash_password(settings.demo_worker_password.get_secret_value()),
        )
    log.info("demo worker %s is ready", settings.demo_worker_email)
