"""The inbox makes an at-least-once consumer effectively-once: a row keyed (consumer, event
id) is inserted in the same transaction as the effect, and a clash means "already done"."""

from __future__ import annotations

import asyncpg

from shared.cloudevents import Envelope


async def first_delivery(conn: asyncpg.Connection, consumer: str, envelope: Envelope) -> bool:
    """Record the event as processed by ``consumer``; False if it already was. CloudEvents
    ids are unique per source only, and some topics have several producers."""
    inserted = await conn.fetchval(
        "INSERT INTO inbox (consumer, event_id) VALUES ($1, $2) "
        "ON CONFLICT DO NOTHING RETURNING true",
        consumer,
        f"{envelope.source} {envelope.id}",
    )
    return bool(inserted)
