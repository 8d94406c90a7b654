"""Postgres plumbing: each service owns one schema, migrated with yoyo, used through asyncpg."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import psycopg
from psycopg import sql
from yoyo import get_backend, read_migrations

log = logging.getLogger(__name__)

SHARED_MIGRATIONS = Path(__file__).parent / "migrations"


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """What a connection needs on its way back to the pool beyond what asyncpg always does
    (roll back an open transaction, drop listeners): nothing. asyncpg's default also sends
    RESET ALL, UNLISTEN, CLOSE ALL and unlocks session advisory locks, a round trip per
    release; refnet leaves none of those on a pooled connection (its settings are given at
    connect, its locks are transaction-scoped; the outbox relay listens and holds its lock on a
    connection of its own)."""


async def connect(
    database_url: str, schema: str, application_name: str, **settings: str
) -> asyncpg.Connection:
    """A connection of its own (not pooled) that sees the service's schema, as pooled ones
    do; ``settings`` are further server settings for its session."""
    conn = await asyncpg.connect(
        database_url,
        server_settings={"search_path": schema, "application_name": application_name, **settings},
    )
    await _init_connection(conn)
    return conn


async def create_pool(database_url: str, schema: str, *, max_size: int = 10) -> asyncpg.Pool:
    """A pool whose connections see only the service's own schema by default."""
    pool = await asyncpg.create_pool(
        database_url,
        min_size=1,
        max_size=max_size,
        server_settings={"search_path": schema, "application_name": f"refnet-{schema}"},
        init=_init_connection,
        reset=_keep_session,
    )
    assert pool is not None
    return pool


def migrate(database_url: str, schema: str, migrations_dir: Path) -> list[str]:
    """Apply the shared and the service's own migrations to its schema; return what ran."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    backend = get_backend(_yoyo_url(database_url, schema))
    migrations = read_migrations(str(SHARED_MIGRATIONS), str(migrations_dir))
    with backend.lock():
        pending = backend.to_apply(migrations)
        backend.apply_migrations(pending)
    applied = [m.id for m in pending]
    if applied:
        log.info("migrated schema %s: %s", schema, ", ".join(applied))
    return applied


def _yoyo_url(database_url: str, schema: str) -> str:
    parts = urlsplit(database_url)
    scheme = "postgresql+psycopg"
    query = "&".join(q for q in (parts.query, f"schema={schema}") if q)
    return urlunsplit((scheme, parts.netloc, parts.path, query, parts.fragment))
