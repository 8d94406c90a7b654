"""Matching's consumer, on a need's way to its offer, waits at the broker only as long as
KAFKA_FETCH_MAX_WAIT_MS says: the embedded broker holds a fetch for the whole wait, so it is
a floor under that hop's latency there (Faust fixes it at 1.5 s unless told). The consumers
of events that are off that way (intake's, notifications') let records gather for up to
KAFKA_BATCH_WAIT_MS instead, unless it is 0."""

from __future__ import annotations

from services.matching.app import create_app
from services.matching.settings import MatchingSettings
from shared.kafka import BATCH_FETCH_BYTES, make_consumer

SETTINGS = MatchingSettings(
    database_url="postgresql://unused",
    kafka_bootstrap_servers="127.0.0.1:9",
    kafka_fetch_max_wait_ms=20,
)


async def test_the_faust_worker_consumer_uses_the_setting() -> None:
    app = create_app(SETTINGS)

    consumer = app.consumer._thread._create_worker_consumer(app.transport)

    assert consumer._fetch_max_wait_ms == 20


async def test_the_services_own_consumers_gather_batches_unless_told_not_to() -> None:
    consumer = make_consumer(SETTINGS, "tests.group", "refnet.needs.v1")

    assert consumer._fetch_max_wait_ms == SETTINGS.kafka_batch_wait_ms == 250
    assert consumer._fetch_min_bytes == BATCH_FETCH_BYTES
    eager = SETTINGS.model_copy(update={"kafka_batch_wait_ms": 0})
    consumer = make_consumer(eager, "tests.group")
    assert (consumer._fetch_max_wait_ms, consumer._fetch_min_bytes) == (20, 1)
