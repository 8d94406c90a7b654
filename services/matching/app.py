"""The matching service: a Faust-streaming worker.

Agents only turn each Kafka record into a RawMessage and hand it to the shared processing
rule (decode, handler with retries, DLQ with the reason); the state machine lives in
handlers.py. Processing is at-least-once; the inbox makes it effectively-once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine, Mapping, Sequence
from datetime import timedelta
from functools import partial
from typing import Any

import aiokafka
import faust
from aiokafka import AIOKafkaProducer
from faust.transport.drivers import aiokafka as faust_aiokafka

from services.matching import repository as repo
from services.matching.geo import load_centroids
from services.matching.handlers import (
    AGENCIES_CONSUMER,
    CAPACITY_CONSUMER,
    CONSENTS_CONSUMER,
    NEEDS_CONSUMER,
    RESPONSES_CONSUMER,
    Deps,
    handle_agency_profile,
    handle_agency_removed,
    handle_capacity_update,
    handle_consent_event,
    handle_need_submitted,
    handle_needs_submitted,
    handle_offer_response,
)
from services.matching.settings import MatchingSettings
from shared.clock import Clock, clock_for
from shared.cloudevents import PoisonMessage, decode
from shared.db import create_pool
from shared.health import HealthServer, Probe, health_app, partition_lags
from shared.kafka import (
    DeadLetters,
    RawMessage,
    ensure_topics,
    kafka_security,
    make_producer,
    process_batch,
    process_record,
    read_to_end,
    wait_until_ready,
)
from shared.outbox import OutboxRelay
from shared.topics import (
    AGENCIES,
    CAPACITY_UPDATES,
    CONSENT_EVENTS,
    NEEDS,
    OFFER_RESPONSES,
    TopicSpec,
    agency_offers,
)

log = logging.getLogger(__name__)
SCHEMA = "matching"
# The Faust app id: matching's consumer group, and the prefix of Faust's own topics (the
# leader-election topic). The Kafka ACLs name both (services/kafka_init.py).
APP_ID = "refnet-matching"


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # Faust fixes the fetch wait at 1.5 s, which on the embedded broker is added to
        # every need's latency; aiokafka reads it when the consumer starts, after this.
        consumer._fetch_max_wait_ms = self.app.refnet_settings.kafka_fetch_max_wait_ms
        return consumer


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _Transport(faust_aiokafka.Transport):
    """Faust's aiokafka transport with the fetch wait of KAFKA_FETCH_MAX_WAIT_MS."""

    Consumer = _Consumer


