"""The start-up and shutdown every web service with an outbox and a consumer shares (intake,
notifications): Postgres, then the producer, the consumer, the outbox relay and the consume
loop, each waited for while it is down and reported on /readyz; shutdown in reverse."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import timedelta
from typing import Any

import asyncpg

from shared.db import create_pool
from shared.health import AiokafkaConsumerProbe, Probe
from shared.kafka import (
    BatchHandler,
    DeadLetters,
    Handler,
    cancel_and_wait,
    consume,
    make_consumer,
    make_producer,
    wait_until_ready,
)
from shared.outbox import OutboxRelay
from shared.settings import BaseServiceSettings
from shared.topics import TopicSpec


class ServiceLifecycle:
    def __init__(self, name: str, settings: BaseServiceSettings, schema: str, probe: Probe):
        self.name = name
        self.settings = settings
        self.schema = schema
        self.probe = probe
        self._stops: list[Callable[[], Awaitable[None]]] = []
        self._tasks: list[asyncio.Task[None]] = []

    def on_stop(self, stop: Callable[[], Awaitable[None]]) -> None:
        """Run at shutdown, after what was registered later."""
        self._stops.append(stop)

    def spawn(self, work: Coroutine[Any, Any, None], what: str) -> None:
        self._tasks.append(asyncio.create_task(work, name=f"{self.name}-{what}"))

    async def postgres(self) -> asyncpg.Pool:
        pool = None

        async def connect() -> None:
            nonlocal pool
            pool = await create_pool(self.settings.database_url, self.schema)

        await wait_until_ready("Postgres", connect)
        assert pool is not None
        self.on_stop(pool.close)
        self.probe.pool = pool
        return pool

    async def kafka(
        self,
        pool: asyncpg.Pool,
        group: str,
        topics: Sequence[TopicSpec],
        handler: Handler,
        batch_handler: BatchHandler | None = None,
    ) -> None:
        """The producer and the outbox relay, then the consumer of ``topics`` in ``group``
        (the records of a topic that one fetch brings handled together by ``batch_handler``
        when there is one)."""
        producer = make_producer(self.settings, self.name)
        # Registered before starting: a shutdown while Kafka is down still closes them.
        self.on_stop(producer.stop)
        await wait_until_ready("Kafka producer", producer.start)
        self.probe.producer = producer
        consumer = make_consumer(self.settings, group, *(spec.name for spec in topics))
        self.on_stop(consumer.stop)
        await wait_until_ready("Kafka consumer", consumer.start)
        self.probe.consumer = AiokafkaConsumerProbe(consumer)
        relay = OutboxRelay(
            pool,
            producer,
            self.settings.database_url,
            self.schema,
            self.settings.outbox_poll_interval_s,
            retention=timedelta(days=self.settings.outbox_retention_days),
        )
        self.spawn(relay.run(), "outbox")
        dead_letters = DeadLetters(producer, group)
        max_attempts = self.settings.consumer_max_attempts
        self.spawn(
            consume(
                consumer,
                topics,
                handler,
                dead_letters,
                max_attempts=max_attempts,
                handle_batch=batch_handler,
            ),
            "consumer",
        )

    async def stop(self, startup: asyncio.Task[None]) -> None:
        self.probe.accepting = False
        await cancel_and_wait(startup, *self._tasks)
        for stop in reversed(self._stops):
            with contextlib.suppress(Exception):
                await stop()
