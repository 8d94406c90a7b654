"""Guessing is throttled: the intake login, the agency inbox login (per account and per
client address), intake's worker API tokens and the agency API's keys (per client address),
each over a window.

Each runs on an app of its own, on its own schema, with small limits and a manual clock:
the e2e stack serves every test from 127.0.0.1, so exhausting a limit there would lock the
other tests out."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from uuid import uuid4

import asyncpg
import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from starlette.middleware.sessions import SessionMiddleware

from services.intake import api as intake_api
from services.intake import repository as intake_repo
from services.intake import routes as intake_routes
from services.intake.auth import RecentTokens
from services.intake.handlers import Crypto
from services.intake.security import generate_key, new_api_token
from services.intake.settings import IntakeSettings
from services.notifications.accounts import upsert_user
from services.notifications.api import router as agency_api
from services.notifications.app import close_deps
from services.notifications.handlers import hash_api_key, issue_api_key
from services.notifications.inbox import router as inbox_router
from services.notifications.scheduler import Deps
from services.sms_sink import SmsSink
from services.smtp_sink import SmtpSink
from shared.clock import ManualClock
from shared.passwords import hash_password
from tests.contacts import StaticContactBook
from tests.integration.conftest import notifications_deps, notifications_settings

pytestmark = pytest.mark.integration

PASSWORD = "the right password"
WINDOW_S = 600
PER_ACCOUNT, PER_ADDRESS = 3, 5
KEY_FAILURES = 3

Client = Callable[[str], httpx.AsyncClient]


def clients(app: FastAPI) -> Client:
    """An HTTP client of ``app`` calling from the given address."""

    def client(address: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=app, client=(address, 40000))
        return httpx.AsyncClient(transport=transport, base_url="http://refnet.test")

    return client


async def log_in(http: httpx.AsyncClient, path: str, email: str, password: str) -> int:
    page = await http.get(path)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token, page.text
    data = {"email": email, "password": password, "csrf_token": token.group(1)}
    return (await http.post(path, data=data)).status_code


# --- the logins ------------------------------------------------------------------------------


@pytest.fixture
def intake(intake_pool: asyncpg.Pool, clock: ManualClock, crypto: Crypto) -> Client:
    settings = IntakeSettings(
        refnet_env="local",
        database_url="postgresql://unused",
        kafka_bootstrap_servers="unused:9092",
        secret_key="s" * 40,
        pii_encryption_key=generate_key(),
        pii_index_key=generate_key(),
        internal_api_token="t" * 40,
        login_window_s=WINDOW_S,
        login_max_failures_per_account=PER_ACCOUNT,
        login_max_failures_per_address=PER_ADDRESS,
        api_key_window_s=WINDOW_S,
        api_key_max_failures_per_address=KEY_FAILURES,
    )
    app = FastAPI()
    app.state.settings, app.state.pool, app.state.clock = settings, intake_pool, clock
    app.state.crypto, app.state.recent_tokens = crypto, RecentTokens()
    app.add_middleware(SessionMiddleware, secret_key="s" * 40, session_cookie="refnet_session")
    app.include_router(intake_api.router)
    app.include_router(intake_routes.router)
    return clients(app)


@pytest_asyncio.fixture(loop_scope="session")
async def deps(
    notifications_pool: asyncpg.Pool,
    sink: SmtpSink,
    sms_sink: SmsSink,
    clock: ManualClock,
    contacts: StaticContactBook,
) -> AsyncIterator[Deps]:
    settings = notifications_settings(
        sink,
        sms_sink,
        login_window_s=WINDOW_S,
        login_max_failures_per_account=PER_ACCOUNT,
        login_max_failures_per_address=PER_ADDRESS,
        api_key_window_s=WINDOW_S,
        api_key_max_failures_per_address=KEY_FAILURES,
    )
    built = notifications_deps(notifications_pool, clock, settings, contacts)
    yield built
    await close_deps(built)


@pytest.fixture
def notifications(deps: Deps) -> Client:
    app = FastAPI()
    app.state.deps = deps
    app.add_middleware(SessionMiddleware, secret_key="k" * 40, session_cookie="refnet_inbox")
    app.include_router(inbox_router)
    app.include_router(agency_api)
    return clients(app)


async def intake_accounts(pool: asyncpg.Pool, n: int) -> list[str]:
    emails = [f"worker-{uuid4().hex[:8]}@refnet.local" for _ in range(n)]
    async with pool.acquire() as conn:
        for email in emails:
            await intake_repo.upsert_worker(conn, uuid4(), email, "W", hash_password(PASSWORD))
    return emails


async def inbox_accounts(pool: asyncpg.Pool, n: int) -> list[str]:
    emails = [f"user-{uuid4().hex[:8]}@agency.example" for _ in range(n)]
    async with pool.acquire() as conn:
        for email in emails:
            await upsert_user(conn, "ag-001", email, "U", hash_password(PASSWORD))
    return emails


@pytest.mark.parametrize("service", ["intake", "inbox"])
async def test_a_login_is_refused_unchecked_after_too_many_failures_of_its_account_or_address(
    service: str,
    intake: Client,
    notifications: Client,
    intake_pool: asyncpg.Pool,
    notifications_pool: asyncpg.Pool,
    clock: ManualClock,
) -> None:
    ok = 303  # logged in: on to the pages
    if service == "intake":
        client, path, emails = intake, "/login", await intake_accounts(intake_pool, 4)
    else:
        client, path = notifications, "/inbox/login"
        emails = await inbox_accounts(notifications_pool, 4)
    guessed, other, third, fourth = emails

    # Per account: after PER_ACCOUNT wrong passwords, even the right one is refused
    async with client("198.51.100.1") as http:
        for _ in range(PER_ACCOUNT):
            assert await log_in(http, path, guessed, "wrong") == 401
        assert await log_in(http, path, guessed, PASSWORD) == 429
    async with client("198.51.100.2") as elsewhere:
        assert await log_in(elsewhere, path, guessed, PASSWORD) == 429, "from anywhere"
        assert await log_in(elsewhere, path, other, PASSWORD) == ok, "another account is fine"

    # Per address: failures spread over accounts add up for the address they come from
    async with client("198.51.100.3") as http:
        for account in (third, fourth, third, fourth, other):  # PER_ADDRESS in all
            assert await log_in(http, path, account, "wrong") == 401
        assert await log_in(http, path, other, PASSWORD) == 429
    async with client("198.51.100.4") as elsewhere:
        assert await log_in(elsewhere, path, other, PASSWORD) == ok

    # Once the window has passed, the guessed account may log in again
    clock.advance(timedelta(seconds=WINDOW_S + 1))
    async with client("198.51.100.1") as http:
        assert await log_in(http, path, guessed, PASSWORD) == ok


# --- intake's worker API tokens ----------------------------------------------------------------


async def worker_token(pool: asyncpg.Pool, worker: asyncpg.Record) -> str:
    token, digest = new_api_token()
    async with pool.acquire() as conn:
        await intake_repo.insert_token(conn, digest, worker["worker_id"], "throttle test")
    return token


async def test_an_address_presenting_too_many_unknown_tokens_is_refused_every_token_for_a_while(
    intake: Client, intake_pool: asyncpg.Pool, worker: asyncpg.Record, clock: ManualClock
) -> None:
    token = await worker_token(intake_pool, worker)

    async def read(http: httpx.AsyncClient, presented: str | None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {presented}"} if presented else {}
        return await http.get(f"/api/v1/intakes/{uuid4()}", headers=headers)

    async def submit(http: httpx.AsyncClient, presented: str) -> httpx.Response:
        # An empty body: the token is checked before the body is (422 once it passes).
        headers = {"Authorization": f"Bearer {presented}"}
        return await http.post("/api/v1/intakes", json={}, headers=headers)

    async with intake("192.0.2.30") as guesser, intake("192.0.2.40") as neighbour:
        # A valid submission puts the token in the endpoint's memory, for the guesser's address
        assert (await submit(guesser, token)).status_code == 422
        # Unknown tokens count, on either endpoint; a valid one in between resets nothing
        assert (await read(guesser, "rnw_guess-1")).status_code == 401
        assert (await read(guesser, token)).status_code == 404, "found, but no such intake"
        assert (await submit(guesser, "rnw_guess-2")).status_code == 401
        assert (await read(guesser, "rnw_guess-3")).status_code == 401
        # No token at all is no guess
        assert (await read(guesser, None)).status_code == 401

        # Then every token from that address is refused unchecked, the valid one too, though
        # the submission endpoint had remembered it as valid for this very address
        for refused in (
            await read(guesser, token),
            await submit(guesser, token),
            await submit(guesser, "rnw_guess-4"),
        ):
            assert refused.status_code == 429, refused.text
            assert refused.headers["retry-after"] == str(WINDOW_S)
        # while the neighbour is served
        assert (await submit(neighbour, token)).status_code == 422
        assert (await read(neighbour, token)).status_code == 404

        clock.advance(timedelta(seconds=WINDOW_S))
        assert (await submit(guesser, token)).status_code == 422
        assert (await read(guesser, token)).status_code == 404


# --- the agency API's keys ---------------------------------------------------------------------


async def test_an_address_presenting_too_many_unknown_keys_is_refused_every_key_for_a_while(
    notifications: Client, notifications_pool: asyncpg.Pool, clock: ManualClock
) -> None:
    key = await issue_api_key(notifications_pool, "ag-001")
    revoked = await issue_api_key(notifications_pool, "ag-001")
    async with notifications_pool.acquire() as conn:
        await conn.execute(
            "UPDATE agency_api_keys SET revoked_at = now() WHERE key_hash = $1",
            hash_api_key(revoked),
        )

    async def call(http: httpx.AsyncClient, presented: str | None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {presented}"} if presented else {}
        return await http.get("/agency/v1/offers", headers=headers)

    async with notifications("192.0.2.10") as guesser, notifications("192.0.2.20") as neighbour:
        # Unknown and revoked keys count; a valid key in between does not reset the count
        assert (await call(guesser, "rn_guess-1")).status_code == 401
        assert (await call(guesser, key)).status_code == 200
        assert (await call(guesser, revoked)).status_code == 401
        assert (await call(guesser, "rn_guess-2")).status_code == 401
        # No key at all is no guess
        assert (await call(guesser, None)).status_code == 401

        # Then every key from that address is refused, the valid one too, unchecked
        for presented in (key, "rn_guess-3"):
            refused = await call(guesser, presented)
            assert refused.status_code == 429, refused.text
            assert refused.headers["retry-after"] == str(WINDOW_S)
        # while another address is served
        assert (await call(neighbour, key)).status_code == 200

        # Retry-After counts down to when the failures leave the window
        clock.advance(timedelta(seconds=WINDOW_S // 2))
        assert (await call(guesser, key)).headers["retry-after"] == str(WINDOW_S // 2)
        clock.advance(timedelta(seconds=WINDOW_S // 2))
        assert (await call(guesser, key)).status_code == 200
        # and the refused requests did not count: the address has its full allowance again
        for n in range(KEY_FAILURES):
            assert (await call(guesser, f"rn_again-{n}")).status_code == 401
        assert (await call(guesser, key)).status_code == 429


async def test_parallel_guesses_from_one_address_get_no_more_than_the_limit(
    notifications: Client,
) -> None:
    async with notifications("203.0.113.9") as http:
        answers = await asyncio.gather(
            *[
                http.get("/agency/v1/offers", headers={"Authorization": f"Bearer rn_guess-{n}"})
                for n in range(4 * KEY_FAILURES)
            ]
        )
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [401] * KEY_FAILURES + [429] * (3 * KEY_FAILURES)
