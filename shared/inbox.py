"""The inbox makes an at-least-once consumer effectively-once: a row keyed (consumer, event
id) is inserted in the same transaction as the effect, and a clash means "already done"."""

from __future__ import annotations

import asyncpg


async def first_delivery(conn: asyncpg.Connection, consumer: str, event_id: str) -> bool:
    """Record the event as processed by ``consumer``; False if it already was."""
    inserted = await conn.fetchval(
        "INSERT INTO inbox (consumer, event_id) VALUES ($1, $2) "
        "ON CONFLICT DO NOTHING RETURNING true",
        consumer,
        event_id,
    )
    return bool(inserted)
