"""Every consumer waits at the broker only as long as KAFKA_FETCH_MAX_WAIT_MS says: the
embedded broker holds a fetch for the whole wait, so it is a floor under every hop's
latency there (Faust's own consumer included, which fixes it at 1.5 s unless told)."""

from __future__ import annotations

from services.matching.app import create_app
from services.matching.settings import MatchingSettings
from shared.kafka import make_consumer

SETTINGS = MatchingSettings(
    database_url="postgresql://unused",
    kafka_bootstrap_servers="127.0.0.1:9",
    kafka_fetch_max_wait_ms=20,
)


async def test_the_faust_worker_consumer_uses_the_setting() -> None:
    app = create_app(SETTINGS)

    consumer = app.consumer._thread._create_worker_consumer(app.transport)

    assert consumer._fetch_max_wait_ms == 20


async def test_the_services_own_consumers_use_the_setting() -> None:
    consumer = make_consumer(SETTINGS, "tests.group", "refnet.needs.v1")

    assert consumer._fetch_max_wait_ms == 20
    default = SETTINGS.model_copy(update={"kafka_fetch_max_wait_ms": 500})
    assert make_consumer(default, "tests.group")._fetch_max_wait_ms == 500
