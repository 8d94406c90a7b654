"""Kafka plumbing shared by every service: client factories, topic creation, the dead-letter
queue and the one rule for processing a record.

The rule: decode against the topic's contract (a record that can never decode goes to the
DLQ at once); run the handler, retrying transient infrastructure failures until they pass
and other failures a few times; then dead-letter it with the reason and move on. Offsets
are committed only after that, so nothing is silently dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    AuthenticationFailedError,
    AuthenticationMethodNotSupported,
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    KafkaError,
    SaslAuthenticationFailed,
    TopicAlreadyExistsError,
    TopicAuthorizationFailedError,
    UnsupportedSaslMechanismError,
    for_code,
)
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_delay,
    wait_exponential_jitter,
)

from shared import metrics, tracing
from shared.cloudevents import Envelope, PoisonMessage, decode
from shared.logs import log_context
from shared.settings import BaseServiceSettings, KafkaClientSettings
from shared.topics import DLQ_SUFFIX, TopicSpec

log = logging.getLogger(__name__)

Handler = Callable[[Envelope], Awaitable[None]]

# Failures that say "the world is not ready", not "this message is bad": retried until they
# pass, never dead-lettered.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    # What sessions in flight get when Postgres shuts down or the connection drops mid-query.
    asyncpg.AdminShutdownError,
    asyncpg.InternalClientError,
    # Two transactions each waiting for the other (a batch of needs and an answer both
    # taking places): Postgres rolls one back, and trying it again is all it needs.
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
    KafkaConnectionError,
)


@dataclass(frozen=True)
class RawMessage:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]] = field(default_factory=tuple)


def kafka_security(settings: KafkaClientSettings) -> dict[str, Any]:
    """aiokafka keyword arguments for how the client authenticates: none for PLAINTEXT (the
    embedded broker), else the SASL login, with TLS for SASL_SSL. Every refnet client takes
    them: producers, consumers (and so the DLQ writers), the admin client, Faust."""
    if not settings.kafka_uses_sasl:
        return {}
    assert settings.kafka_sasl_password is not None  # the settings refuse SASL without it
    context = None
    if settings.kafka_security_protocol == "SASL_SSL":
        cafile = str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None
        context = ssl.create_default_context(cafile=cafile)
    return {
        "security_protocol": settings.kafka_security_protocol,
        "sasl_mechanism": settings.kafka_sasl_mechanism,
        "sasl_plain_username": settings.kafka_sasl_username,
        "sasl_plain_password": settings.kafka_sasl_password.get_secret_value(),
        "ssl_context": context,
    }


def make_producer(settings: BaseServiceSettings, client_id: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        client_id=client_id,
        acks="all",
        enable_idempotence=settings.kafka_enable_idempotence,
        linger_ms=5,
        **kafka_security(settings),
    )


# How much a batching consumer's fetch waits for (see kafka_batch_wait_ms): some 60 events.
BATCH_FETCH_BYTES = 64 * 1024


def make_consumer(settings: BaseServiceSettings, group_id: str, *topics: str) -> AIOKafkaConsumer:
    """A service's consumer of the events it follows (intake's status events, notifications'),
    batching as KAFKA_BATCH_WAIT_MS says; matching's Faust consumer is not one of these."""
    session_ms = int(settings.kafka_session_timeout_s * 1000)
    batching = settings.kafka_batch_wait_ms > 0
    wait_ms = settings.kafka_batch_wait_ms if batching else settings.kafka_fetch_max_wait_ms
    return AIOKafkaConsumer(
        *topics,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=group_id,
        client_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=wait_ms,
        fetch_min_bytes=BATCH_FETCH_BYTES if batching else 1,
        session_timeout_ms=session_ms,
        heartbeat_interval_ms=max(session_ms // 3, 100),
        **kafka_security(settings),
    )


async def ensure_topics(
    bootstrap_servers: str,
    names: Sequence[str],
    partitions: int,
    replication: int = 1,
    compacted: Collection[str] = (),
    *,
    security: Mapping[str, Any] | None = None,
) -> list[str]:
    """Create the topics that don't exist yet (those in ``compacted`` with log compaction);
    return the names created. ``security``: ``kafka_security(settings)`` on a broker that
    wants a login. A topic the broker refuses (no ACL to create it, say) raises."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers, client_id="refnet-admin", **(security or {})
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [name for name in dict.fromkeys(names) if name not in existing]
        if missing:
            # Another process may win the race; the topic is there, which is all we need.
            with contextlib.suppress(TopicAlreadyExistsError):
                response = await admin.create_topics(
                    [
                        NewTopic(
                            name, partitions, replication, topic_configs=_configs(name, compacted)
                        )
                        for name in missing
                    ]
                )
                _raise_topic_errors(response)
        return missing
    finally:
        await admin.close()


def _raise_topic_errors(response: Any) -> None:
    """aiokafka returns per-topic errors instead of raising them: an authorization failure
    would otherwise pass for a created topic."""
    for topic, code, *message in getattr(response, "topic_errors", ()):
        if code not in (0, TopicAlreadyExistsError.errno):
            detail = message[0] if message and message[0] else ""
            raise for_code(code)(f"creating topic {topic}: {detail}".rstrip(": "))


def _configs(name: str, compacted: Collection[str]) -> dict[str, str]:
    return {"cleanup.policy": "compact"} if name in compacted else {}


def topics_with_dlqs(specs: Sequence[TopicSpec]) -> list[str]:
    return [name for spec in specs for name in (spec.name, spec.dlq)]


def compacted_names(specs: Sequence[TopicSpec]) -> set[str]:
    return {spec.name for spec in specs if spec.compacted}


class DeadLetters:
    """Writes a record that could not be processed to ``<topic>.dlq`` with the reason."""

    def __init__(self, producer: AIOKafkaProducer, consumer_name: str) -> None:
        self._producer = producer
        self.consumer_name = consumer_name

    async def send(self, raw: RawMessage, reason: str) -> None:
        """Retried until the broker takes it: moving past a record that is neither
        processed nor dead-lettered would lose it."""
        log.error("dead-lettering %s[%d]@%d: %s", raw.topic, raw.partition, raw.offset, reason)
        headers = [*raw.headers] + [
            ("dlq_reason", reason.encode()),
            ("dlq_consumer", self.consumer_name.encode()),
            ("dlq_topic", raw.topic.encode()),
            ("dlq_partition", str(raw.partition).encode()),
            ("dlq_offset", str(raw.offset).encode()),
        ]
        async for attempt in AsyncRetrying(
            wait=wait_exponential_jitter(initial=0.5, max=30),
            before_sleep=lambda s: log.warning("DLQ write failed, retrying: %s", _error(s)),
        ):
            with attempt:
                await self._producer.send_and_wait(
                    raw.topic + DLQ_SUFFIX, key=raw.key, value=raw.value or b"", headers=headers
                )
        metrics.DLQ_MESSAGES.labels(raw.topic, self.consumer_name).inc()


def _error(state: RetryCallState) -> BaseException | None:
    return state.outcome.exception() if state.outcome else None


def _give_up(max_attempts: int) -> Callable[[RetryCallState], bool]:
    def stop(state: RetryCallState) -> bool:
        exc = _error(state)
        if isinstance(exc, PoisonMessage):
            return True  # retrying cannot make it valid
        return not isinstance(exc, TRANSIENT_ERRORS) and state.attempt_number >= max_attempts

    return stop


@contextlib.contextmanager
def _record_context(raw: RawMessage, consumer: str) -> Iterator[None]:
    with (
        log_context(topic=raw.topic, partition=raw.partition, offset=raw.offset, consumer=consumer),
        tracing.span(f"{raw.topic} process", tracing.from_headers(raw.headers)),
    ):
        yield


def _event_context(envelope: Envelope) -> contextlib.AbstractContextManager[None]:
    return log_context(event_id=envelope.id, need_id=getattr(envelope.event, "need_id", None))


async def process_record(
    spec: TopicSpec,
    raw: RawMessage,
    handle: Handler,
    dead_letters: DeadLetters,
    *,
    max_attempts: int,
) -> None:
    """While the record is handled, every log line carries its topic, partition and offset
    (then its event id and need id, once decoded) and the trace its traceparent continues;
    events the handler produces carry a child of that trace."""
    with _record_context(raw, dead_letters.consumer_name):
        await _process_record(spec, raw, handle, dead_letters, max_attempts=max_attempts)


async def _process_record(
    spec: TopicSpec,
    raw: RawMessage,
    handle: Handler,
    dead_letters: DeadLetters,
    *,
    max_attempts: int,
) -> None:
    try:
        envelope = decode(spec, raw.key, raw.value, raw.headers)
    except PoisonMessage as exc:
        await dead_letters.send(raw, str(exc))
        return
    with _event_context(envelope):
        try:
            async for attempt in AsyncRetrying(
                stop=_give_up(max_attempts),
                wait=wait_exponential_jitter(initial=0.2, max=10),
                reraise=True,
            ):
                # Metrics the handler records count only if this attempt succeeds.
                with attempt, metrics.deferred():
                    await handle(envelope)
        except PoisonMessage as exc:
            await dead_letters.send(raw, str(exc))
        except Exception as exc:  # the handler's bug or a rule it enforces: DLQ, keep going
            await dead_letters.send(
                raw, f"handler failed after {max_attempts} attempts: {type(exc).__name__}: {exc}"
            )


@dataclass(frozen=True)
class Delivery:
    """A decoded record of a batch. A batch handler handles each one inside its
    ``context()``: the log fields and trace that ``process_record`` gives a single one."""

    envelope: Envelope
    raw: RawMessage | None = None
    consumer: str = ""

    @contextlib.contextmanager
    def context(self) -> Iterator[None]:
        if self.raw is None:  # handled one at a time: process_record set the context
            yield
            return
        with _record_context(self.raw, self.consumer), _event_context(self.envelope):
            yield


BatchHandler = Callable[[Sequence[Delivery]], Awaitable[None]]


async def process_batch(
    spec: TopicSpec,
    raws: Sequence[RawMessage],
    handle_batch: BatchHandler,
    handle: Handler,
    dead_letters: DeadLetters,
    *,
    max_attempts: int,
) -> None:
    """Records taken together: poison goes to the DLQ with its reason, and the rest are
    handled by ``handle_batch`` in one go. If that fails for any reason, each record is
    handled on its own by ``process_record``'s rule (retries, then the DLQ): a failure
    in a batch ends as it would have one record at a time. Poison is dead-lettered before
    the batch's good records are handled."""
    deliveries = []
    for raw in raws:
        try:
            envelope = decode(spec, raw.key, raw.value, raw.headers)
        except PoisonMessage as exc:
            with _record_context(raw, dead_letters.consumer_name):
                await dead_letters.send(raw, str(exc))
            continue
        deliveries.append(Delivery(envelope, raw, dead_letters.consumer_name))
    if not deliveries:
        return
    try:
        with metrics.deferred():
            await handle_batch(deliveries)
    except Exception as exc:
        log.warning(
            "consumer %s: a batch of %d failed (%s: %s); handling them one at a time",
            dead_letters.consumer_name, len(deliveries), type(exc).__name__, exc,
        )  # fmt: skip
    else:  # only a batch handled as one counts, not one redone a record at a time
        metrics.BATCH_RECORDS.labels(spec.name, dead_letters.consumer_name).observe(len(deliveries))
        return
    for delivery in deliveries:
        assert delivery.raw is not None
        await process_record(spec, delivery.raw, handle, dead_letters, max_attempts=max_attempts)


async def consume(
    consumer: AIOKafkaConsumer,
    specs: Sequence[TopicSpec],
    handle: Handler,
    dead_letters: DeadLetters,
    *,
    max_attempts: int,
    handle_batch: BatchHandler | None = None,
) -> None:
    """Process records forever, committing the offsets of each fetch once it is handled.
    With ``handle_batch``, a fetch's records of one topic, every partition's in its order,
    go through ``process_batch`` together: one call of the batch handler (one transaction,
    where it uses one) and one offset commit for what a fetch brings, rather than one per
    partition."""
    by_name = {spec.name: spec for spec in specs}
    while True:
        try:
            batches = await consumer.getmany(timeout_ms=1000, max_records=200)
        except KafkaError as exc:
            log.warning("consumer %s: fetch failed, retrying: %s", dead_letters.consumer_name, exc)
            await asyncio.sleep(1)
            continue
        if not batches:
            continue
        for topic, raws in _by_topic(batches).items():
            spec = by_name[topic]
            if handle_batch is not None:
                await process_batch(
                    spec, raws, handle_batch, handle, dead_letters, max_attempts=max_attempts
                )
            else:
                for raw in raws:
                    await process_record(spec, raw, handle, dead_letters, max_attempts=max_attempts)
        try:
            await consumer.commit({tp: records[-1].offset + 1 for tp, records in batches.items()})
        except KafkaError as exc:
            # The effects are durable and idempotent; a later commit covers this one,
            # and after a rebalance the new owner's inbox absorbs the redelivery.
            log.warning("consumer %s: commit failed: %s", dead_letters.consumer_name, exc)


def _by_topic(
    batches: Mapping[TopicPartition, Sequence[ConsumerRecord]],
) -> dict[str, list[RawMessage]]:
    """A fetch's records by topic; each partition's stay in order, which is all the order
    there is (records are keyed so that what must stay in order shares a partition)."""
    topics: dict[str, list[RawMessage]] = {}
    for tp, records in batches.items():
        topics.setdefault(tp.topic, []).extend(
            RawMessage(
                record.topic,
                record.partition,
                record.offset,
                record.key,
                record.value,
                tuple(record.headers or ()),
            )
            for record in records
        )
    return topics


async def read_to_end(
    bootstrap_servers: str,
    topic: str,
    done: Callable[[], Awaitable[bool]] | None = None,
    *,
    security: Mapping[str, Any] | None = None,
) -> AsyncIterator[ConsumerRecord]:
    """Every record of ``topic`` from the beginning up to its end as of now, outside any
    consumer group: how a service rebuilds its view of a compacted topic. ``done``, if
    given, must also hold before the read stops: the broker's idea of the end is not
    always exact (see below)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        enable_auto_commit=False,
        group_id=None,
        auto_offset_reset="earliest",
        **(security or {}),
    )
    await consumer.start()
    try:
        await consumer.topics()  # fetches the cluster's metadata, partitions included
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        if not partitions:
            return  # no topic, nothing to read
        consumer.assign(partitions)
        # Seek first: asked for the end offsets before, aiokafka may start from the end.
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        # Tansu answers "latest offset", and a fetch's high watermark, with its last record
        # batch's base offset, so both are only lower bounds there; ``done`` settles it.
        while not (
            all([await caught_up(consumer, tp, ends[tp]) for tp in partitions])
            and (done is None or await done())
        ):
            batches = await consumer.getmany(*partitions, timeout_ms=500)
            for records in batches.values():
                for record in records:
                    yield record
    finally:
        await consumer.stop()


async def caught_up(consumer: AIOKafkaConsumer, tp: TopicPartition, end: int) -> bool:
    """The consumer has read ``tp`` up to ``end`` and to the high watermark of its last
    fetch: Tansu may report a partition's end as its last batch's base offset."""
    highwater = consumer.highwater(tp)
    return highwater is not None and await consumer.position(tp) >= max(highwater, end)


# The broker is up and said no: waiting will not change that, a setting or an ACL must.
KAFKA_REFUSALS: tuple[type[KafkaError], ...] = (
    AuthenticationFailedError,
    AuthenticationMethodNotSupported,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    TopicAuthorizationFailedError,
)


class KafkaAccessRefused(RuntimeError):
    """Start-up stops on this, naming what to fix, instead of retrying forever."""


async def wait_until_ready(what: str, attempt: Callable[[], Awaitable[object]]) -> None:
    """Retry a start-up step with backoff while the dependency is down (forever, loudly);
    a broker that refuses the login or a permission stops it with what to fix."""
    try:
        async for retrying in AsyncRetrying(
            retry=retry_if_exception(_worth_waiting_for),
            wait=wait_exponential_jitter(initial=0.5, max=10),
            stop=stop_after_delay(3600 * 24 * 365),
            before_sleep=lambda s: log.warning("%s not ready (%s); retrying", what, _error(s)),
            reraise=True,
        ):
            with retrying:
                await attempt()
    except KAFKA_REFUSALS as refused:
        raise KafkaAccessRefused(
            f"{what}: the broker refused ({type(refused).__name__}: {refused}); check "
            "KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_MECHANISM, KAFKA_SASL_USERNAME, "
            "KAFKA_SASL_PASSWORD and this service's ACLs (deploy/kafka/init.sh)"
        ) from refused


def _worth_waiting_for(exc: BaseException) -> bool:
    return isinstance(exc, (*TRANSIENT_ERRORS, KafkaError)) and not isinstance(exc, KAFKA_REFUSALS)


async def cancel_and_wait(*tasks: asyncio.Task[object]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
