"""`refnet directory import | export`: what an operator runs to load or take out the
directory, and the seeding the local stack does with the demo package."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import asyncpg

from services.matching.directory import owner
from services.matching.directory.package import read_package, write_package
from shared.clock import SystemClock
from shared.db import create_pool
from shared.kafka import ensure_topics, make_producer
from shared.outbox import OutboxRelay
from shared.settings import BaseServiceSettings
from shared.topics import agency_offers

log = logging.getLogger(__name__)
SCHEMA = "matching"
DEMO_PACKAGE = Path(__file__).parent / "demo"


class Connection(BaseServiceSettings):
    """Only what the directory commands need: where Postgres and Kafka are."""


async def import_directory(settings: BaseServiceSettings, path: Path) -> owner.ImportResult:
    """Check the package (PackageInvalid lists every problem), store it and queue the
    changed profiles, then create the agencies' offer topics and publish."""
    package = read_package(path)
    pool = await create_pool(settings.database_url, SCHEMA, max_size=2)
    try:
        async with pool.acquire() as conn, conn.transaction():
            result = await owner.import_package(conn, package, SystemClock())
        await publish_now(settings, pool)
    finally:
        await pool.close()
    return result


async def export_directory(
    settings: BaseServiceSettings, path: Path, fmt: Literal["csv", "json"]
) -> int:
    """Write the directory as imported (with capacity updates since); return its agencies."""
    pool = await create_pool(settings.database_url, SCHEMA, max_size=1)
    try:
        async with pool.acquire() as conn:
            package = await owner.export_package(conn)
    finally:
        await pool.close()
    write_package(package, path, fmt)
    return len(package.rows["organization"])


async def seed_if_empty(settings: BaseServiceSettings, path: Path = DEMO_PACKAGE) -> bool:
    pool = await create_pool(settings.database_url, SCHEMA, max_size=1)
    try:
        async with pool.acquire() as conn:
            empty = not await owner.agency_ids(conn)
    finally:
        await pool.close()
    if empty:
        result = await import_directory(settings, path)
        log.info("directory seeded from %s: %d agencies", path, len(result.published))
    return empty


async def publish_now(settings: BaseServiceSettings, pool: asyncpg.Pool) -> None:
    """Create every agency's offer topic, then drain the outbox: matching's relay would
    publish it too, but an operator wants to see the import land."""
    async with pool.acquire() as conn:
        names = [agency_offers(agency).name for agency in await owner.agency_ids(conn)]
    await ensure_topics(settings.kafka_bootstrap_servers, names, settings.kafka_partitions)
    producer = make_producer(settings, "refnet-directory")
    await producer.start()
    try:
        relay = OutboxRelay(
            pool, producer, settings.database_url, SCHEMA, settings.outbox_poll_interval_s
        )
        while await relay.publish_pending():
            pass
    finally:
        await producer.stop()