class MatchingApp(faust.App):
    """Builds the Postgres pool, the producer and the outbox relay before its agents run."""

    def __init__(self, settings: MatchingSettings, clock: Clock, **options: Any) -> None:
        super().__init__(**options)
        self.refnet_settings = settings
        self.clock = clock
        self.deps: Deps | None = None
        self.dead_letters: DeadLetters | None = None
        self._relay_producer: AIOKafkaProducer | None = None
        self._relay_task: asyncio.Task[None] | None = None
        self._agency_topics: set[str] = set()
        self.probe = Probe(
            "matching", settings.ready_max_outbox_backlog, settings.ready_max_consumer_lag
        )
        self.probe.consumer = FaustConsumerProbe(self)
        self._health: HealthServer | None = None

    def _new_transport(self) -> faust.types.TransportT:
        return _Transport(self.conf.broker_consumer, self)

    async def on_start(self) -> None:
        await super().on_start()
        settings = self.refnet_settings
        # Health first: /healthz and /readyz (503) answer while Postgres or Kafka is awaited.
        self._health = HealthServer(
            health_app(self.probe, "refnet matching"), settings.http_host, settings.http_port
        )
        await self._health.start()
        pool = None

        async def connect() -> None:
            nonlocal pool
            pool = await create_pool(settings.database_url, SCHEMA)

        await wait_until_ready("Postgres", connect)
        assert pool is not None
        self.probe.pool = pool
        self._relay_producer = make_producer(settings, "matching")
        await wait_until_ready("Kafka producer", self._relay_producer.start)
        self.probe.producer = self._relay_producer
        self.deps = Deps(pool, self.clock, settings, load_centroids(settings.postal_centroids_path))
        self.dead_letters = DeadLetters(self._relay_producer, "matching")
        relay = OutboxRelay(
            pool,
            self._relay_producer,
            settings.database_url,
            SCHEMA,
            settings.outbox_poll_interval_s,
            retention=timedelta(days=settings.outbox_retention_days),
        )
        self._relay_task = asyncio.create_task(relay.run(), name="matching-outbox")
        # Needs are matched against the directory, so its view must have caught up with
        # what the directory's owner published before the agents read the first need.
        await wait_until_ready("directory", lambda: self.catch_up_directory())

    async def on_stop(self) -> None:
        if self._health:
            await self._health.stop()
        if self._relay_task:
            self._relay_task.cancel()
            await asyncio.gather(self._relay_task, return_exceptions=True)
        if self._relay_producer:
            await self._relay_producer.stop()
        if self.deps:
            await self.deps.pool.close()
        await super().on_stop()

    async def catch_up_directory(self) -> int:
        """Read refnet.agencies.v1 from the start to its current end into matching's view.
        Applying a profile twice changes nothing (revisions), so the agent re-reading the
        same records afterwards is harmless."""
        assert self.deps is not None
        settings = self.refnet_settings
        await ensure_topics(
            settings.kafka_bootstrap_servers,
            [AGENCIES.name],
            settings.kafka_partitions,
            compacted={AGENCIES.name},
            security=kafka_security(settings),
        )
        records = 0
        pool = self.deps.pool

        async def view_is_current() -> bool:
            async with pool.acquire() as conn:
                return await repo.directory_view_current(conn)

        async for record in read_to_end(
            settings.kafka_bootstrap_servers,
            AGENCIES.name,
            view_is_current,
            security=kafka_security(settings),
        ):
            records += 1
            if record.value is None:
                await self.agency_removed(record.key)
                continue
            try:
                envelope = decode(AGENCIES, record.key, record.value, record.headers)
            except PoisonMessage:
                continue  # the agent dead-letters it with the reason
            await handle_agency_profile(self.deps, envelope)
        log.info("directory: caught up with %d record(s) of %s", records, AGENCIES.name)
        return records

    async def ensure_offers_topic(self, agency_id: str) -> None:
        """An agency's offer topic exists before its first offer, so it can subscribe early."""
        try:
            name = agency_offers(agency_id).name
        except ValueError:
            return  # not an agency id: the profile itself will be dead-lettered
        if name in self._agency_topics:
            return
        settings = self.refnet_settings
        await wait_until_ready(
            "Kafka admin",
            lambda: ensure_topics(
                settings.kafka_bootstrap_servers,
                [name],
                settings.kafka_partitions,
                security=kafka_security(settings),
            ),
        )
        self._agency_topics.add(name)

    async def agency_removed(self, key: bytes | None) -> None:
        assert self.deps is not None
        if key:
            await handle_agency_removed(self.deps, key.decode())

    async def process(self, spec: TopicSpec, event: faust.types.EventT, handler: Any) -> None:
        assert self.deps is not None and self.dead_letters is not None
        await process_record(
            spec,
            _raw(event),
            partial(handler, self.deps),
            self.dead_letters,
            max_attempts=self.refnet_settings.consumer_max_attempts,
        )

    async def process_batch(
        self,
        spec: TopicSpec,
        events: Sequence[faust.types.EventT],
        batch_handler: Any,
        handler: Any,
    ) -> None:
        assert self.deps is not None and self.dead_letters is not None
        await process_batch(
            spec,
            [_raw(event) for event in events],
            partial(batch_handler, self.deps),
            partial(handler, self.deps),
            self.dead_letters,
            max_attempts=self.refnet_settings.consumer_max_attempts,
        )


async def _finished(work: Coroutine[Any, Any, None]) -> None:
    """Run a batch to its end even when the worker is stopping: Faust acknowledges a batch's
    records as soon as the loop body is left, however it is left, so a batch cancelled
    half-way would be acknowledged without its effects. A worker killed outright
    acknowledges nothing, and the records come again."""
    task = asyncio.ensure_future(work)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise


def _raw(event: faust.types.EventT) -> RawMessage:
    message = event.message
    return RawMessage(
        message.topic,
        message.partition,
        message.offset,
        message.key,
        message.value,
        tuple(message.headers or ()),
    )


