from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
from playwright.sync_api import Browser, Page, sync_playwright

from services.local_stack import LocalStack, Ports
from tests.e2e.chromium import CHROMIUM, CHROMIUM_ARGS


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """The whole stack as processes, as `refnet up` runs it, on free ports."""
    run_dir: Path = tmp_path_factory.mktemp("stack")
    local = LocalStack(
        run_dir,
        Ports.free(),
        extra_env={
            "SCHEDULER_POLL_INTERVAL_S": "0.2",
            "OUTBOX_POLL_INTERVAL_S": "0.5",
            "KAFKA_SESSION_TIMEOUT_S": "6",
            # Every test calls from 127.0.0.1, and some present bad keys and tokens on purpose: the
            # per-address throttle is tested on an app of its own (tests/integration).
            "API_KEY_MAX_FAILURES_PER_ADDRESS": "100000",
        },
    )
    local.start()
    try:
        yield local
    finally:
        local.stop()
        for log in sorted((run_dir / "logs").glob("*.log")):
            text = log.read_text(errors="replace")
            if "Traceback" in text:
                print(f"--- {log.name} (has tracebacks) ---\n{text[-6000:]}")  # noqa: T201


@pytest_asyncio.fixture(loop_scope="session")
async def intake_db(stack: LocalStack) -> AsyncIterator[asyncpg.Connection]:
    """The intake service's own tables, read as an auditor would."""
    assert stack.infra is not None
    conn = await asyncpg.connect(stack.infra.database_url)
    await conn.execute("SET search_path TO intake")
    yield conn
    await conn.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    yield context.new_page()
    context.close()
