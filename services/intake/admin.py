"""Administration of the intake service from the command line: worker accounts, API tokens
and re-sealing identifiers after a key rotation."""

from __future__ import annotations

from uuid import uuid4

from services.intake import repository as repo
from services.intake.handlers import reseal_all
from services.intake.security import PiiCipher, new_api_token
from shared.db import create_pool
from shared.passwords import hash_password

SCHEMA = "intake"
ROLES = ("intake_worker", "admin")
MIN_PASSWORD_LENGTH = 12


class AdminError(Exception):
    """A refusal the operator can act on; its message says what to do."""


async def add_user(database_url: str, email: str, name: str, role: str, password: str) -> None:
    if role not in ROLES:
        raise AdminError(f"role must be one of {', '.join(ROLES)}")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AdminError(f"choose a password of at least {MIN_PASSWORD_LENGTH} characters")
    pool = await create_pool(database_url, SCHEMA, max_size=1)
    try:
        async with pool.acquire() as conn:
            await repo.upsert_worker(conn, uuid4(), email, name, hash_password(password), role)
    finally:
        await pool.close()


async def disable_user(database_url: str, email: str) -> None:
    pool = await create_pool(database_url, SCHEMA, max_size=1)
    try:
        async with pool.acquire() as conn, conn.transaction():
            if not await repo.set_worker_active(conn, email, active=False):
                raise AdminError(f"no worker with email {email}")
    finally:
        await pool.close()


async def issue_token(database_url: str, email: str, label: str) -> str:
    pool = await create_pool(database_url, SCHEMA, max_size=1)
    try:
        async with pool.acquire() as conn:
            worker = await repo.worker_by_email(conn, email)
            if worker is None:
                raise AdminError(f"no active worker with email {email}")
            token, digest = new_api_token()
            await repo.insert_token(conn, digest, worker["worker_id"], label)
            return token
    finally:
        await pool.close()


async def reseal(database_url: str, keys: list[str]) -> int:
    pool = await create_pool(database_url, SCHEMA, max_size=1)
    try:
        return await reseal_all(pool, PiiCipher(keys))
    finally:
        await pool.close()
