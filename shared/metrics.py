"""Every refnet Prometheus metric, defined once. Each service process registers them all in
its own default registry and serves it at GET /metrics (shared/health.py); a service only
moves the ones about what it does.

Counters that count what a handler did are updated only once its transaction committed:
inside ``deferred()`` (the consume loop wraps each attempt at a record in it) an update
waits for the block to succeed and is dropped if it fails, so a retried record counts once.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

# The *_created series double every counter for little use here.
disable_created_metrics()  # type: ignore[no-untyped-call]

# --- intake ---------------------------------------------------------------------------------

NEEDS_SUBMITTED = Counter(
    "refnet_needs_submitted",
    "Needs recorded by intake and queued as NeedSubmitted (each need of each new intake).",
    ["category", "urgency"],
)

# --- matching -------------------------------------------------------------------------------

OFFERS_MADE = Counter(
    "refnet_offers_made",
    "Offers made to agencies: every attempt, and every agency of an urgent fan-out.",
    ["category", "urgency"],
)
# From minutes (urgent needs) to days (routine ones, whose deadline is 72 hours by default).
ACCEPTANCE_LATENCY_BUCKETS = (
    60.0, 300.0, 900.0, 1800.0, 3600.0, 2 * 3600.0, 4 * 3600.0, 8 * 3600.0, 12 * 3600.0,
    86400.0, 2 * 86400.0, 3 * 86400.0, 7 * 86400.0, 14 * 86400.0,
)  # fmt: skip
ACCEPTANCE_LATENCY = Histogram(
    "refnet_acceptance_latency_seconds",
    "Seconds from a need's first offer to an agency's acceptance (the service clock).",
    ["urgency"],
    buckets=ACCEPTANCE_LATENCY_BUCKETS,
)
DECLINES = Counter(
    "refnet_offer_declines",
    "Offers an agency declined, by the reason it gave.",
    ["reason"],
)
EXPIRIES = Counter(
    "refnet_offer_expiries",
    "Offers that expired unanswered (or were accepted after their deadline).",
    ["urgency"],
)
UNMATCHED = Counter(
    "refnet_needs_unmatched",
    "Needs reported unmatched: no eligible agency left, or every allowed attempt used.",
    ["category"],
)

# --- every service --------------------------------------------------------------------------

OUTBOX_BACKLOG = Gauge(
    "refnet_outbox_backlog",
    "Outbox rows not yet published to Kafka (measured at each scrape).",
    ["service"],
)
OUTBOX_REJECTED = Counter(
    "refnet_outbox_rejected",
    "Outbox rows the relay set aside because the broker can never take them (larger than "
    "the producer may send, say); each is logged with its reason and kept in the outbox "
    "with rejected_at set. Any at all is a bug to look into.",
    ["service"],
)
OUTBOX_PRUNED = Counter(
    "refnet_outbox_pruned",
    "Outbox rows the active relay deleted once they had been published longer than "
    "OUTBOX_RETENTION_DAYS ago; unpublished and set-aside rows are never deleted.",
    ["service"],
)
CONSUMER_LAG = Gauge(
    "refnet_consumer_lag",
    "Records on the service's assigned partitions not yet processed and committed, per "
    "topic (end offset minus committed offset, measured at each scrape).",
    ["service", "topic"],
)
BATCH_RECORDS = Histogram(
    "refnet_consumer_batch_records",
    "Records a consumer's batch handler handled together in one call that succeeded, by "
    "topic and consumer: how far a consumer amortises its commits and round trips (1s at "
    "low load, up to the batch limit when it catches up). A batch that failed and was "
    "handled again one record at a time is not counted.",
    ["topic", "consumer"],
    buckets=(1, 2, 5, 10, 20, 50, 100, 200),
)
DLQ_MESSAGES = Counter(
    "refnet_dlq_messages",
    "Records a consumer gave up on and wrote to <topic>.dlq, by the topic they came from.",
    ["topic", "consumer"],
)

# --- notifications --------------------------------------------------------------------------

REMINDERS_DUE = Gauge(
    "refnet_reminders_due",
    "Scheduled jobs (messages, reminders, webhook calls, offer deadlines) pending and due "
    "now, by kind (measured at each scrape).",
    ["kind"],
)
REMINDERS_SENT = Counter(
    "refnet_reminders_sent",
    "Scheduled messages delivered (emails, texts, webhook calls), by channel and job kind.",
    ["channel", "kind"],
)
REMINDERS_FAILED = Counter(
    "refnet_reminders_failed",
    "Attempts to deliver a scheduled message that failed, by channel and job kind.",
    ["channel", "kind"],
)


def exposition() -> tuple[bytes, str]:
    """This process's registry in the Prometheus text format, and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


# --- updates that wait for the transaction ----------------------------------------------------

_pending: contextvars.ContextVar[list[Callable[[], None]] | None] = contextvars.ContextVar(
    "refnet_pending_metrics", default=None
)


def record(update: Callable[[], None]) -> None:
    """Apply ``update`` now, or when the enclosing ``deferred()`` block succeeds."""
    pending = _pending.get()
    if pending is None:
        update()
    else:
        pending.append(update)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold ``record``ed updates until the block succeeds; drop them if it raises."""
    pending: list[Callable[[], None]] = []
    token = _pending.set(pending)
    try:
        yield
    finally:
        _pending.reset(token)
    for update in pending:  # reached only on success; an outer block may hold them again
        record(update)
