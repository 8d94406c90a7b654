"""Who is asking: a worker's browser session or API token, CSRF on every form, the login
throttle (per account and per client address) and the API token throttle (per address)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated
from uuid import UUID

import asyncpg
from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.intake import repository as repo
from services.intake.forms import FormValues
from services.intake.security import token_digest
from shared.passwords import csrf_matches, new_csrf_token, verify_password
from shared.throttle import AddressThrottle, TooManyFailures, client_address

_bearer = HTTPBearer(auto_error=False, description="A worker API token (`refnet users token`).")


def csrf_token(request: Request) -> str:
    token = request.session.get("csrf")
    if not token:
        token = request.session["csrf"] = new_csrf_token()
    return str(token)


async def _checked_form(request: Request) -> FormValues:
    form = FormValues((await request.form()).multi_items())
    if not csrf_matches(request.session.get("csrf"), form.get("csrf_token")):
        raise HTTPException(403, "The form expired or was not sent from refnet. Reload and retry.")
    return form


def _to_login() -> HTTPException:
    return HTTPException(303, headers={"Location": "/login"})


async def _session_worker(request: Request) -> asyncpg.Record:
    worker_id = request.session.get("worker_id")
    max_age = request.app.state.settings.session_max_age_s
    if not worker_id or time.time() - request.session.get("login_at", 0) > max_age:
        raise _to_login()
    async with request.app.state.pool.acquire() as conn:
        worker = await repo.worker_by_id(conn, UUID(worker_id))
    if worker is None or _ended(worker, request.session.get("login_at", 0)):
        # disabled since they logged in, or they logged out (this may be a kept copy of the
        # cookie: it is signed, not stored, so the server says which sessions are over)
        request.session.clear()
        raise _to_login()
    return worker


def _ended(worker: asyncpg.Record, login_at: float) -> bool:
    revoked = worker["sessions_revoked_at"]
    return revoked is not None and login_at <= revoked.timestamp()


async def _admin(worker: Annotated[asyncpg.Record, Depends(_session_worker)]) -> asyncpg.Record:
    if worker["role"] != "admin":
        raise HTTPException(403, "This page is for administrators.")
    return worker


async def _token_worker(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> asyncpg.Record:
    if credentials is None:
        raise bad_token()
    return await _worker_of_token(request, token_digest(credentials.credentials))


async def _worker_of_token(request: Request, digest: bytes) -> asyncpg.Record:
    """The worker whose token this is; a token unknown or revoked counts against the
    client's address, and an address that has guessed too often is refused (429) before
    the token is looked up (shared/throttle.py)."""
    state = request.app.state
    throttle: AddressThrottle = state.settings.api_key_throttle
    address, now = client_address(request), state.clock.now()
    try:
        async with state.pool.acquire() as conn:
            await throttle.refuse_if_blocked(conn, address, now)
            worker = await repo.worker_by_token(conn, digest)
            if worker is None:
                # Tokens this address had found good are checked again from now on, so a
                # block that this failure may complete applies to them too.
                state.recent_tokens.forget_address(address)
                await throttle.record_failure(conn, address, now)
    except TooManyFailures as over:
        raise over.http(TOO_MANY_TOKENS) from None
    if worker is None:
        raise bad_token()
    return worker


TOO_MANY_TOKENS = "Too many requests with unknown or revoked tokens from your address."


def bad_token() -> HTTPException:
    return HTTPException(
        401,
        "Send a valid worker token: Authorization: Bearer <token>.",
        headers={"WWW-Authenticate": "Bearer"},
    )


# How long a token found valid is taken as valid by the intake submission endpoint before
# its body is even read. That is all it decides: a submission checks its token again in the
# transaction that writes (services/intake/handlers.py, submit_intake), so a revoked token
# or a disabled worker never submits nor sees anything. For these seconds after the check
# in the database that found it valid, a revoked token can only be told that its body is
# invalid (a 422) where it would otherwise get its 401 first.
RECENT_TOKEN_S = 10.0
RECENT_TOKENS_KEPT = 1024


class RecentTokens:
    """Token digests found valid in the last RECENT_TOKEN_S, with their worker and the
    address that presented them: another address is checked in the database (and by the
    throttle) as if the token were new. Only successes are kept (a new token works at once)
    and only so many (random guesses cannot grow it)."""

    def __init__(
        self,
        ttl_s: float = RECENT_TOKEN_S,
        size: int = RECENT_TOKENS_KEPT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl_s = ttl_s
        self._size = size
        self._clock = clock
        self._found: dict[bytes, tuple[float, str, asyncpg.Record]] = {}

    def get(self, digest: bytes, address: str) -> asyncpg.Record | None:
        found = self._found.get(digest)
        if found is None or found[1] != address or self._clock() - found[0] > self._ttl_s:
            return None
        return found[2]

    def forget(self, digest: bytes) -> None:
        self._found.pop(digest, None)

    def forget_address(self, address: str) -> None:
        for digest in [d for d, (_, by, _) in self._found.items() if by == address]:
            del self._found[digest]

    def put(self, digest: bytes, address: str, worker: asyncpg.Record) -> None:
        self._found.pop(digest, None)
        if len(self._found) >= self._size:
            del self._found[next(iter(self._found))]  # the longest kept
        self._found[digest] = (self._clock(), address, worker)


@dataclass(frozen=True)
class TokenCaller:
    worker: asyncpg.Record
    token_digest: bytes  # for the transaction's own check of the token


async def _submitting_worker(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> TokenCaller:
    if credentials is None:
        raise bad_token()
    digest = token_digest(credentials.credentials)
    recent: RecentTokens = request.app.state.recent_tokens
    address = client_address(request)
    worker = recent.get(digest, address)
    if worker is None:
        worker = await _worker_of_token(request, digest)
        recent.put(digest, address, worker)
    return TokenCaller(worker, digest)


Worker = Annotated[asyncpg.Record, Depends(_session_worker)]
Admin = Annotated[asyncpg.Record, Depends(_admin)]
ApiWorker = Annotated[asyncpg.Record, Depends(_token_worker)]
# The intake submission endpoint only: see RECENT_TOKEN_S.
ApiSubmitter = Annotated[TokenCaller, Depends(_submitting_worker)]
CsrfForm = Annotated[FormValues, Depends(_checked_form)]


class TooManyAttempts(Exception):
    pass


async def authenticate(request: Request, email: str, password: str) -> asyncpg.Record | None:
    """The worker these credentials belong to, or None. Raises TooManyAttempts while the
    account or the client address has failed too often in the window, before checking the
    password, so guessing cannot go on."""
    state = request.app.state
    settings, now = state.settings, state.clock.now()
    account = email.strip().lower()
    address = client_address(request)
    since = now - timedelta(seconds=settings.login_window_s)
    async with state.pool.acquire() as conn, conn.transaction():
        # One account's attempts take turns, so parallel guesses cannot all pass the count.
        await repo.lock_login(conn, account)
        by_account, by_address = await repo.login_failures_since(conn, account, address, since)
        if (
            by_account >= settings.login_max_failures_per_account
            or by_address >= settings.login_max_failures_per_address
        ):
            raise TooManyAttempts
        worker = await repo.worker_by_email(conn, account)
        password_hash = worker["password_hash"] if worker else None
        # argon2 is deliberately slow: keep it off the event loop.
        if await asyncio.to_thread(verify_password, password_hash, password):
            await repo.forget_login_failures(conn, account, since)
            return worker
        await repo.record_login_failure(conn, account, address, now)
        return None
