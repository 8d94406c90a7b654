"""The pipeline benchmark (`make bench`, `python -m bench.pipeline`): the whole stack as
`refnet up` runs it, measured against bare baselines on the same machine in the same run,
written as docs/bench/report.json, report.md and latency.svg (BENCH_OUT to write elsewhere).

Method
------
The stack is services.local_stack.LocalStack on fresh free ports: embedded Postgres
(pgserver), the embedded Kafka-protocol broker Tansu (memory storage), the SMTP and SMS
sinks, and intake, matching and notifications as child processes with their default settings
(LOG_LEVEL INFO, 3 partitions), the demo directory loaded. Embedded only: DATABASE_URL and
KAFKA_BOOTSTRAP_SERVERS from the caller's shell are ignored and Docker is not asked.
Everything listens on 127.0.0.1 and everything stops at the end.

1. Bare broker (same broker): NeedSubmitted-shaped records (CloudEvents binary mode, ~the
   size intake publishes) are produced with acks=all, linger_ms=5 (produce rate), then read
   back by bench.common.bare_loop (shared with bench.matching): consume a batch, produce one
   record per record consumed, wait for the acks, commit: messages/s, median of
   BROKER_RUNS runs. And a broker hop's latency: records produced open-loop at each offered
   rate, latency from the scheduled send to a plain consumer in this process receiving it.
2. Intake with the pipeline: POST /api/v1/intakes with a worker API token (`refnet users
   token`), each body a valid intake with one need, a unique submission_id and person, and a
   valid Part 2 consent (today's date, network recipients). Closed-loop requests/s while the
   needs it makes go through the pipeline; waiting for all their offers gives the
   closed-loop end-to-end rate.
3. End to end, open-loop at each offered rate (default 50, 200, 500 needs/s for
   BENCH_SECONDS each): request i starts at t0 + i/rate whatever the answers do. A consumer
   in this process reads every agency's offer topic (refnet.agency.<id>.offers, no group,
   all partitions) and matches ReferralOffered records to the need_id intake answered with.
   Latency: from the request's scheduled start (so queueing in the client counts) to this
   consumer receiving the offer; also reported to the offer record's own timestamp (when
   matching's producer sent it), which leaves out the consumer's fetch. After sending, up to
   BENCH_GRACE_SECONDS for the last offers; whatever is still missing then is counted as
   missing and its request cancelled. Achieved needs/s = the rate offers came out: (offers
   - 1) / (last offer received - first offer received); when the pipeline keeps up it is the
   offered rate, when it does not it is what the pipeline managed. Kept up: every need
   answered 201 and offered within the grace time, and achieved >= 95% of offered. Before
   the next load, up to BENCH_DRAIN_SECONDS for every need accepted so far to be offered, so
   each load starts on an empty pipeline (the backlog at its start is reported).
4. Then matching and notifications are stopped (SIGTERM), and after SETTLE_SECONDS:
   bare web+database (bench/webdb.py): one FastAPI endpoint doing one asyncpg INSERT, served
   by uvicorn exactly as intake is (one process, same uvicorn arguments, same JSON logging,
   intake's pool), driven by the same load generator with the same intake bodies:
   closed-loop requests/s, then open-loop latency at each offered rate.
5. Intake alone: step 2's closed loop again, with matching and notifications still stopped,
   so intake and its baseline run beside the same processes (Postgres, the broker, the
   generator; intake's outbox relay publishes every NeedSubmitted meanwhile). With matching
   stopped no status events come back, so intake's consumer is idle here, unlike in step 2.
   Before step 4, intake's outbox is drained (up to BENCH_DRAIN_SECONDS; the backlog left
   is reported). Its ratio to step 4's closed loop is the intake figure (goal >= 0.5); step
   2's ratio is reported too.

Needs are matchable by construction: each (category, ZIP) pair used is one where the real
eligibility rules (services.matching.ranking.exclusion) find at least one demo service for
the person sent (age 35, English, Medicaid, no MAT requirement) that does not count places,
so capacity can never run out and every need gets an offer. Categories take turns; ZIPs are
drawn from those each category's services reach (Portland metro).

Load generator (bench/loadgen.py): asyncio, a fixed pool of BENCH_CONNECTIONS keep-alive
HTTP/1.1 connections; BENCH_CLIENT=raw (default: hand-written over asyncio streams, the
cheapest client in Python) or httpx. Its CPU (this whole process: generator, offer consumer,
SMTP/SMS sinks' threads) is reported per phase, with every other process of the stack.

Caveats
-------
* The generator, the consumer of offers, Postgres, the broker and three services share the
  same cores (2 on the reference machine). Every figure is what this machine does with the
  load generated on it; the CPU table says who used what. A busy machine (other work
  running) lowers every figure: the report gives the load average and the machine's busy
  share outside this benchmark's processes.
* The broker baseline runs on the whole stack, idle. The web+db baseline and intake alone
  run with matching and notifications stopped: the same processes beside each, so their
  ratio compares the two web services and not what else happens to share the cores. Intake
  with the pipeline, and the end-to-end loads, run with everything, as in production.
* Tansu keeps topics in memory, Postgres runs with its defaults (fsync on); neither is
  tuned. No replication, one broker.
* Percentiles are nearest-rank over the needs that completed; a level that did not keep up
  has latencies that grow with time, so its percentiles depend on the duration.
* The latency floor (ratio denominator) is web+db pXX + 2 x broker hop pXX at the same offered
  rate: a need's one HTTP write and its two broker hops (NeedSubmitted to matching,
  ReferralOffered to the agency). Adding percentiles is an approximation, not a bound.

Settings (environment): BENCH_SECONDS (25: each open-loop level), BENCH_CLOSED_SECONDS (15),
BENCH_BASELINE_SECONDS (8: each baseline open-loop level), BENCH_WARMUP_SECONDS (3),
BENCH_LOADS (50,200,500), BENCH_CONNECTIONS (16), BENCH_GRACE_SECONDS (30),
BENCH_DRAIN_SECONDS (60), BENCH_BROKER_MESSAGES (5000), BENCH_CLIENT (raw), BENCH_OUT
(docs/bench), BENCH_SEED, BENCH_GIT_DESCRIBE (instead of asking git). Worst case with the
defaults (nothing keeps up, every wait to its limit) is about 8 minutes; a quiet 2-core
machine takes about 6-7. A trial run of ~2 minutes: BENCH_SECONDS=5 BENCH_CLOSED_SECONDS=5
BENCH_BASELINE_SECONDS=3 BENCH_BROKER_MESSAGES=1000 BENCH_GRACE_SECONDS=15
BENCH_DRAIN_SECONDS=30 BENCH_OUT=bench/out.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench import loadgen
from bench.common import (
    ROOT,
    bare_loop,
    env_float,
    env_int,
    machine,
    machine_ticks,
    pct,
    produce_all,
    progress,
)
from bench.report import write_report
from services.intake.models import age_on
from services.local_stack import DEMO_WORKER_EMAIL, LocalStack, Ports
from services.matching.directory.admin import DEMO_PACKAGE
from services.matching.directory.package import profiles, read_package
from services.matching.geo import load_centroids
from services.matching.profiles import service_facts
from services.matching.ranking import NeedView, ServiceView, exclusion
from shared.cloudevents import Headers
from shared.embedded import free_port, spawn, stop_process
from shared.events import (
    ConsentScope,
    Constraints,
    Insurance,
    NeedCategory,
    ReferralOffered,
    Urgency,
)
from shared.kafka import ensure_topics
from shared.topics import agency_offers
from tests.e2e.cli import refnet_cli

# --- settings ----------------------------------------------------------------------------

SECONDS = env_float("BENCH_SECONDS", 25)
CLOSED_SECONDS = env_float("BENCH_CLOSED_SECONDS", 15)
BASELINE_SECONDS = env_float("BENCH_BASELINE_SECONDS", 8)
WARMUP_SECONDS = env_float("BENCH_WARMUP_SECONDS", 3)
LOADS = tuple(float(v) for v in os.environ.get("BENCH_LOADS", "50,200,500").split(",") if v.strip())
CONNECTIONS = env_int("BENCH_CONNECTIONS", 16)
GRACE_SECONDS = env_float("BENCH_GRACE_SECONDS", 30)
DRAIN_SECONDS = env_float("BENCH_DRAIN_SECONDS", 60)
BROKER_MESSAGES = env_int("BENCH_BROKER_MESSAGES", 5000)
BROKER_RUNS = 3
CLIENT = os.environ.get("BENCH_CLIENT", "raw")
OUT_DIR = Path(os.environ.get("BENCH_OUT", ROOT / "docs" / "bench"))
SEED = env_int("BENCH_SEED", 20261123)
PARTITIONS = 3
KEPT_UP_SHARE = 0.95
INTAKE_GOAL = 0.5
INTAKE_PATH = "/api/v1/intakes"
WEBDB_PATH = "/hits"
PERSON_AGE = 35
PERSON_LANGUAGES = ("en",)
INSURANCE = Insurance.MEDICAID
CDF_POINTS = 200


def _summary(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None, "mean": None}
    return {
        "p50": round(pct(values, 0.50), 2),
        "p95": round(pct(values, 0.95), 2),
        "p99": round(pct(values, 0.99), 2),
        "max": round(max(values), 2),
        "mean": round(statistics.fmean(values), 2),
    }


def _cdf(values: list[float], total: int | None = None) -> list[list[float]]:
    """(latency ms, share of ``total`` needs at or below it) at CDF_POINTS shares spaced
    evenly in "nines" (0, ..., 90%, ..., 99%, ..., 99.9%), then the maximum: the tail keeps
    its detail. Needs that never completed count in ``total``, so their curve stops short."""
    if not values:
        return []
    ordered = sorted(values)
    n = len(ordered)
    total = max(total or n, n)
    shares = sorted({1 - 10 ** (-3 * k / CDF_POINTS) for k in range(CDF_POINTS)} | {1.0})
    points: list[list[float]] = []
    for share in shares:
        i = min(n - 1, max(0, math.ceil(share * n) - 1))
        point = [round(ordered[i], 2), round((i + 1) / total, 5)]
        if not points or point != points[-1]:
            points.append(point)
    return points


# --- the needs: matchable by construction --------------------------------------------------


def matchable_pairs(today: date) -> dict[str, list[str]]:
    """Category -> the ZIP codes where a person of the benchmark's profile has at least one
    eligible demo service that does not count places (so it never runs out)."""
    facts = [f for p in profiles(read_package(DEMO_PACKAGE), 1) for f in service_facts(p)]
    names = {f.name for f in dataclasses.fields(ServiceView)}
    views = [
        ServiceView(agency_name=f.agency_id, **{k: v for k, v in vars(f).items() if k in names})
        for f in facts
    ]
    places = load_centroids()
    now = datetime.now(UTC)
    pairs: dict[str, list[str]] = {}
    for category in NeedCategory:
        consent = ConsentScope(
            consent_id=uuid4(),
            categories=frozenset({category}),
            expires_on=today + timedelta(days=90),
        )
        for postal_code, area in sorted(places.items()):
            need = NeedView(
                category,
                Urgency.ROUTINE,
                postal_code,
                area.county,
                area.point,
                PERSON_LANGUAGES,
                PERSON_AGE,
                None,
                Constraints(insurance=INSURANCE),
                consent,
            )
            if any(v.available is None and exclusion(need, v, now) is None for v in views):
                pairs.setdefault(category.value, []).append(postal_code)
    return pairs


class IntakeBodies:
    """Valid intake JSON bodies, one need each, every submission and person unique."""

    GIVEN = ("Avery", "Rowan", "Jordan", "Casey", "Morgan", "Riley", "Quinn", "Skyler")
    URGENCIES = ("routine", "soon", "urgent")

    def __init__(self, seed: int, tag: str) -> None:
        self.rng = random.Random(f"{seed}-{tag}")
        self.tag = tag
        self.today = datetime.now(UTC).date()  # intake's LOCAL_TIMEZONE is UTC in the stack
        self.dob = self.today.replace(year=self.today.year - PERSON_AGE) - timedelta(days=40)
        assert age_on(self.dob, self.today) == PERSON_AGE
        self.pairs = matchable_pairs(self.today)
        self.categories = sorted(self.pairs)
        self.count = 0

    def __call__(self) -> bytes:
        n = self.count
        self.count += 1
        category = self.categories[n % len(self.categories)]
        postal_code = self.rng.choice(self.pairs[category])
        given = self.GIVEN[n % len(self.GIVEN)]
        family = f"Bench{self.tag}{n:07d}"
        # Dated as sent, not when the generator was made: a run may cross midnight.
        today = datetime.now(UTC).date()  # intake's LOCAL_TIMEZONE is UTC in the stack
        body = {
            "submission_id": str(UUID(int=self.rng.getrandbits(128), version=4)),
            "person": {
                "legal_given_name": given,
                "legal_family_name": family,
                "date_of_birth": self.dob.isoformat(),
                "phone": "503-555-0100",
                "preferred_channel": "phone",
                "languages": list(PERSON_LANGUAGES),
                "postal_code": postal_code,
            },
            "recovery": {"stage": "early-recovery"},
            "needs": [{"category": category, "urgency": self.URGENCIES[n % 3]}],
            "constraints": {"insurance": INSURANCE.value},
            "consent": {
                "confirmed": True,
                "recipients": "network",
                "expires_on": (today + timedelta(days=90)).isoformat(),
                "signature": f"{given} {family}",
                "signed_on": today.isoformat(),
            },
        }
        return json.dumps(body).encode()


def need_id_of(answer: bytes) -> str | None:
    try:
        return str(json.loads(answer)["needs"][0]["need_id"])
    except (ValueError, KeyError, IndexError, TypeError):
        return None


# --- CPU by process ------------------------------------------------------------------------


def _group(proc: psutil.Process, me: int) -> str:
    if proc.pid == me:
        return "bench (generator, offer consumer, sinks)"
    try:
        cmd = " ".join(proc.cmdline())
        name = proc.name()
    except psutil.Error:
        return "other"
    for service in ("intake", "matching", "notifications"):
        if f"services.cli {service}" in cmd:
            return service
    if "bench.webdb" in cmd:
        return "web+db baseline"
    if "postgres" in name or "postgres" in cmd.split(" ", 1)[0]:
        return "postgres"
    if "tansu" in cmd:
        return "broker (tansu)"
    return "other"


class CpuMeter:
    """CPU seconds of this process and every descendant, grouped, and of the whole machine."""

    def __init__(self) -> None:
        self.me = os.getpid()
        self._procs: dict[int, psutil.Process] = {}

    def snapshot(self) -> tuple[float, dict[int, tuple[str, float]], tuple[int, int]]:
        root = psutil.Process(self.me)
        seen: dict[int, tuple[str, float]] = {}
        for proc in [root, *root.children(recursive=True)]:
            cached = self._procs.setdefault(proc.pid, proc)
            try:
                times = cached.cpu_times()
                seen[proc.pid] = (_group(cached, self.me), times.user + times.system)
            except psutil.Error:
                continue
        return time.perf_counter(), seen, machine_ticks()

    def since(
        self, start: tuple[float, dict[int, tuple[str, float]], tuple[int, int]]
    ) -> dict[str, Any]:
        t1, now, (busy1, total1) = self.snapshot()
        t0, before, (busy0, total0) = start
        wall = max(t1 - t0, 1e-9)
        groups: dict[str, float] = {}
        for pid, (group, cpu) in now.items():
            groups[group] = groups.get(group, 0.0) + cpu - before.get(pid, (group, 0.0))[1]
        cores = os.cpu_count() or 1
        ours = sum(groups.values())
        machine_cpu = (busy1 - busy0) / max(total1 - total0, 1) * cores * wall
        return {
            "seconds": round(wall, 2),
            "cores_used": {k: round(v / wall, 3) for k, v in sorted(groups.items())},
            "benchmark_cores": round(ours / wall, 3),
            "machine_cores": round(machine_cpu / wall, 3),
            "outside_benchmark_cores": round(max(0.0, machine_cpu - ours) / wall, 3),
        }


# --- the offer consumer --------------------------------------------------------------------


class Offers:
    """Every agency offer topic, all partitions from the start, no consumer group: the first
    ReferralOffered per need_id, with (received wall time, record timestamp)."""

    def __init__(self, bootstrap: str, agency_ids: list[str]) -> None:
        self.bootstrap = bootstrap
        self.topics = [agency_offers(a).name for a in agency_ids]
        self.seen: dict[str, tuple[float, float]] = {}
        self.records = 0
        self._task: asyncio.Task[None] | None = None
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=50,
            max_partition_fetch_bytes=1 << 20,
        )
        await consumer.start()
        tps = []
        for topic in self.topics:
            partitions = consumer.partitions_for_topic(topic)
            if not partitions:
                await consumer._client.force_metadata_update()
                partitions = consumer.partitions_for_topic(topic) or set()
            tps.extend(TopicPartition(topic, p) for p in sorted(partitions))
        consumer.assign(tps)
        self._consumer = consumer
        self._task = asyncio.create_task(self._run(consumer), name="bench-offers")

    async def _run(self, consumer: AIOKafkaConsumer) -> None:
        offered = ReferralOffered.ce_type.encode()
        while True:
            batch = await consumer.getmany(timeout_ms=200, max_records=2000)
            now = time.time()
            for records in batch.values():
                for r in records:
                    self.records += 1
                    if dict(r.headers or ()).get("ce_type") != offered or r.key is None:
                        continue
                    need_id = r.key.decode()
                    if need_id not in self.seen:
                        self.seen[need_id] = (now, r.timestamp / 1000)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._consumer is not None:
            await self._consumer.stop()

    async def wait_for(self, need_ids: list[str], limit_s: float) -> float:
        """Until every need has its offer or limit_s; returns the seconds waited."""
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < limit_s:
            if all(n in self.seen for n in need_ids):
                break
            if self._task is not None and self._task.done():
                self._task.result()  # the consumer died: say why
            await asyncio.sleep(0.05)
        return time.perf_counter() - t0


# --- phase 1: the bare broker ----------------------------------------------------------------


async def broker_baseline(bootstrap: str, cpu: CpuMeter) -> dict[str, Any]:
    from bench.matching import demo_need_records  # NeedSubmitted-shaped records

    rng = random.Random(f"{SEED}-broker")
    tag = uuid4().hex[:6]
    topic_in, topic_out = f"bench.pipeline.{tag}.in", f"bench.pipeline.{tag}.out"
    await ensure_topics(bootstrap, [topic_in, topic_out], PARTITIONS)
    records = demo_need_records(rng, BROKER_MESSAGES)
    start = cpu.snapshot()
    produce_s = await produce_all(bootstrap, topic_in, records)
    runs = [
        await bare_loop(bootstrap, topic_in, topic_out, records, run) for run in range(BROKER_RUNS)
    ]
    usage = cpu.since(start)
    median = sorted(runs, key=lambda r: r.rate)[len(runs) // 2]
    hops: dict[str, Any] = {}
    for rate in LOADS:
        hop_topic = f"bench.pipeline.{tag}.hop{int(rate)}"
        await ensure_topics(bootstrap, [hop_topic], PARTITIONS)
        hops[_key(rate)] = await broker_hop(bootstrap, hop_topic, rate, records)
    return {
        "messages": len(records),
        "value_bytes": round(statistics.fmean(len(v) for _, v, _ in records)),
        "header_bytes": round(
            statistics.fmean(sum(len(k) + len(v) for k, v in h) for _, _, h in records)
        ),
        "partitions": PARTITIONS,
        "produce_per_s": round(len(records) / produce_s, 1),
        "loop_runs_per_s": [round(r.rate, 1) for r in runs],
        "loop_per_s": round(median.rate, 1),
        "cpu": usage,
        "hop_latency_ms": hops,
    }


async def broker_hop(
    bootstrap: str, topic: str, rate: float, records: list[tuple[bytes, bytes, Headers]]
) -> dict[str, Any]:
    """Records produced at ``rate`` for BASELINE_SECONDS; latency from each one's scheduled
    send to a consumer in this process receiving it."""
    count = max(1, round(rate * BASELINE_SECONDS))
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=50
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await consumer.start()
    await producer.start()
    received: dict[int, float] = {}
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)

        async def consume() -> None:
            while len(received) < count:
                batch = await consumer.getmany(timeout_ms=200)
                now = time.time()
                for rs in batch.values():
                    for r in rs:
                        received.setdefault(int(r.key), now)

        reader = asyncio.create_task(consume())
        loop = asyncio.get_running_loop()
        t0 = loop.time() + 0.05
        wall0 = time.time() + (t0 - loop.time())
        sends = []
        i = 0
        while i < count:
            now = loop.time()
            while i < count and t0 + i / rate <= now:
                _, value, headers = records[i % len(records)]
                sends.append(
                    await producer.send(topic, key=str(i).encode(), value=value, headers=headers)
                )
                i += 1
            if i < count:
                await asyncio.sleep(max(0.0, min(0.005, t0 + i / rate - loop.time())))
        await asyncio.gather(*sends)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reader, 30)
    finally:
        await producer.stop()
        await consumer.stop()
    latencies = [(received[i] - (wall0 + i / rate)) * 1000 for i in received]
    return {"sent": count, "received": len(received), **_summary(latencies)}


def _key(rate: float) -> str:
    return f"{rate:g}"


# --- phase 2: the bare web+database server -----------------------------------------------


async def start_webdb(database_url: str, run_dir: Path) -> tuple[subprocess.Popen[bytes], int]:
    conn = await asyncpg.connect(database_url)
    try:
        from bench.webdb import CREATE_TABLE, SCHEMA

        await conn.execute(f'DROP SCHEMA IF EXISTS "{SCHEMA}" CASCADE')
        await conn.execute(f'CREATE SCHEMA "{SCHEMA}"')
        await conn.execute(f'SET search_path TO "{SCHEMA}"')
        await conn.execute(CREATE_TABLE)
    finally:
        await conn.close()
    port = free_port()
    proc = spawn(
        [sys.executable, "-m", "bench.webdb"],
        run_dir / "logs" / "webdb.log",
        env={**os.environ, "DATABASE_URL": database_url, "HTTP_PORT": str(port)},
        cwd=ROOT,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"bench.webdb exited; see {run_dir}/logs/webdb.log")
        if await asyncio.to_thread(_answers, f"http://127.0.0.1:{port}/healthz"):
            return proc, port
        await asyncio.sleep(0.2)
    stop_process(proc)
    raise RuntimeError("bench.webdb did not answer in 60 s")


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):  # noqa: S310 - our own loopback URL
            return True
    except OSError:
        return False


def _closed_summary(result: loadgen.ClosedResult, usage: dict[str, Any]) -> dict[str, Any]:
    return {
        "connections": result.connections,
        "seconds": result.seconds,
        "requests_ok": result.ok,
        "statuses": result.statuses,
        "per_s": round(result.rate, 1),
        "latency_ms": _summary(result.latencies_ms),
        "generator_cores": round(result.client_cpu_s / result.seconds, 3),
        "cpu": usage,
    }


async def closed(
    port: int,
    headers: dict[str, str],
    path: str,
    bodies: Callable[[], bytes],
    cpu: CpuMeter,
    on_answer: Callable[[int, bytes], None] | None = None,
) -> dict[str, Any]:
    client = loadgen.make_client(CLIENT, "127.0.0.1", port, headers, CONNECTIONS)
    try:
        start: list[Any] = []

        async def mark() -> None:  # the CPU window starts after the warm-up
            await asyncio.sleep(WARMUP_SECONDS)
            start.append(cpu.snapshot())

        marker = asyncio.create_task(mark())
        result = await loadgen.closed_loop(
            client, path, bodies, CONNECTIONS, WARMUP_SECONDS, CLOSED_SECONDS, on_answer
        )
        await marker
        return _closed_summary(result, cpu.since(start[0]))
    finally:
        await client.aclose()


async def open_level(
    port: int,
    headers: dict[str, str],
    path: str,
    bodies: Callable[[], bytes],
    rate: float,
    seconds: float,
    grace_s: float,
    cpu: CpuMeter,
    offers: Offers | None = None,
) -> dict[str, Any]:
    """One open-loop level; with ``offers``, end to end (until each need's offer)."""
    client = loadgen.make_client(CLIENT, "127.0.0.1", port, headers, CONNECTIONS)
    tasks: list[asyncio.Task[None]] = []
    start = cpu.snapshot()
    try:
        sent = await loadgen.open_loop(client, path, bodies, rate, seconds, tasks)
        t_sent = time.perf_counter()
        deadline = t_sent + grace_s
        unanswered = set(range(len(sent.sent)))  # indexes, parsed once each as answers come
        waiting: set[str] = set()  # need ids answered and not yet offered
        while time.perf_counter() < deadline:
            for i in [i for i in unanswered if sent.sent[i].status != -1]:
                unanswered.discard(i)
                if offers is not None and (need_id := need_id_of(sent.sent[i].answer)):
                    waiting.add(need_id)
            if offers is not None:
                waiting = {n for n in waiting if n not in offers.seen}
            if not unanswered and not waiting:
                break
            await asyncio.sleep(0.05)
        drained_s = time.perf_counter() - t_sent
        usage = cpu.since(start)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        cancelled = sum(1 for s in sent.sent if s.status == -1)
    finally:
        await client.aclose()
    records = sent.sent
    statuses: dict[str, int] = {}
    for s in records:
        statuses[str(s.status)] = statuses.get(str(s.status), 0) + 1
    answered = [s.answered_ms for s in records if s.answered_ms is not None and s.status < 300]
    lags = [s.lag_ms for s in records]
    level: dict[str, Any] = {
        "offered_per_s": rate,
        "seconds": seconds,
        "sent": len(records),
        "send_rate_per_s": round((len(records) - 1) / sent.send_seconds, 1)
        if sent.send_seconds
        else None,
        "generator_lag_ms": _summary(lags),
        "statuses": statuses,
        "cancelled_unanswered": cancelled,
        "http_latency_ms": _summary(answered),
        "generator_cores": round(sent.client_cpu_s / max(sent.send_seconds, 1e-9), 3),
        "waited_after_sending_s": round(drained_s, 2),
        "cpu": usage,
    }
    if offers is None:
        ok = len(answered)
        level["achieved_per_s"] = round(ok / seconds, 1)  # answered / sending time
        return level
    ids = [(s, need_id_of(s.answer)) for s in records if 200 <= s.status < 300]
    latencies, producer_latencies, received = [], [], []
    for s, need_id in ids:
        if need_id and need_id in offers.seen:
            got, stamped = offers.seen[need_id]
            latencies.append((got - s.scheduled_wall) * 1000)
            producer_latencies.append((stamped - s.scheduled_wall) * 1000)
            received.append(got)
    span = (max(received) - min(received)) if len(received) > 1 else 0.0
    achieved = (len(received) - 1) / span if span > 0 else 0.0
    missing = len(records) - len(received)
    level.update(
        accepted=len(ids),
        accepted_need_ids=[n for _, n in ids if n],
        offers=len(received),
        missing_offers=missing,
        achieved_per_s=round(achieved, 1),
        kept_up=missing == 0 and achieved >= KEPT_UP_SHARE * rate,
        latency_ms=_summary(latencies),
        latency_to_record_timestamp_ms=_summary(producer_latencies),
        cdf=_cdf(latencies, len(records)),
    )
    return level


# --- the run ---------------------------------------------------------------------------------


async def measure(stack: LocalStack, token: str, result: dict[str, Any]) -> None:
    assert stack.infra is not None
    cpu = CpuMeter()
    bootstrap = stack.infra.kafka_bootstrap_servers
    progress(f"broker baseline: {BROKER_MESSAGES:,} messages, then a hop at {LOADS} msg/s...")
    result["broker"] = await broker_baseline(bootstrap, cpu)
    await pipeline(stack, token, cpu, result)
    # Intake against its baseline on the same footing: the stack but for the services
    # downstream of intake, which would otherwise share the cores with one and not the other.
    progress("stopping matching and notifications for the web+db and intake-alone loops...")
    for name in DOWNSTREAM:
        stack.stop_service(name)
    result["intake_outbox_backlog_before_baselines"] = await drain_intake_outbox(
        stack.infra.database_url, DRAIN_SECONDS
    )
    await asyncio.sleep(SETTLE_SECONDS)
    result["webdb"] = await webdb_baseline(stack.infra.database_url, stack.run_dir, cpu)
    progress(f"intake alone: closed loop, {CONNECTIONS} connections...")
    bodies = IntakeBodies(SEED, "a")
    result["intake_alone"] = await closed(
        stack.ports.intake, _auth(token), INTAKE_PATH, bodies, cpu
    )
    add_ratios(result)


async def drain_intake_outbox(database_url: str, limit_s: float) -> int:
    """Wait (up to ``limit_s``) until intake's relay has published everything the pipeline
    phases queued, so the baselines do not share the cores with it; the backlog left."""
    conn = await asyncpg.connect(database_url, server_settings={"search_path": "intake"})
    try:
        deadline = time.perf_counter() + limit_s
        while True:
            left = int(
                await conn.fetchval(
                    "SELECT count(*) FROM outbox WHERE published_at IS NULL AND rejected_at IS NULL"
                )
            )
            if not left or time.perf_counter() >= deadline:
                return left
            await asyncio.sleep(0.2)
    finally:
        await conn.close()


DOWNSTREAM = ("matching", "notifications")
# After the pipeline's last load: intake answers what it still holds, the relays drain.
SETTLE_SECONDS = 5.0


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def webdb_baseline(database_url: str, run_dir: Path, cpu: CpuMeter) -> dict[str, Any]:
    progress("web+db baseline: starting bench.webdb...")
    webdb, port = await start_webdb(database_url, run_dir)
    try:
        bodies = IntakeBodies(SEED, "w")
        progress(f"web+db baseline: closed loop, {CONNECTIONS} connections...")
        webdb_result: dict[str, Any] = {
            "closed": await closed(port, {}, WEBDB_PATH, bodies, cpu),
            "open": {},
        }
        for rate in LOADS:
            progress(f"web+db baseline: open loop at {rate:g}/s for {BASELINE_SECONDS:g} s...")
            webdb_result["open"][_key(rate)] = await open_level(
                port, {}, WEBDB_PATH, bodies, rate, BASELINE_SECONDS, GRACE_SECONDS, cpu
            )
            await asyncio.sleep(1)
        return webdb_result
    finally:
        stop_process(webdb)


async def pipeline(stack: LocalStack, token: str, cpu: CpuMeter, result: dict[str, Any]) -> None:
    """Intake's closed loop with the pipeline running, then the open-loop loads."""
    assert stack.infra is not None
    auth, intake_port = _auth(token), stack.ports.intake
    agency_ids = [p.agency_id for p in profiles(read_package(DEMO_PACKAGE), 1)]
    offers = Offers(stack.infra.kafka_bootstrap_servers, agency_ids)
    await offers.start()
    try:
        bodies = IntakeBodies(SEED, "i")
        made: list[str] = []

        def note(status: int, answer: bytes) -> None:
            if 200 <= status < 300 and (need_id := need_id_of(answer)):
                made.append(need_id)

        progress(f"intake with the pipeline: closed loop, {CONNECTIONS} connections...")
        t0 = time.time()
        intake = await closed(intake_port, auth, INTAKE_PATH, bodies, cpu, note)
        progress(f"intake: waiting for the offers of its {len(made):,} needs...")
        waited = await offers.wait_for(made, DRAIN_SECONDS)
        got = [offers.seen[n][0] for n in made if n in offers.seen]
        intake["needs_made"] = len(made)
        intake["needs_offered"] = len(got)
        intake["offers_waited_after_s"] = round(waited, 1)
        intake["end_to_end_per_s"] = round(len(got) / (max(got) - t0), 1) if got else None
        result["intake"] = intake
        await asyncio.sleep(2)

        levels = []
        for rate in LOADS:
            backlog = sum(1 for n in made if n not in offers.seen)
            progress(f"end to end: {rate:g} needs/s for {SECONDS:g} s...")
            levels.append(
                await open_level(
                    intake_port,
                    auth,
                    INTAKE_PATH,
                    bodies,
                    rate,
                    SECONDS,
                    GRACE_SECONDS,
                    cpu,
                    offers,
                )
            )
            level = levels[-1]
            level["backlog_at_start"] = backlog
            made.extend(level.pop("accepted_need_ids"))
            progress(
                f"  sent {level['sent']:,}, offers {level['offers']:,}, achieved "
                f"{level['achieved_per_s']:g}/s, p50 {level['latency_ms']['p50']} ms, "
                f"p99 {level['latency_ms']['p99']} ms, kept up: {level['kept_up']}"
            )
            # The next load starts on an empty pipeline: every need accepted so far offered
            # (not counted in any figure; bounded by BENCH_DRAIN_SECONDS).
            if rate != LOADS[-1]:
                level["drain_after_s"] = round(await offers.wait_for(made, DRAIN_SECONDS), 1)
                level["drained"] = all(n in offers.seen for n in made)
                await asyncio.sleep(2)
        result["end_to_end"] = levels
    finally:
        await offers.stop()


def _ratio(value: float | None, baseline: dict[str, Any]) -> float | None:
    base = baseline.get("per_s")
    return round(value / base, 3) if value and base else None


def add_ratios(result: dict[str, Any]) -> None:
    """Each end-to-end figure against its baselines."""
    broker, webdb, intake = result["broker"], result["webdb"], result["intake"]
    alone = result["intake_alone"]
    intake["ratio_to_webdb"] = _ratio(intake["per_s"], webdb["closed"])
    alone["ratio_to_webdb"] = _ratio(alone["per_s"], webdb["closed"])
    alone["goal"] = INTAKE_GOAL
    alone["goal_met"] = (alone["ratio_to_webdb"] or 0) >= INTAKE_GOAL
    for level in result["end_to_end"]:
        rate = _key(level["offered_per_s"])
        achieved = level["achieved_per_s"]
        floor: dict[str, float | None] = {}
        web = webdb["open"].get(rate, {}).get("http_latency_ms", {})
        hop = broker["hop_latency_ms"].get(rate, {})
        for q in ("p50", "p95", "p99"):
            if web.get(q) is not None and hop.get(q) is not None:
                floor[q] = round(web[q] + 2 * hop[q], 2)
            else:
                floor[q] = None
        level["latency_floor_ms"] = floor
        level["ratios"] = {
            "achieved_to_offered": round(achieved / level["offered_per_s"], 3),
            "achieved_to_broker_loop": round(achieved / broker["loop_per_s"], 3),
            "achieved_to_webdb_closed": round(achieved / webdb["closed"]["per_s"], 3),
            "achieved_to_intake_closed": round(achieved / intake["per_s"], 3)
            if intake["per_s"]
            else None,
            **{
                f"latency_{q}_to_floor": round(level["latency_ms"][q] / floor[q], 2)
                if level["latency_ms"][q] is not None and floor[q]
                else None
                for q in ("p50", "p95", "p99")
            },
        }
    e2e = [lvl for lvl in result["end_to_end"] if lvl["kept_up"]]
    result["summary"] = {
        "broker_loop_per_s": broker["loop_per_s"],
        "webdb_per_s": webdb["closed"]["per_s"],
        "intake_per_s": alone["per_s"],
        "intake_to_webdb": alone["ratio_to_webdb"],
        "intake_goal_met": alone["goal_met"],
        "intake_with_pipeline_per_s": intake["per_s"],
        "intake_with_pipeline_to_webdb": intake["ratio_to_webdb"],
        "end_to_end_closed_loop_per_s": intake.get("end_to_end_per_s"),
        "highest_load_kept_up_per_s": max((lvl["offered_per_s"] for lvl in e2e), default=None),
        "best_achieved_per_s": max(lvl["achieved_per_s"] for lvl in result["end_to_end"]),
    }


def _embedded_only() -> None:
    """The benchmark runs on the embedded Postgres and broker, never on what the caller's
    shell points at, and never in Docker (testcontainers asks Docker first)."""
    for name in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS"):
        os.environ.pop(name, None)
    os.environ["DOCKER_HOST"] = "unix:///nonexistent/refnet-bench-embedded-only.sock"


def settings() -> dict[str, Any]:
    return {
        "loads_per_s": list(LOADS),
        "seconds_per_load": SECONDS,
        "closed_loop_seconds": CLOSED_SECONDS,
        "baseline_open_loop_seconds": BASELINE_SECONDS,
        "warmup_seconds": WARMUP_SECONDS,
        "grace_seconds": GRACE_SECONDS,
        "drain_seconds": DRAIN_SECONDS,
        "connections": CONNECTIONS,
        "client": CLIENT,
        "broker_messages": BROKER_MESSAGES,
        "broker_runs": BROKER_RUNS,
        "partitions": PARTITIONS,
        "seed": SEED,
        "kept_up_share": KEPT_UP_SHARE,
        "person": {
            "age": PERSON_AGE,
            "languages": list(PERSON_LANGUAGES),
            "insurance": INSURANCE.value,
        },
    }


def main() -> None:
    started = time.perf_counter()
    _embedded_only()
    result: dict[str, Any] = {
        "title": "refnet pipeline benchmark",
        "machine": machine(),
        "settings": settings(),
        "command": "make bench",
    }
    with tempfile.TemporaryDirectory(prefix="refnet-bench-") as tmp:
        stack = LocalStack(Path(tmp) / "stack", Ports.free())
        try:
            progress("starting the stack (Postgres, broker, sinks, 3 services)...")
            t0 = time.perf_counter()
            stack.start()
            assert stack.infra is not None
            result["stack"] = {
                "start_seconds": round(time.perf_counter() - t0, 1),
                "postgres": stack.infra.postgres_source,
                "broker": stack.infra.kafka_source,
                "services": "intake, matching, notifications (one process each, defaults)",
            }
            token = refnet_cli(stack, "users", "token", DEMO_WORKER_EMAIL, "--label", "bench")
            asyncio.run(measure(stack, token.strip(), result))
        except Exception as exc:  # a benchmark reports what went wrong instead of asserting
            result["error"] = f"{type(exc).__name__}: {exc}"
            progress(f"FAILED: {result['error']}")
            logs = Path(tmp) / "stack" / "logs"
            for log in sorted(logs.glob("*.log")) if logs.exists() else []:
                tail = log.read_text(errors="replace").splitlines()[-5:]
                progress(f"--- {log.name}:\n" + "\n".join(tail))
        finally:
            stack.stop()
    result["machine"]["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    result["elapsed_seconds"] = round(time.perf_counter() - started, 1)
    paths = write_report(result, OUT_DIR)
    progress(f"done in {result['elapsed_seconds']:.0f} s: " + ", ".join(str(p) for p in paths))
    if "error" in result:
        sys.exit(1)


if __name__ == "__main__":
    main()