def broker_credentials(settings: MatchingSettings) -> faust.SASLCredentials | None:
    """Faust's form of the service's Kafka login (shared.kafka.kafka_security): it logs in
    as the same SCRAM user as matching's own producer; TLS when there is an SSL context."""
    security = kafka_security(settings)
    if not security:
        return None
    return faust.SASLCredentials(
        username=security["sasl_plain_username"],
        password=security["sasl_plain_password"],
        mechanism=security["sasl_mechanism"],
        ssl_context=security["ssl_context"],
    )


class FaustConsumerProbe:
    """Readiness of the worker's Faust consumer, from what the consumer already knows (no
    request through its thread, which answers only between fetches): its assignment of
    refnet topics (Faust's own leader topic left out) and, per partition, the high
    watermark of its last fetch minus the offset Faust last committed. A partition not yet
    fetched counts 0; one never committed counts from offset 0."""

    def __init__(self, app: faust.App) -> None:
        self._app = app

    def _refnet_tps(self) -> list[Any]:
        internal = f"{self._app.conf.id}-"
        return sorted(
            tp for tp in self._app.consumer.assignment() if not tp.topic.startswith(internal)
        )

    def assigned(self) -> list[tuple[str, int]]:
        return [(tp.topic, tp.partition) for tp in self._refnet_tps()]

    async def lag(self) -> dict[tuple[str, int], int]:
        consumer = self._app.consumer
        tps = self._refnet_tps()
        committed: Mapping[Any, int | None] = getattr(consumer, "_committed_offset", {})
        ends: dict[Any, int] = {}
        for tp in tps:
            with contextlib.suppress(Exception):  # reassigned meanwhile, or not fetched yet
                highwater = consumer.highwater(tp)
                if highwater is not None:
                    ends[tp] = highwater
        return partition_lags(tps, ends, committed, {})


def create_app(settings: MatchingSettings, clock: Clock | None = None) -> MatchingApp:
    app = MatchingApp(
        settings,
        clock or clock_for(settings.clock_offset_file),
        id=APP_ID,
        broker=f"kafka://{settings.kafka_bootstrap_servers}",
        broker_credentials=broker_credentials(settings),
        store="memory://",
        processing_guarantee="at_least_once",
        topic_replication_factor=1,
        topic_partitions=settings.kafka_partitions,
        broker_session_timeout=settings.kafka_session_timeout_s,
        broker_heartbeat_interval=max(settings.kafka_session_timeout_s / 5, 0.5),
        producer_acks=-1,
        web_enabled=False,
        datadir=str(settings.faust_datadir),
    )

    def raw_topic(spec: TopicSpec) -> faust.TopicT:
        return app.topic(spec.name, key_serializer="raw", value_serializer="raw", internal=False)

    # One agent per consumed topic; each one's group member processes its own partitions
    # in order, which co-partitioning by need_id makes per-need order for needs and answers.
    # Needs come in batches, handled in one transaction each (a batch that fails is handled
    # again one need at a time); Faust acknowledges a batch's records once it is handled.
    @app.agent(raw_topic(NEEDS), name=NEEDS_CONSUMER)
    async def needs(stream: faust.StreamT[bytes]) -> None:
        window = settings.needs_batch_window_ms / 1000
        async for events in stream.take_events(settings.needs_batch_max, within=window):
            await _finished(
                app.process_batch(NEEDS, events, handle_needs_submitted, handle_need_submitted)
            )

    @app.agent(raw_topic(OFFER_RESPONSES), name=RESPONSES_CONSUMER)
    async def responses(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            await app.process(OFFER_RESPONSES, event, handle_offer_response)

    # Keyed by person_ref, so not in step with the need's own topics: the handler's row
    # locks order a revocation against a need's other events.
    @app.agent(raw_topic(CONSENT_EVENTS), name=CONSENTS_CONSUMER)
    async def consents(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            await app.process(CONSENT_EVENTS, event, handle_consent_event)

    # The compacted directory: a profile replaces the agency's services, a tombstone (null
    # value) removes the agency.
    @app.agent(raw_topic(AGENCIES), name=AGENCIES_CONSUMER)
    async def agencies(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            if event.message.value is None:
                await app.agency_removed(event.message.key)
                continue
            if event.message.key:
                await app.ensure_offers_topic(event.message.key.decode())
            await app.process(AGENCIES, event, handle_agency_profile)

    @app.agent(raw_topic(CAPACITY_UPDATES), name=CAPACITY_CONSUMER)
    async def capacity(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            await app.process(CAPACITY_UPDATES, event, handle_capacity_update)

    return app
