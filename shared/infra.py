"""Choose where Postgres and Kafka come from, in this order:

1. explicit settings: DATABASE_URL, KAFKA_BOOTSTRAP_SERVERS;
2. testcontainers, only when a Docker engine answers;
3. embedded: pgserver's Postgres and the Tansu broker, on 127.0.0.1.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.embedded import EmbeddedKafka, EmbeddedPostgres, free_port

log = logging.getLogger(__name__)

POSTGRES_IMAGE = "postgres:16.4-alpine"
KAFKA_IMAGE = "confluentinc/cp-kafka:7.7.1"


@dataclass
class Infrastructure:
    database_url: str
    kafka_bootstrap_servers: str
    postgres_source: str
    kafka_source: str
    _stops: list[Callable[[], Any]] = field(default_factory=list)
    # The embedded servers, when they are embedded: fault-injection tests stop, restart or
    # pause them (tests/reliability).
    postgres: EmbeddedPostgres | None = None
    kafka: EmbeddedKafka | None = None

    @property
    def kafka_is_embedded(self) -> bool:
        return self.kafka_source == "embedded"

    def stop(self) -> None:
        for stop in reversed(self._stops):
            try:
                stop()
            except Exception:  # keep stopping the rest; report what failed
                log.exception("failed to stop infrastructure")
        self._stops.clear()


def docker_engine_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=2).ping()
        return True
    except Exception:
        return False


def provision(
    run_dir: Path,
    *,
    env: Mapping[str, str] = os.environ,
    postgres_port: int | None = None,
    kafka_port: int | None = None,
) -> Infrastructure:
    run_dir.mkdir(parents=True, exist_ok=True)
    stops: list[Callable[[], Any]] = []
    embedded: dict[str, Any] = {}
    use_docker = not (env.get("DATABASE_URL") and env.get("KAFKA_BOOTSTRAP_SERVERS")) and (
        docker_engine_answers()
    )
    try:
        database_url, pg_source = _postgres(
            run_dir, env, use_docker, postgres_port, stops, embedded
        )
        bootstrap, kafka_source = _kafka(run_dir, env, use_docker, kafka_port, stops, embedded)
    except BaseException:
        for stop in reversed(stops):
            stop()
        raise
    return Infrastructure(
        database_url,
        bootstrap,
        pg_source,
        kafka_source,
        stops,
        postgres=embedded.get("postgres"),
        kafka=embedded.get("kafka"),
    )


def _postgres(
    run_dir: Path,
    env: Mapping[str, str],
    use_docker: bool,
    port: int | None,
    stops: list[Callable[[], Any]],
    embedded: dict[str, Any],
) -> tuple[str, str]:
    if env.get("DATABASE_URL"):
        return env["DATABASE_URL"], "explicit"
    if use_docker:
        from testcontainers.postgres import PostgresContainer

        container = PostgresContainer(POSTGRES_IMAGE, driver=None)
        container.start()
        stops.append(container.stop)
        return container.get_connection_url(), "testcontainers"
    pg = EmbeddedPostgres(run_dir / "pgdata", port or free_port())
    pg.start()
    stops.append(pg.stop)
    embedded["postgres"] = pg
    return pg.url, "embedded"


def _kafka(
    run_dir: Path,
    env: Mapping[str, str],
    use_docker: bool,
    port: int | None,
    stops: list[Callable[[], Any]],
    embedded: dict[str, Any],
) -> tuple[str, str]:
    if env.get("KAFKA_BOOTSTRAP_SERVERS"):
        return env["KAFKA_BOOTSTRAP_SERVERS"], "explicit"
    if use_docker:
        from testcontainers.kafka import KafkaContainer

        container = KafkaContainer(KAFKA_IMAGE).with_kraft()
        container.start()
        stops.append(container.stop)
        return container.get_bootstrap_server(), "testcontainers"
    broker = EmbeddedKafka(run_dir, port or free_port())
    broker.start()
    stops.append(broker.stop)
    embedded["kafka"] = broker
    return broker.bootstrap_servers, "embedded"
