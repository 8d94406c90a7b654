"""The inbox makes an at-least-once consumer effectively-once: a row keyed (consumer, event
id) is inserted in the same transaction as the effect, and a clash means "already done"."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from shared.cloudevents import Envelope


def inbox_id(envelope: Envelope) -> str:
    """CloudEvents ids are unique per source only, and some topics have several producers."""
    return f"{envelope.source} {envelope.id}"


async def first_delivery(conn: asyncpg.Connection, consumer: str, envelope: Envelope) -> bool:
    """Record the event as processed by ``consumer``; False if it already was."""
    return (await first_deliveries(conn, consumer, [envelope]))[0]


async def first_deliveries(
    conn: asyncpg.Connection, consumer: str, envelopes: Sequence[Envelope]
) -> list[bool]:
    """``first_delivery`` for a batch in one statement: True for each envelope seen for the
    first time, False for one already processed or earlier in the same batch."""
    ids = [inbox_id(envelope) for envelope in envelopes]
    inserted = set(
        await conn.fetchval(
            "WITH fresh AS (INSERT INTO inbox (consumer, event_id) SELECT $1, unnest($2::text[]) "
            "ON CONFLICT DO NOTHING RETURNING event_id) SELECT coalesce(array_agg(event_id), "
            "'{}') FROM fresh",
            consumer,
            ids,
        )
    )
    firsts = []
    for event_id in ids:
        firsts.append(event_id in inserted)
        inserted.discard(event_id)  # a repeat later in the batch is not a first delivery
    return firsts
