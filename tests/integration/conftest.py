from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from uuid import uuid4

import asyncpg
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaProducer

from services.intake import repository as intake_repo
from services.intake.handlers import Crypto
from services.intake.security import PersonIndex, PiiCipher, generate_key
from services.notifications.app import close_deps
from services.notifications.channels import EmailChannel
from services.notifications.handlers import handle_event
from services.notifications.links import Links
from services.notifications.scheduler import Deps
from services.notifications.settings import NotificationsSettings
from services.notifications.sms import SmsChannel
from services.notifications.webhooks import WebhookSender
from services.sms_sink import SmsSink
from services.smtp_sink import SmtpSink
from shared.clock import ManualClock
from shared.cloudevents import Envelope
from shared.db import create_pool, migrate
from shared.dlq import dlq_name
from shared.embedded import free_port
from shared.events import Event
from shared.infra import Infrastructure, provision
from shared.kafka import ensure_topics
from shared.passwords import hash_password
from tests.contacts import StaticContactBook

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


# Intake's own schema, keys and a worker, for tests of intake's handlers.


@pytest.fixture
def crypto() -> Crypto:
    return Crypto(PiiCipher([generate_key()]), PersonIndex(generate_key()))


@pytest_asyncio.fixture(loop_scope="session")
async def intake_pool(infra: Infrastructure) -> AsyncIterator[asyncpg.Pool]:
    _, pool = await fresh_schema(infra, "intake")
    yield pool
    await pool.close()


@pytest_asyncio.fixture(loop_scope="session")
async def worker(intake_pool: asyncpg.Pool) -> asyncpg.Record:
    async with intake_pool.acquire() as conn:
        worker_id = await intake_repo.upsert_worker(
            conn, uuid4(), f"w{uuid4().hex[:6]}@refnet.local", "W", hash_password("x" * 12)
        )
        return await intake_repo.worker_by_id(conn, worker_id)


@pytest_asyncio.fixture(loop_scope="session")
async def producer(infra: Infrastructure) -> AsyncIterator[AIOKafkaProducer]:
    started = AIOKafkaProducer(bootstrap_servers=infra.kafka_bootstrap_servers, acks="all")
    await started.start()
    yield started
    await started.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def topic(infra: Infrastructure) -> str:
    """A topic of this test's own, with its DLQ, so other tests' dead letters stay out."""
    name = f"refnet.test-{uuid4().hex[:8]}.v1"
    await ensure_topics(infra.kafka_bootstrap_servers, [name, dlq_name(name)], 2)
    return name


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
    # 10:00 in the network's zone (America/Los_Angeles): inside anyone's contact hours.
    return ManualClock(datetime(2026, 11, 23, 18, tzinfo=UTC))


SMS_ACCOUNT = "AC" + "1" * 32
SMS_TOKEN = "sms-test-token"


@pytest.fixture
def sms_sink(tmp_path: Path) -> Iterator[SmsSink]:
    sms = SmsSink(tmp_path / "sms", free_port(), account_sid=SMS_ACCOUNT, auth_token=SMS_TOKEN)
    sms.start()
    yield sms
    sms.stop()


@pytest.fixture
def contacts() -> StaticContactBook:
    return StaticContactBook()


def notifications_settings(
    sink: SmtpSink, sms: SmsSink, **overrides: object
) -> NotificationsSettings:
    values: dict[str, object] = {
        "database_url": "postgresql://unused",
        "kafka_bootstrap_servers": "unused",
        "smtp_host": "127.0.0.1",
        "smtp_port": sink.port,
        "sms_api_url": sms.url,
        "sms_account_sid": SMS_ACCOUNT,
        "sms_auth_token": SMS_TOKEN,
        "sms_from": "+15035550100",
        "link_secret": "l" * 40,
        "internal_api_token": "i" * 40,
        "inbox_secret_key": "k" * 40,
        "public_url": "http://notifications.test",
        "local_timezone": "America/Los_Angeles",
        **overrides,
    }
    return NotificationsSettings(**values)  # type: ignore[arg-type]


def notifications_deps(
    pool: asyncpg.Pool,
    clock: ManualClock,
    settings: NotificationsSettings,
    contacts: StaticContactBook,
) -> Deps:
    return Deps(
        pool=pool,
        clock=clock,
        settings=settings,
        email=EmailChannel(settings),
        contacts=contacts,
        links=Links(
            settings.link_secret.get_secret_value(),
            clock,
            settings.link_max_age_days,
            settings.public_url,
        ),
        sms=SmsChannel.from_settings(settings),
        webhooks=WebhookSender(settings.webhook_timeout_s),
    )


@pytest_asyncio.fixture(loop_scope="session")
async def deps(
    notifications_pool: asyncpg.Pool,
    sink: SmtpSink,
    sms_sink: SmsSink,
    clock: ManualClock,
    contacts: StaticContactBook,
) -> AsyncIterator[Deps]:
    settings = notifications_settings(sink, sms_sink)
    built = notifications_deps(notifications_pool, clock, settings, contacts)
    yield built
    await close_deps(built)


# --- a real webhook receiver on 127.0.0.1 -------------------------------------------------


@dataclass
class Received:
    path: str
    headers: Any  # email.message.Message: case-insensitive, like a web framework's
    body: bytes


@dataclass
class Receiver:
    port: int
    status: int = 204
    delay_s: float = 0.0
    requests: list[Received] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver(port=0)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            state.requests.append(Received(self.path, self.headers, body))
            if state.delay_s:
                time.sleep(state.delay_s)
            self.send_response(state.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.block_on_close = False
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


def envelope_of(deps: Deps, event: Event) -> Envelope:
    return Envelope(str(uuid4()), "/tests", event.ce_type, deps.clock.now(), 1, event)


async def deliver(deps: Deps, event: Event) -> None:
    """Hand an event to notifications' consumer as the Kafka consumer would."""
    await handle_event(deps, envelope_of(deps, event))
