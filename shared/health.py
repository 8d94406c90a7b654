"""Liveness, readiness and metrics for every service, one implementation.

- ``GET /healthz``: the process answers (200 ``{"status": "ok"}``), whatever its
  dependencies are doing.
- ``GET /readyz``: 200 when ready, 503 when not, with ``Readiness`` as the body: Postgres
  answers ``SELECT 1``, Kafka answers a metadata request, the service's consumer has
  partitions assigned, and the outbox backlog and the consumer lag are within
  ``READY_MAX_OUTBOX_BACKLOG`` / ``READY_MAX_CONSUMER_LAG``. Each check has a short timeout.
  A value that could not be measured is reported as -1 and fails its check.
- ``GET /metrics``: the process's Prometheus registry (shared/metrics.py), with the outbox
  backlog, consumer lag and any service gauges measured at the scrape.

A service fills in its ``Probe`` as its start-up gets each dependency (the HTTP server
answers before that, so a service whose Postgres or Kafka is down is up and not ready), and
keeps it; a dependency that goes away and comes back is noticed at the next check.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from shared import metrics
from shared.outbox import backlog

log = logging.getLogger(__name__)

# Under the operator dashboard's 2 s budget per service, so a hung dependency shows as "not
# ready" there rather than as an unreachable service.
CHECK_TIMEOUT_S = 1.5
HEALTH_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
UNKNOWN = -1


# --- the /readyz body (the operator dashboard reads exactly this shape) ---------------------


class Check(BaseModel):
    ok: bool
    detail: str


class ThresholdCheck(BaseModel):
    ok: bool
    value: int
    threshold: int
    detail: str


class LagCheck(BaseModel):
    ok: bool
    value: int
    threshold: int
    detail: str
    per_topic: dict[str, int]


class Checks(BaseModel):
    postgres: Check
    kafka: Check
    consumer: Check
    outbox_backlog: ThresholdCheck
    consumer_lag: LagCheck


class Readiness(BaseModel):
    service: str
    ready: bool
    checks: Checks


# --- what a service exposes to the checks ---------------------------------------------------


class ConsumerProbe(Protocol):
    def assigned(self) -> list[tuple[str, int]]:
        """(topic, partition) assigned to this process now; raises if not started."""
        ...

    async def lag(self) -> dict[tuple[str, int], int]:
        """Per assigned partition: end offset minus committed offset (never negative)."""
        ...


class AiokafkaConsumerProbe:
    """An aiokafka consumer in a group (intake, notifications)."""

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self._consumer = consumer

    def assigned(self) -> list[tuple[str, int]]:
        return sorted((tp.topic, tp.partition) for tp in self._consumer.assignment())

    async def lag(self) -> dict[tuple[str, int], int]:
        tps = sorted(self._consumer.assignment())
        if not tps:
            return {}
        ends = await self._consumer.end_offsets(tps)
        done = dict(
            zip(tps, await asyncio.gather(*map(self._consumer.committed, tps)), strict=True)
        )
        return partition_lags(tps, ends, done, await self._starts(tps, done))

    async def _starts(
        self, tps: list[TopicPartition], done: dict[TopicPartition, int | None]
    ) -> dict[TopicPartition, int]:
        never = [tp for tp in tps if done.get(tp) is None]
        return dict(await self._consumer.beginning_offsets(never)) if never else {}


def partition_lags(
    tps: list[Any],
    ends: Mapping[Any, int],
    committed: Mapping[Any, int | None],
    starts: Mapping[Any, int],
) -> dict[tuple[str, int], int]:
    """A partition nothing was committed on yet lags from its first offset. Clamped at zero:
    a broker may answer "end" with a lower bound (Tansu: its last batch's base offset)."""
    lags = {}
    for tp in tps:
        done = committed.get(tp)
        start = done if done is not None else starts.get(tp, 0)
        lags[(tp.topic, tp.partition)] = max(int(ends.get(tp, start)) - int(start), 0)
    return lags


@dataclass
class Probe:
    service: str
    max_outbox_backlog: int
    max_consumer_lag: int
    timeout_s: float = CHECK_TIMEOUT_S
    # Set by the service's start-up as each becomes available; None: not yet.
    pool: asyncpg.Pool | None = None
    producer: AIOKafkaProducer | None = None
    consumer: ConsumerProbe | None = None
    # Requests beyond /healthz, /readyz and /metrics may be served (the app has its pool).
    accepting: bool = False
    # Service gauges measured at each scrape (notifications: reminders due).
    on_scrape: list[Callable[[asyncpg.Connection], Awaitable[None]]] = field(default_factory=list)


# --- the checks ----------------------------------------------------------------------------


async def readiness(probe: Probe) -> Readiness:
    postgres, kafka, consumer, outbox, lag = await asyncio.gather(
        _postgres(probe), _kafka(probe), _consumer(probe), _outbox(probe), _consumer_lag(probe)
    )
    checks = Checks(
        postgres=postgres, kafka=kafka, consumer=consumer, outbox_backlog=outbox, consumer_lag=lag
    )
    ready = all(c.ok for c in (postgres, kafka, consumer, outbox, lag))
    return Readiness(service=probe.service, ready=ready, checks=checks)


def _failure(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    return f"{type(exc).__name__}: {exc}".strip().rstrip(":")


async def _postgres(probe: Probe) -> Check:
    if probe.pool is None:
        return Check(ok=False, detail="not connected yet")
    try:
        async with asyncio.timeout(probe.timeout_s), probe.pool.acquire() as conn:
            await conn.fetchval("SELECT 1")
    except Exception as exc:
        return Check(ok=False, detail=_failure(exc))
    return Check(ok=True, detail="SELECT 1 answered")


async def _kafka(probe: Probe) -> Check:
    if probe.producer is None:
        return Check(ok=False, detail="not connected yet")
    try:
        async with asyncio.timeout(probe.timeout_s):
            cluster = await probe.producer.client.fetch_all_metadata()
    except Exception as exc:
        return Check(ok=False, detail=_failure(exc))
    return Check(ok=True, detail=f"metadata from {len(cluster.brokers())} broker(s)")


async def _consumer(probe: Probe) -> Check:
    if probe.consumer is None:
        return Check(ok=False, detail="not started yet")
    try:
        assigned = probe.consumer.assigned()
    except Exception as exc:
        return Check(ok=False, detail=_failure(exc))
    if not assigned:
        return Check(ok=False, detail="no partitions assigned (joining its group?)")
    topics = sorted({topic for topic, _ in assigned})
    return Check(ok=True, detail=f"{len(assigned)} partition(s) of {', '.join(topics)}")


async def _outbox(probe: Probe) -> ThresholdCheck:
    limit = probe.max_outbox_backlog
    if probe.pool is None:
        return ThresholdCheck(ok=False, value=UNKNOWN, threshold=limit, detail="no database yet")
    try:
        async with asyncio.timeout(probe.timeout_s), probe.pool.acquire() as conn:
            value = await backlog(conn)
    except Exception as exc:
        return ThresholdCheck(ok=False, value=UNKNOWN, threshold=limit, detail=_failure(exc))
    ok = value <= limit
    detail = f"{value} unpublished" + ("" if ok else f", over {limit}")
    return ThresholdCheck(ok=ok, value=value, threshold=limit, detail=detail)


async def _consumer_lag(probe: Probe) -> LagCheck:
    limit = probe.max_consumer_lag

    def unknown(detail: str) -> LagCheck:
        return LagCheck(ok=False, value=UNKNOWN, threshold=limit, detail=detail, per_topic={})

    if probe.consumer is None:
        return unknown("consumer not started yet")
    try:
        if not probe.consumer.assigned():
            return unknown("no partitions assigned")
        async with asyncio.timeout(probe.timeout_s):
            lags = await probe.consumer.lag()
    except Exception as exc:
        return unknown(_failure(exc))
    per_topic: dict[str, int] = {}
    for (topic, _), lag in sorted(lags.items()):
        per_topic[topic] = per_topic.get(topic, 0) + lag
    value = sum(per_topic.values())
    ok = value <= limit
    detail = f"{value} record(s) behind" + ("" if ok else f", over {limit}")
    return LagCheck(ok=ok, value=value, threshold=limit, detail=detail, per_topic=per_topic)


def _forget_lag(service: str) -> None:
    for labels in [s.labels for m in metrics.CONSUMER_LAG.collect() for s in m.samples]:
        if labels.get("service") == service:
            metrics.CONSUMER_LAG.remove(service, labels["topic"])


async def scrape(probe: Probe) -> None:
    """Measure the gauges that are read rather than counted."""
    outbox, lag = await asyncio.gather(_outbox(probe), _consumer_lag(probe))
    if outbox.value != UNKNOWN:
        metrics.OUTBOX_BACKLOG.labels(probe.service).set(outbox.value)
    if lag.value != UNKNOWN:
        # A topic this process no longer consumes (rebalanced away) must not keep its last
        # value: another replica reports it now.
        _forget_lag(probe.service)
    for topic, value in lag.per_topic.items():
        metrics.CONSUMER_LAG.labels(probe.service, topic).set(value)
    if probe.on_scrape and probe.pool is not None:
        try:
            async with asyncio.timeout(probe.timeout_s), probe.pool.acquire() as conn:
                for measure in probe.on_scrape:
                    await measure(conn)
        except Exception as exc:  # the scrape still answers, with the last values
            log.warning("metrics: service gauges not measured: %s", _failure(exc))


# --- HTTP ----------------------------------------------------------------------------------


def router() -> APIRouter:
    """/healthz, /readyz and /metrics; the app's ``state.probe`` is the service's Probe."""
    routes = APIRouter(include_in_schema=False)

    @routes.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @routes.get("/readyz", response_model=Readiness)
    async def readyz(request: Request) -> JSONResponse:
        result = await readiness(request.app.state.probe)
        return JSONResponse(
            result.model_dump(mode="json"), status_code=200 if result.ready else 503
        )

    @routes.get("/metrics")
    async def metrics_page(request: Request) -> Response:
        await scrape(request.app.state.probe)
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    return routes


class StartupGate:
    """Until the service has its database, every request but the health endpoints is
    answered 503 (with Retry-After) instead of failing inside a handler."""

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        probe = getattr(getattr(scope.get("app"), "state", None), "probe", None)
        if (
            scope["type"] != "http"
            or scope.get("path") in HEALTH_PATHS
            or probe is None
            or probe.accepting
        ):
            await self.app(scope, receive, send)
            return
        response = JSONResponse(
            {"detail": "starting: waiting for the database; see /readyz"},
            status_code=503,
            headers={"Retry-After": "5"},
        )
        await response(scope, receive, send)


# Raised inside a handler when Postgres went away after start-up.
DATABASE_UNAVAILABLE: tuple[type[Exception], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    ConnectionError,
)


async def database_unavailable(request: Any, exc: Exception) -> JSONResponse:
    """A request that needed Postgres while it is down: 503, so clients retry, not a 500."""
    return JSONResponse(
        {"detail": "the database is unavailable; retry shortly (see /readyz)"},
        status_code=503,
        headers={"Retry-After": "5"},
    )


def health_app(probe: Probe, title: str) -> FastAPI:
    """An app serving only the health endpoints, for a service without its own web app."""
    app = FastAPI(title=title, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.probe = probe
    app.include_router(router())
    return app


class HealthServer:
    """Serves ``health_app`` with uvicorn inside a running event loop that is not uvicorn's
    (the Faust worker): the worker keeps the process's signal handling."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        import uvicorn

        class _Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                yield

        config = uvicorn.Config(app, host=host, port=port, log_config=None, lifespan="off")
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve(), name="health-http")
        # uvicorn only sets a flag once it listens.
        while not self._server.started and not self._task.done():  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        if self._task.done():
            self._task.result()  # raises what stopped it (say, the port is taken)
            raise RuntimeError("the health HTTP server stopped at start-up")

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(self._task, 5)
        self._task = None


# --- start-up in the background --------------------------------------------------------------


def start_in_background(startup: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
    """Run a service's start-up (which waits for its dependencies) beside the HTTP server.
    Waiting is not failing: a start-up that fails for another reason (a wrong password, a
    bug) stops the process, as a failed start-up did when it blocked the server."""
    task = asyncio.create_task(startup, name=name)

    def stop_if_failed(done: asyncio.Task[None]) -> None:
        if done.cancelled() or done.exception() is None:
            return
        log.critical("start-up failed; stopping", exc_info=done.exception())
        os.kill(os.getpid(), signal.SIGTERM)

    task.add_done_callback(stop_if_failed)
    return task
