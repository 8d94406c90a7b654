"""Matching benchmark: `python -m bench.matching` (or `make bench`) prints a plain-text report.

Part 1: time per need for candidate selection and ranking (handlers.rank_candidates) against
synthetic directories of 100, 10,000 and 100,000 services that grow in area, not density.
Part 2: the matching service's throughput (a child process, as `refnet matching` runs it)
against a bare aiokafka consume-then-produce loop, on the same broker in the same run.

Everything runs on 127.0.0.1 on embedded Postgres and the embedded broker, started here and
stopped at the end. Benchmarks measure and print; they never assert.
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import gc
import io
import math
import os
import platform
import pstats
import random
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
from aiokafka import AIOKafkaProducer

from bench.common import (
    BASELINE_BATCH,
    Baseline,
    bare_loop,
    env_int,
    machine_ticks,
    pct,
    process_cpu_seconds,
    produce_all,
)
from services.cli import settle_heap
from services.local_stack import prepare
from services.matching import repository as repo
from services.matching.directory.admin import DEMO_PACKAGE
from services.matching.directory.package import profiles, read_package
from services.matching.geo import PostalArea, load_centroids
from services.matching.handlers import Deps, handle_needs_submitted, need_view, rank_candidates
from services.matching.ranking import covers, rank
from services.matching.repository import Area
from services.matching.settings import MatchingSettings
from services.matching.step import Step
from shared.clock import ManualClock, SystemClock
from shared.cloudevents import Headers, decode, encode
from shared.db import create_pool, migrate
from shared.embedded import spawn, stop_process
from shared.events import (
    ConsentScope,
    Constraints,
    Insurance,
    NeedCategory,
    Urgency,
)
from shared.hsds import AgencyProfile
from shared.infra import Infrastructure, provision
from shared.kafka import Delivery, ensure_topics
from shared.outbox import OutboxRelay
from shared.topics import NEEDS
from tests.factories import ServiceSpec, agency_profile, need_submitted

SERVICES_DIR = Path(__file__).parents[1] / "services"


def _env_sizes() -> tuple[int, ...]:
    raw = os.environ.get("BENCH_SIZES", "100,10000,100000")
    return tuple(int(part) for part in raw.split(",") if part.strip())


# --- settings (BENCH_* environment variables override them, for quicker trial runs) --------

SEED = env_int("BENCH_SEED", 20261123)
SIZES = _env_sizes()
RANK_NEEDS = env_int("BENCH_RANK_NEEDS", 600)
RANK_WARMUP = env_int("BENCH_RANK_WARMUP", 50)
RANK_CHUNK = 100
SERVICES_PER_ZIP = 10  # one synthetic ZIP code per ~10 services: the region grows in area
ZIPS_PER_COUNTY_SIDE = 5  # counties are 5 x 5 blocks of ZIP codes (~25 ZIPs)
ZIP_SPACING_KM = 3.0
ORIGIN = (40.0, -100.0)  # far from the demo region (Portland, 97xxx), codes 10000 + i
BUILD_BATCH_AGENCIES = 250  # agency profiles per transaction while building
BUILD_CONNECTIONS = 3
CATEGORIES = (
    NeedCategory.PEER_SUPPORT,
    NeedCategory.COUNSELING,
    NeedCategory.EMPLOYMENT,
    NeedCategory.HOUSING,
    NeedCategory.CASE_MANAGEMENT,
    NeedCategory.RECOVERY_COACHING,
)
# A Monday afternoon (UTC, matching's default zone): some services open, some not.
BENCH_NOW = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
RATIO_TARGET = 2.0


def out(line: str = "") -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


# --- part 1: a synthetic region and directory --------------------------------------------


@dataclass(frozen=True)
class Region:
    """A grid of synthetic ZIP codes ~3 km apart, counties of 5 x 5 ZIPs."""

    codes: list[str]
    places: dict[str, PostalArea]
    cols: int

    @classmethod
    def for_services(cls, services: int) -> Region:
        count = max(1, round(services / SERVICES_PER_ZIP))
        cols = math.ceil(math.sqrt(count))
        lat_step = ZIP_SPACING_KM / 111.0
        lon_step = ZIP_SPACING_KM / (111.0 * math.cos(math.radians(ORIGIN[0])))
        codes, places = [], {}
        for i in range(count):
            row, col = divmod(i, cols)
            code = f"{10000 + i:05d}"
            county = f"Bench {row // ZIPS_PER_COUNTY_SIDE}-{col // ZIPS_PER_COUNTY_SIDE}"
            point = (round(ORIGIN[0] + row * lat_step, 5), round(ORIGIN[1] + col * lon_step, 5))
            codes.append(code)
            places[code] = PostalArea(county, point)
        return cls(codes, places, cols)

    @property
    def counties(self) -> int:
        return len({area.county for area in self.places.values()})

    def neighbours(self, code: str) -> list[str]:
        row, col = divmod(int(code) - 10000, self.cols)
        found = []
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                r, c = row + dr, col + dc
                if (dr or dc) and 0 <= c < self.cols and r >= 0:
                    i = r * self.cols + c
                    if i < len(self.codes):
                        found.append(self.codes[i])
        return found


LANGUAGE_SETS = ((("en",), 55), (("en", "es"), 25), (("es",), 8), (("en", "vi"), 8), (("vi",), 4))
HOURS = (
    ("MO,TU,WE,TH,FR", "09:00", "17:00"),
    ("MO,WE,FR", "12:00", "20:00"),
    ("SA,SU", "10:00", "14:00"),
    ("TU,TH", "18:00", "21:00"),
)


def _weighted(rng: random.Random, choices: tuple[tuple[Any, int], ...]) -> Any:
    values, weights = zip(*choices, strict=True)
    return rng.choices(values, weights)[0]


def _service(rng: random.Random, region: Region, service_id: str, home: str) -> ServiceSpec:
    near = region.neighbours(home)
    zips = (home, *rng.sample(near, min(len(near), rng.randint(0, 3))))
    lat, lon = region.places[home].point
    location = (lat + rng.uniform(-0.01, 0.01), lon + rng.uniform(-0.01, 0.01))
    minimum_age = 18 if rng.random() < 0.2 else None
    maximum_age = rng.choice((24, 64)) if rng.random() < 0.1 else None
    if minimum_age is not None and maximum_age is not None and maximum_age < minimum_age:
        maximum_age = None
    counted = rng.random() < 0.3
    return ServiceSpec(
        service_id=service_id,
        category=rng.choice(CATEGORIES),
        zips=zips,
        counties=(region.places[home].county,) if rng.random() < 0.1 else (),
        radius_km=float(rng.randint(5, 15)) if rng.random() < 0.1 else None,
        location=location,
        languages=_weighted(rng, LANGUAGE_SETS),
        minimum_age=minimum_age,
        maximum_age=maximum_age,
        gender=rng.choice(("woman", "man")) if rng.random() < 0.05 else None,
        mat_friendly=rng.choice((None, None, True, False)),
        insurance=tuple(
            sorted(rng.sample(("medicaid", "medicare", "private", "none"), rng.randint(1, 3)))
        )
        if rng.random() < 0.4
        else (),
        capacity_status=_weighted(rng, ((None, 90), ("waitlist", 6), ("no-capacity", 4))),
        available=rng.randint(0, 20) if counted else None,
        capacity_as_of=BENCH_NOW - timedelta(days=rng.randint(0, 30)) if counted else None,
        hours=tuple(rng.sample(HOURS, rng.randint(1, 2))) if rng.random() < 0.6 else (),
    )


def directory_specs(
    rng: random.Random, region: Region, services: int
) -> Iterator[tuple[str, list[ServiceSpec]]]:
    """Agencies of 1-5 services each, based in a random ZIP code, until ``services``."""
    made = agency = 0
    while made < services:
        count = min(rng.randint(1, 5), services - made)
        home = rng.choice(region.codes)
        agency_id = f"bench-{agency:06d}"
        specs = [
            _service(rng, region, f"{agency_id}-s{n}", home)
            for n in range(count)
        ]  # fmt: skip
        yield agency_id, specs
        made += count
        agency += 1


@dataclass
class Built:
    services: int = 0
    agencies: int = 0
    seconds: float = 0.0
    generate_seconds: float = 0.0
    coverage_rows: int = 0
    reach_rows: int = 0
    reapply_ms: float = 0.0


async def drop_schema(database_url: str, schema: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def fresh_schema(
    database_url: str, tag: str, *, pool: bool = True
) -> tuple[str, asyncpg.Pool | None]:
    """As tests/integration/conftest.py fresh_schema: a newly migrated matching schema."""
    schema = f"bench_matching_{tag}"
    await drop_schema(database_url, schema)
    await asyncio.to_thread(migrate, database_url, schema, SERVICES_DIR / "matching" / "migrations")
    return schema, await create_pool(database_url, schema, max_size=4) if pool else None


REAPPLY_SAMPLE = 100  # agencies whose (unchanged) profile is applied again, each way


async def build_directory(
    pool: asyncpg.Pool, rng: random.Random, region: Region, services: int
) -> Built:
    """apply_profile for every agency, BUILD_BATCH_AGENCIES per transaction, on
    BUILD_CONNECTIONS connections at once (profiles are generated while others apply)."""
    built = Built()
    started = time.perf_counter()
    queue: asyncio.Queue[list[AgencyProfile] | None] = asyncio.Queue(maxsize=BUILD_CONNECTIONS)

    async def apply_batches() -> None:
        async with pool.acquire() as conn:
            while (batch := await queue.get()) is not None:
                async with conn.transaction():
                    for profile in batch:
                        await repo.apply_profile(conn, profile)
                built.agencies += len(batch)

    workers = [asyncio.create_task(apply_batches()) for _ in range(BUILD_CONNECTIONS)]
    sample: list[tuple[str, list[ServiceSpec]]] = []
    try:
        batch: list[AgencyProfile] = []
        for agency_id, agency_specs in directory_specs(rng, region, services):
            g0 = time.perf_counter()
            batch.append(agency_profile(agency_id, *agency_specs, name=f"Agency {agency_id}"))
            built.services += len(agency_specs)
            built.generate_seconds += time.perf_counter() - g0
            if len(sample) < REAPPLY_SAMPLE:
                sample.append((agency_id, agency_specs))
            if len(batch) == BUILD_BATCH_AGENCIES:
                await queue.put(batch)
                batch = []
        if batch:
            await queue.put(batch)
        for _ in workers:
            await queue.put(None)
        await asyncio.gather(*workers)
    finally:
        for worker in workers:
            worker.cancel()
    async with pool.acquire() as conn:
        # Some agencies have answered offers before: their record counts in ranking.
        agencies = await conn.fetch("SELECT agency_id FROM agency_profiles ORDER BY agency_id")
        await conn.executemany(
            "INSERT INTO agency_stats VALUES ($1, $2, $3, $4)",
            [
                (r["agency_id"], rng.randint(1, 40), rng.random(), rng.uniform(0.5, 48))
                for r in agencies
                if rng.random() < 0.3
            ],
        )
        # As autovacuum would after a bulk load: statistics for the planner, and the
        # visibility map that lets the radius lookup read its index alone.
        await conn.execute("VACUUM ANALYZE")
        built.seconds = time.perf_counter() - started
        built.reapply_ms = await _reapply(conn, sample, revision=2)
        built.coverage_rows = await conn.fetchval("SELECT count(*) FROM service_coverage")
        built.reach_rows = await conn.fetchval("SELECT count(*) FROM service_reach")
    return built


async def _reapply(
    conn: asyncpg.Connection, sample: list[tuple[str, list[ServiceSpec]]], revision: int
) -> float:
    """ms per agency to apply the same profile again under a new revision, one transaction."""
    again = [
        agency_profile(agency_id, *specs, revision=revision, name=f"Agency {agency_id}")
        for agency_id, specs in sample
    ]
    t0 = time.perf_counter()
    async with conn.transaction():
        for profile in again:
            await repo.apply_profile(conn, profile)
    return (time.perf_counter() - t0) * 1000 / len(again)


def need_rows(rng: random.Random, region: Region, count: int) -> list[dict[str, Any]]:
    """Referral rows as matching stores them (what need_view reads)."""
    rows = []
    for _ in range(count):
        category = rng.choice(CATEGORIES)
        consent = ConsentScope(
            consent_id=UUID(int=rng.getrandbits(128)),
            categories=frozenset({category}),
            expires_on=date(2027, 11, 23),
        )
        constraints = Constraints(
            insurance=rng.choice(tuple(Insurance)),
            mat_friendly_required=rng.random() < 0.15,
            gender_specific_preferred=rng.random() < 0.1,
        )
        rows.append(
            {
                "postal_code": rng.choice(region.codes),
                "category": category.value,
                "urgency": rng.choice(tuple(Urgency)).value,
                "county": None,  # from the ZIP code's place, as intake usually leaves it
                "languages": list(_weighted(rng, LANGUAGE_SETS)),
                "age_years": rng.randint(18, 70) if rng.random() < 0.9 else None,
                "gender": None,
                "constraints": constraints.model_dump(mode="json"),
                "consent": consent.model_dump(mode="json"),
                "tried": [],
            }
        )
    return rows


@dataclass
class SizeResult:
    size: int
    region: Region
    built: Built
    times_ms: list[float] = field(default_factory=list)
    candidates: list[int] = field(default_factory=list)
    in_area: list[int] = field(default_factory=list)
    eligible: list[int] = field(default_factory=list)
    query_ms: list[float] = field(default_factory=list)
    stats_ms: list[float] = field(default_factory=list)
    rank_ms: list[float] = field(default_factory=list)
    explain: dict[str, list[str]] = field(default_factory=dict)
    plans: str = ""  # generic/custom plans of the candidate query's cached statement

    @property
    def mean_ms(self) -> float:
        return statistics.fmean(self.times_ms)


class _RecordingConnection:
    """Passes fetch() through and remembers the query, so EXPLAIN reads the real SQL."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        self.calls.append((query, args))
        return await self.conn.fetch(query, *args)


CUSTOM = "custom plan (planned for these parameters)"
GENERIC = "generic plan (what a cached prepared statement may switch to)"


def _literal(value: Any) -> str:
    if isinstance(value, list):  # an array parameter, as a Postgres array literal
        value = "{" + ",".join('"' + str(v).replace('"', '\\"') + '"' for v in value) + "}"
    return "'" + str(value).replace("'", "''") + "'"


async def explain_candidates(
    conn: asyncpg.Connection, deps: Deps, ref: dict[str, Any]
) -> dict[str, list[str]]:
    """EXPLAIN ANALYZE of candidate_services' query for one need: the plan a one-off
    execution gets (custom) and the one a cached prepared statement may switch to (generic)."""
    need = need_view(deps, ref)
    recorder = _RecordingConnection(conn)
    await repo.candidate_services(
        recorder,  # type: ignore[arg-type]
        Area(need.category, need.postal_code, need.county, need.point),
    )
    query, args = recorder.calls[0]
    plans: dict[str, list[str]] = {}
    rows = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {query}", *args)
    plans[CUSTOM] = [r[0] for r in rows]
    await conn.execute(f"PREPARE bench_candidates AS {query}")
    try:
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        rows = await conn.fetch(
            "EXPLAIN (ANALYZE, BUFFERS) EXECUTE bench_candidates("
            + ", ".join(_literal(a) for a in args)
            + ")"
        )
        plans[GENERIC] = [r[0] for r in rows]
    finally:
        await conn.execute("RESET plan_cache_mode")
        await conn.execute("DEALLOCATE bench_candidates")
    return plans


@dataclass
class Directory:
    """A built directory in its own schema, and the needs timed against it."""

    result: SizeResult
    schema: str
    pool: asyncpg.Pool
    deps: Deps
    warmup: list[dict[str, Any]]
    needs: list[dict[str, Any]]


async def build_size(infra: Infrastructure, size: int) -> Directory:
    rng = random.Random(f"{SEED}-{size}")
    region = Region.for_services(size)
    schema, pool = await fresh_schema(infra.database_url, str(size))
    assert pool is not None
    built = await build_directory(pool, rng, region, size)
    deps = Deps(
        pool,
        ManualClock(BENCH_NOW),
        MatchingSettings(
            database_url=infra.database_url, kafka_bootstrap_servers=infra.kafka_bootstrap_servers
        ),
        region.places,
    )
    return Directory(
        SizeResult(size, region, built),
        schema,
        pool,
        deps,
        need_rows(rng, region, RANK_WARMUP),
        need_rows(rng, region, RANK_NEEDS),
    )


async def time_chunk(conn: asyncpg.Connection, d: Directory, needs: list[dict[str, Any]]) -> None:
    """Two passes over the same needs: rank_candidates as is (the headline figure); its
    steps timed apart."""
    deps, result = d.deps, d.result
    for ref in needs:
        need = need_view(deps, ref)
        t0 = time.perf_counter()
        await rank_candidates(Step(conn, deps.clock), deps, need)
        result.times_ms.append((time.perf_counter() - t0) * 1000)
    for ref in needs:
        need = need_view(deps, ref)
        t0 = time.perf_counter()
        services = await repo.candidate_services(
            conn, Area(need.category, need.postal_code, need.county, need.point)
        )
        t1 = time.perf_counter()
        stats = await repo.agency_stats(conn, sorted({s.agency_id for s in services}))
        t2 = time.perf_counter()
        ranking = rank(need, services, stats, deps.clock.now(), deps.settings.zone)
        t3 = time.perf_counter()
        result.query_ms.append((t1 - t0) * 1000)
        result.stats_ms.append((t2 - t1) * 1000)
        result.rank_ms.append((t3 - t2) * 1000)
        result.candidates.append(len(services))
        result.in_area.append(sum(1 for sv in services if covers(need, sv) is not None))
        result.eligible.append(len(ranking.candidates))


async def part1(infra: Infrastructure) -> list[SizeResult]:
    directories: list[Directory] = []
    try:
        for size in SIZES:
            sys.stderr.write(f"bench: part 1, building {size:,} services...\n")
            directories.append(await build_size(infra, size))
        sys.stderr.write("bench: part 1, timing needs...\n")
        # Timed as the service runs (services/cli.py): the heap built so far, here the
        # directories' specs, frozen out of collections. Left in, a full collection of it
        # (some 50 ms) fell on whichever need was being timed.
        gc.collect()
        settle_heap()
        async with contextlib.AsyncExitStack() as stack:
            conns = [await stack.enter_async_context(d.pool.acquire()) for d in directories]
            for conn, d in zip(conns, directories, strict=True):
                for ref in d.warmup:
                    await rank_candidates(Step(conn, d.deps.clock), d.deps, need_view(d.deps, ref))
            # Sizes take turns, RANK_CHUNK needs at a time, so drift on the machine (other
            # processes, Postgres' background work) falls on every size alike.
            for start in range(0, RANK_NEEDS, RANK_CHUNK):
                for conn, d in zip(conns, directories, strict=True):
                    await time_chunk(conn, d, d.needs[start : start + RANK_CHUNK])
            for conn, d in zip(conns, directories, strict=True):
                d.result.plans = await conn.fetchval(
                    "SELECT format('%s generic, %s custom', generic_plans, custom_plans) "
                    "FROM pg_prepared_statements WHERE statement LIKE '%FROM match_services s%' "
                    "AND statement NOT LIKE '%unnest(%'"
                )
                d.result.explain = await explain_candidates(conn, d.deps, d.needs[0])
        return [d.result for d in directories]
    finally:
        gc.unfreeze()  # part 1's leftovers can then be collected before part 2
        for d in directories:
            await d.pool.close()
            await drop_schema(infra.database_url, d.schema)


def _timing(plan: list[str], what: str) -> str:
    line = next((line for line in plan if line.strip().startswith(f"{what} Time:")), "")
    return line.split(":", 1)[1].strip() if line else "n/a"


def report_part1(results: list[SizeResult]) -> None:
    out("PART 1: candidate selection and ranking (handlers.rank_candidates), per need")
    out(
        f"  directory: {SERVICES_PER_ZIP} services per synthetic ZIP code ~{ZIP_SPACING_KM:g} km "
        f"apart, counties of {ZIPS_PER_COUNTY_SIDE}x{ZIPS_PER_COUNTY_SIDE} ZIPs, categories: "
        f"{', '.join(c.value for c in CATEGORIES)}"
    )
    out(
        "  each service: home ZIP + 0-3 neighbours; 10% + county, 10% + radius 5-15 km; "
        "1-2 of en/es/vi; 30% counted places; 60% schedules"
    )
    out(
        f"  needs: {RANK_NEEDS} timed after {RANK_WARMUP} warm-up, random ZIP of the region, "
        "random category;"
    )
    out(
        "    rank_candidates on one pooled connection per directory, no transaction, "
        f"ManualClock at {BENCH_NOW:%Y-%m-%d %H:%M} UTC;"
    )
    out(
        f"    the directories take turns, {RANK_CHUNK} needs at a time, so machine drift falls "
        "on all alike"
    )
    out()
    out(
        f"  build: apply_profile per agency, {BUILD_BATCH_AGENCIES} per transaction on "
        f"{BUILD_CONNECTIONS} connections, then VACUUM ANALYZE"
    )
    out(
        f"  {'services':>9} {'agencies':>9} {'ZIPs':>6} {'counties':>8} {'coverage rows':>13} "
        f"{'reach rows':>10} {'build s':>8} {'(generate)':>10} | {'apply_profile ms':>16}"
    )
    for r in results:
        b = r.built
        out(
            f"  {b.services:>9,} {b.agencies:>9,} {len(r.region.codes):>6,} "
            f"{r.region.counties:>8,} {b.coverage_rows:>13,} {b.reach_rows:>10,} "
            f"{b.seconds:>8.1f} {b.generate_seconds:>10.1f} | "
            f"{b.reapply_ms:>16.2f}"
        )
    out(
        "  coverage rows: a service's ZIP codes and counties; reach rows: a radius service's "
        "locations times the grid cells each circle touches."
    )
    out(
        f"  apply_profile ms: one agency's profile applied again on the finished directory "
        f"(mean of {REAPPLY_SAMPLE})."
    )
    out()
    out("  time per need (ms) and what each need considered:")
    out(
        f"  {'services':>9} {'mean':>6} {'p50':>6} {'p95':>6} {'max':>6} | "
        f"{'candidates':>10} {'in area':>7} {'ranked':>6} | {'query':>5} {'stats':>5} "
        f"{'rank':>5}"
    )
    for r in results:
        out(
            f"  {r.size:>9,} {r.mean_ms:>6.2f} {pct(r.times_ms, 0.5):>6.2f} "
            f"{pct(r.times_ms, 0.95):>6.2f} {max(r.times_ms):>6.2f} | "
            f"{statistics.fmean(r.candidates):>10.1f} {statistics.fmean(r.in_area):>7.1f} "
            f"{statistics.fmean(r.eligible):>6.1f} | "
            f"{statistics.fmean(r.query_ms):>5.2f} {statistics.fmean(r.stats_ms):>5.2f} "
            f"{statistics.fmean(r.rank_ms):>5.2f}"
        )
    out("  candidates: services candidate_services returned (mean per need); in area: those")
    out("    whose ZIP, county or radius actually reaches the need (ranking.covers); ranked:")
    out("    agencies left after eligibility. query / stats / rank: candidate_services,")
    out("    agency_stats and rank() timed apart in a second pass over the same needs.")
    out()
    small = min(results, key=lambda r: r.size)
    large = max(results, key=lambda r: r.size)
    if small is not large:
        ratio = large.mean_ms / small.mean_ms
        out(
            f"  time per need at {large.size:,} / at {small.size:,} services: {ratio:.2f}x "
            f"(mean {large.mean_ms:.2f} / {small.mean_ms:.2f} ms; target <= {RATIO_TARGET:g}x: "
            f"{'met' if ratio <= RATIO_TARGET else 'NOT met'})"
        )
        out(
            "  every size against the smallest: "
            + ", ".join(f"{r.size:,}: {r.mean_ms / small.mean_ms:.2f}x" for r in results)
        )
        out(
            "  time per need / candidates returned (ms): "
            + ", ".join(
                f"{r.mean_ms / max(statistics.fmean(r.candidates), 1e-9):.3f} at {r.size:,}"
                for r in results
            )
        )
        out()
    out("  the candidate query (repository.candidate_services) itself:")
    for r in results:
        custom = r.explain.get(CUSTOM, [])
        generic = r.explain.get(GENERIC, [])
        out(
            f"  {r.size:>9,}: EXPLAIN ANALYZE custom plan {_timing(custom, 'Planning')} planning "
            f"+ {_timing(custom, 'Execution')} execution; generic plan "
            f"{_timing(generic, 'Execution')} execution; the timing connection's cached "
            f"statement: {r.plans or 'n/a'} plans"
        )
    out()
    for name, plan in large.explain.items():
        out(f"  EXPLAIN (ANALYZE, BUFFERS) at {large.size:,} services, first timed need, {name}:")
        for line in plan:
            out(f"    {line}")
        out()


# --- part 2: matching's throughput against a bare consume-then-produce loop --------------

THROUGHPUT_NEEDS = env_int("BENCH_THROUGHPUT_NEEDS", 2000)
THROUGHPUT_WARMUP = env_int("BENCH_THROUGHPUT_WARMUP", 50)
PARTITIONS = 3
SHARE_TARGET = 0.30
DEMO_NEEDS = (
    (NeedCategory.PEER_SUPPORT, "97214"),
    (NeedCategory.COUNSELING, "97214"),
    (NeedCategory.EMPLOYMENT, "97214"),
    (NeedCategory.HOUSING, "97214"),
    (NeedCategory.PEER_SUPPORT, "97206"),
    (NeedCategory.PEER_SUPPORT, "97202"),
)
BASELINE_IN = "bench.baseline.needs"
BASELINE_OUT = "bench.baseline.out"
SOURCE = "/refnet/bench"
BASELINE_RUNS = 5
MATCHING_READY_S = 180
MATCHING_RUN_LIMIT_S = 300


def demo_need_records(rng: random.Random, count: int) -> list[tuple[bytes, bytes, Headers]]:
    """NeedSubmitted records in the demo region, keyed and encoded as intake's outbox does."""
    records = []
    now = datetime.now(UTC)
    for n in range(count):
        category, postal_code = DEMO_NEEDS[n % len(DEMO_NEEDS)]
        need = need_submitted(
            category,
            at=now,
            need_id=UUID(int=rng.getrandbits(128)),
            person_ref=UUID(int=rng.getrandbits(128)),
            postal_code=postal_code,
            age_years=rng.randint(20, 60),
            constraints=Constraints(insurance=Insurance.MEDICAID),
        )
        headers, value = encode(need, event_id=UUID(int=rng.getrandbits(128)), source=SOURCE,
                                time=now)  # fmt: skip
        records.append((str(need.need_id).encode(), value, headers))
    return records


@dataclass
class MatchingRun:
    needs: int
    seconds: float
    produce_seconds: float
    offered: int
    unmatched: int
    other: int
    complete: bool
    startup_seconds: float
    process_cpu_seconds: float
    machine_busy: float  # share of all CPUs busy during the timed run
    records_out: int  # outbox rows published during the timed run

    @property
    def rate(self) -> float:
        return self.needs / self.seconds


async def _progress(conn: asyncpg.Connection) -> tuple[int, int]:
    row = await conn.fetchrow(
        "SELECT (SELECT count(*) FROM referrals WHERE status <> 'submitted') AS decided, "
        "(SELECT count(*) FROM outbox WHERE published_at IS NULL AND rejected_at IS NULL) "
        "AS backlog"
    )
    assert row is not None
    return int(row["decided"]), int(row["backlog"])


async def _wait_settled(
    conn: asyncpg.Connection, decided: int, limit_s: float, proc: subprocess.Popen[bytes]
) -> bool:
    """Until ``decided`` needs have an outcome and the outbox is empty (all published)."""
    deadline = time.perf_counter() + limit_s
    while time.perf_counter() < deadline:
        now_decided, backlog = await _progress(conn)
        if now_decided >= decided and backlog == 0:
            return True
        if proc.poll() is not None:
            return False
        await asyncio.sleep(0.05)
    return False


def matching_env(infra: Infrastructure, run_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "REFNET_ENV": "local",
        "DATABASE_URL": infra.database_url,
        "KAFKA_BOOTSTRAP_SERVERS": infra.kafka_bootstrap_servers,
        "FAUST_DATADIR": str(run_dir / "matching-data"),
        "KAFKA_PARTITIONS": str(PARTITIONS),
        "LOG_LEVEL": "WARNING",
    }


async def run_matching(
    infra: Infrastructure,
    proc: subprocess.Popen[bytes],
    warmup: list[tuple[bytes, bytes, Headers]],
    records: list[tuple[bytes, bytes, Headers]],
    started: float,
) -> MatchingRun:
    bootstrap = infra.kafka_bootstrap_servers
    conn = await asyncpg.connect(infra.database_url, server_settings={"search_path": "matching"})
    try:
        before, _ = await _progress(conn)
        # Up means a first need's outcome is published; the warm-up needs settle first.
        await produce_all(bootstrap, NEEDS.name, warmup)
        if not await _wait_settled(conn, before + len(warmup), MATCHING_READY_S, proc):
            raise RuntimeError("matching did not settle the warm-up needs")
        startup = time.perf_counter() - started
        base, _ = await _progress(conn)
        published_before = await conn.fetchval(
            "SELECT count(*) FROM outbox WHERE published_at IS NOT NULL"
        )
        cpu0, (busy0, total0) = process_cpu_seconds(proc.pid), machine_ticks()
        t0 = time.perf_counter()
        await produce_all(bootstrap, NEEDS.name, records)
        produced = time.perf_counter() - t0
        complete = await _wait_settled(conn, base + len(records), MATCHING_RUN_LIMIT_S, proc)
        seconds = time.perf_counter() - t0
        cpu1, (busy1, total1) = process_cpu_seconds(proc.pid), machine_ticks()
        decided, _ = await _progress(conn)
        outcomes = await conn.fetch(
            "SELECT status, count(*) AS n FROM referrals WHERE need_id = ANY($1::uuid[]) "
            "GROUP BY status",
            [UUID(key.decode()) for key, _, _ in records],
        )
        by_status = {r["status"]: int(r["n"]) for r in outcomes}
        published = await conn.fetchval(
            "SELECT count(*) FROM outbox WHERE published_at IS NOT NULL"
        )
    finally:
        await conn.close()
    offered = by_status.pop("offered", 0)
    unmatched = by_status.pop("unmatched", 0)
    return MatchingRun(
        needs=decided - base,
        seconds=seconds,
        produce_seconds=produced,
        offered=offered,
        unmatched=unmatched,
        other=sum(by_status.values()),
        complete=complete,
        startup_seconds=startup,
        process_cpu_seconds=cpu1 - cpu0,
        machine_busy=(busy1 - busy0) / max(total1 - total0, 1),
        records_out=published - published_before,
    )


# --- part 2b: where the need handler spends its time, in this process ------------------

PROFILE_NEEDS = env_int("BENCH_PROFILE_NEEDS", 2000)
# Needs per batch in part 2b: a full batch, as matching takes them from a backlog.
PROFILE_BATCH = env_int(
    "BENCH_PROFILE_BATCH", MatchingSettings.model_fields["needs_batch_max"].default
)


@dataclass
class HandlerProfile:
    needs: int
    batch: int
    mean_ms: float  # per need, in batches of ``batch``
    cpu_ms: float  # this process's CPU per need (asyncpg and the handler's own Python)
    single_mean_ms: float  # per need, one need at a time
    single_cpu_ms: float
    statements_per_batch: float
    sql_ms_per_need: float  # client-side elapsed of every statement, round trip included
    top_statements: list[tuple[str, int, float]]  # (statement, count per batch, ms per need)
    relay_ms_per_need: float
    relay_records_per_need: float
    cprofile_own: list[str]
    cprofile_cumulative: list[str]


async def profile_handler(
    infra: Infrastructure, records: list[tuple[bytes, bytes, Headers]]
) -> HandlerProfile:
    """handle_needs_submitted on a fresh matching schema holding the demo directory, in
    batches of PROFILE_BATCH: timed (and one need at a time, to compare), then with every
    statement logged (and the outbox relay), then under cProfile."""
    schema, _ = await fresh_schema(infra.database_url, "profile", pool=False)
    pool = await create_pool(infra.database_url, schema, max_size=1)
    producer = AIOKafkaProducer(
        bootstrap_servers=infra.kafka_bootstrap_servers, acks="all", linger_ms=5
    )
    await producer.start()
    try:
        async with pool.acquire() as conn, conn.transaction():
            for profile in profiles(read_package(DEMO_PACKAGE), 1):
                await repo.apply_profile(conn, profile)
        settings = MatchingSettings(
            database_url=infra.database_url, kafka_bootstrap_servers=infra.kafka_bootstrap_servers
        )
        deps = Deps(pool, SystemClock(), settings, load_centroids())
        deliveries = [Delivery(decode(NEEDS, k, v, h)) for k, v, h in records]
        n = len(deliveries) // 4
        single, timed, logged, profiled = (deliveries[i * n : (i + 1) * n] for i in range(4))
        relay = OutboxRelay(pool, producer, infra.database_url, schema, 1.0)

        async def handle(share: list[Delivery], batch: int) -> None:
            for i in range(0, len(share), batch):
                await handle_needs_submitted(deps, share[i : i + batch])

        await handle(single[:30], 1)
        single_mean_ms, single_cpu_ms = await _timed(handle(single[30:], 1), n - 30)
        mean_ms, cpu_ms = await _timed(handle(timed, PROFILE_BATCH), n)
        while await relay.publish_pending():
            pass

        statements: dict[str, list[float]] = {}

        def note(query: Any) -> None:
            statements.setdefault(" ".join(query.query.split())[:90], []).append(
                query.elapsed * 1000
            )

        async with pool.acquire() as conn:
            conn.add_query_logger(note)
        await handle(logged, PROFILE_BATCH)
        async with pool.acquire() as conn:
            conn.remove_query_logger(note)
        r0 = time.perf_counter()
        rows = 0
        while published := await relay.publish_pending():
            rows += published
        relay_ms = (time.perf_counter() - r0) * 1000

        profiler = cProfile.Profile()
        profiler.enable()
        await handle(profiled, PROFILE_BATCH)
        profiler.disable()
        own, cumulative = io.StringIO(), io.StringIO()
        pstats.Stats(profiler, stream=own).sort_stats("tottime").print_stats(12)
        pstats.Stats(profiler, stream=cumulative).sort_stats("cumulative").print_stats(
            r"services/|shared/", 14
        )
    finally:
        await producer.stop()
        await pool.close()
        await drop_schema(infra.database_url, schema)
    batches = math.ceil(n / PROFILE_BATCH)
    top = sorted(statements.items(), key=lambda kv: -sum(kv[1]))
    return HandlerProfile(
        needs=n,
        batch=PROFILE_BATCH,
        mean_ms=mean_ms,
        cpu_ms=cpu_ms,
        single_mean_ms=single_mean_ms,
        single_cpu_ms=single_cpu_ms,
        statements_per_batch=sum(len(v) for v in statements.values()) / batches,
        sql_ms_per_need=sum(sum(v) for v in statements.values()) / n,
        top_statements=[(q, round(len(v) / batches), sum(v) / n) for q, v in top[:14]],
        relay_ms_per_need=relay_ms / n,
        relay_records_per_need=rows / n,
        cprofile_own=_cprofile_lines(own.getvalue()),
        cprofile_cumulative=_cprofile_lines(cumulative.getvalue()),
    )


async def _timed(work: Any, needs: int) -> tuple[float, float]:
    """Elapsed and this process's CPU, in ms per need."""
    t0, cpu0 = time.perf_counter(), time.process_time()
    await work
    return (
        (time.perf_counter() - t0) * 1000 / needs,
        (time.process_time() - cpu0) * 1000 / needs,
    )


def _cprofile_lines(text: str) -> list[str]:
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
    root = str(Path(__file__).parents[1]) + "/"
    stdlib = sysconfig.get_paths()["stdlib"] + "/"
    site = "site-packages/"
    trimmed = []
    for line in lines[start:]:
        if not line.strip():
            continue
        line = line.replace(root, "").replace(stdlib, "")
        if site in line:
            head, _, tail = line.partition(site)
            line = head[: head.rfind(" ") + 1] + tail
        trimmed.append(line)
    return trimmed


# --- part 2: orchestration and report --------------------------------------------------


@dataclass
class Throughput:
    baseline: Baseline  # the median run
    baseline_runs: list[Baseline]
    matching: MatchingRun | None
    handler: HandlerProfile
    value_bytes: float
    header_bytes: float
    matching_log: Path
    error: str | None = None


async def part2(infra: Infrastructure, run_dir: Path) -> Throughput:
    # The bare loop and the in-process profile run here, as the service runs in its own
    # process: with its collector settings, and without part 1's leftovers to walk.
    gc.collect()
    settle_heap()
    rng = random.Random(f"{SEED}-throughput")
    bootstrap = infra.kafka_bootstrap_servers
    records = demo_need_records(rng, THROUGHPUT_NEEDS)
    sys.stderr.write(f"bench: part 2, bare loop over {len(records):,} records...\n")
    await ensure_topics(bootstrap, [BASELINE_IN, BASELINE_OUT], PARTITIONS)
    await produce_all(bootstrap, BASELINE_IN, records)
    runs = [
        await bare_loop(bootstrap, BASELINE_IN, BASELINE_OUT, records, run)
        for run in range(BASELINE_RUNS)
    ]
    baseline = sorted(runs, key=lambda r: r.rate)[len(runs) // 2]
    sys.stderr.write("bench: part 2, starting matching and waiting for the warm-up needs...\n")
    log_path = run_dir / "matching.log"
    started = time.perf_counter()
    proc = spawn(
        [sys.executable, "-m", "services.cli", "matching"],
        log_path,
        env=matching_env(infra, run_dir),
        cwd=Path(__file__).parents[1],
    )
    matching: MatchingRun | None = None
    error = None
    try:
        warmup = demo_need_records(rng, THROUGHPUT_WARMUP)
        timed = demo_need_records(rng, THROUGHPUT_NEEDS)
        matching = await run_matching(infra, proc, warmup, timed, started)
    except Exception as exc:  # a benchmark reports what went wrong instead of asserting
        error = f"{type(exc).__name__}: {exc}"
    finally:
        stop_process(proc)
    sys.stderr.write("bench: part 2, profiling the need handler in-process...\n")
    handler = await profile_handler(infra, demo_need_records(rng, PROFILE_NEEDS))
    return Throughput(
        baseline,
        runs,
        matching,
        handler,
        statistics.fmean(len(value) for _, value, _ in records),
        statistics.fmean(sum(len(k) + len(v) for k, v in headers) for _, _, headers in records),
        log_path,
        error,
    )


def report_part2(t: Throughput) -> None:
    out("PART 2: matching service throughput vs a bare aiokafka consume-then-produce loop")
    out(
        f"  same broker, topics of {PARTITIONS} partitions, {THROUGHPUT_NEEDS:,} NeedSubmitted "
        f"records each (CloudEvents binary mode, key = need_id; value ~{t.value_bytes:.0f} B, "
        f"headers ~{t.header_bytes:.0f} B)"
    )
    out(
        "  needs: demo region (97214, 97206, 97202), peer-support / counseling / employment / "
        "housing, medicaid, ages 20-60, urgency soon"
    )
    out()
    b = t.baseline
    out("  bare loop: AIOKafkaConsumer in a consumer group (enable_auto_commit=False,")
    out(f"    auto_offset_reset=earliest) -> getmany(max_records={BASELINE_BATCH}) -> for each")
    out("    record, produce its key, value and headers to an output topic (AIOKafkaProducer")
    out("    acks=all, linger_ms=5, as matching's producer) -> wait for every ack of the batch")
    out("    -> commit the batch's offsets. Timed from the first record consumed to the last")
    out("    produce acknowledged. Input pre-loaded; each run a new consumer group; the median")
    out("    run counts:")
    for run in t.baseline_runs:
        out(
            f"    {run.needs:,} records in {run.seconds:.3f} s ({run.batches} batches): "
            f"{run.rate:,.0f} needs/s{'  <- median' if run is b else ''}"
        )
    out()
    out("  matching: `python -m services.cli matching` (Faust worker) as a child process,")
    out(
        f"    REFNET_ENV=local, KAFKA_PARTITIONS={PARTITIONS}, LOG_LEVEL=WARNING, other settings "
        "default; the demo directory seeded by local_stack.prepare()"
    )
    out("    timed from the first produce of the needs until every need has an outcome")
    out("    (offered or unmatched) and matching's outbox is empty, i.e. published with acks=all")
    m = t.matching
    if m is None:
        out(f"    FAILED: {t.error}; the log's end ({t.matching_log}):")
        for line in _tail(t.matching_log):
            out(f"      {line}")
    else:
        out(
            f"    up (warm-up of {THROUGHPUT_WARMUP} needs settled) "
            f"{m.startup_seconds:.1f} s after start"
        )
        state = "" if m.complete else f" (INCOMPLETE after {MATCHING_RUN_LIMIT_S} s)"
        out(
            f"    {m.needs:,} needs in {m.seconds:.2f} s{state} (producing them took "
            f"{m.produce_seconds:.2f} s): {m.rate:,.1f} needs/s"
        )
        out(
            f"    outcomes: {m.offered:,} offered, {m.unmatched:,} unmatched, {m.other:,} other; "
            f"{m.records_out:,} records published ({m.records_out / max(m.needs, 1):.1f} per need)"
        )
        out(
            f"    matching process CPU: {m.process_cpu_seconds:.1f} s = "
            f"{m.process_cpu_seconds / m.seconds:.0%} of one core, "
            f"{m.process_cpu_seconds / max(m.needs, 1) * 1000:.2f} ms per need; "
            f"machine busy: {m.machine_busy:.0%} of {os.cpu_count()} CPUs"
        )
        share = m.rate / b.rate
        out()
        out(
            f"  matching / bare loop: {m.rate:,.1f} / {b.rate:,.0f} needs/s = {share:.1%} "
            f"(target >= {SHARE_TARGET:.0%}: {'met' if share >= SHARE_TARGET else 'NOT met'})"
        )
    out()
    h = t.handler
    out("PART 2b: where handle_needs_submitted spends its time (in this process, one")
    out(
        "  connection, fresh matching schema with the demo directory, same kind of needs, no Kafka)"
    )
    out(
        f"  {h.needs} needs in batches of {h.batch}: {h.mean_ms:.2f} ms per need "
        f"-> at most {1000 / h.mean_ms:,.0f} needs/s; CPU in this process {h.cpu_ms:.2f} ms "
        f"per need"
    )
    out(
        f"  one need at a time: {h.single_mean_ms:.2f} ms per need -> at most "
        f"{1000 / h.single_mean_ms:,.0f} needs/s; CPU {h.single_cpu_ms:.2f} ms per need"
    )
    out(
        f"  statements per batch: {h.statements_per_batch:.1f}, their client-side time "
        f"{h.sql_ms_per_need:.2f} ms per need (round trips included)"
    )
    out(
        f"  outbox relay afterwards: {h.relay_records_per_need:.1f} records per need, "
        f"{h.relay_ms_per_need:.2f} ms per need"
    )
    out("  statements by time per need:   per batch  ms/need")
    for query, count, ms in h.top_statements:
        out(f"    {query[:70]:<70} {count:>3} {ms:>7.3f}")
    out(f"  cProfile over {h.needs} needs in batches of {h.batch}, by own time:")
    for line in h.cprofile_own:
        out(f"    {line[:150]}")
    out("  cProfile, services/ and shared/ by cumulative time (CPU while running; an await")
    out("  ends a call):")
    for line in h.cprofile_cumulative:
        out(f"    {line[:150]}")
    out()


def _tail(path: Path, lines: int = 25) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except FileNotFoundError:
        return ["(no log)"]


# --- main --------------------------------------------------------------------------------


def main() -> None:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="refnet-bench-") as tmp:
        run_dir = Path(tmp)
        # Embedded (or testcontainers) only: never a DATABASE_URL from the caller's shell.
        infra = provision(run_dir / "infra", env={})
        try:
            out("refnet matching benchmark")
            out(f"  machine: {os.cpu_count()} CPU(s), {platform.machine()}, {platform.system()}")
            out(f"  python: {platform.python_version()} ({sys.executable})")
            out(f"  postgres: {infra.postgres_source}, broker: {infra.kafka_source} (127.0.0.1)")
            out(f"  settings: seed {SEED}")
            out(
                f"    part 1: {' / '.join(f'{s:,}' for s in SIZES)} services, {RANK_NEEDS} needs "
                f"(+{RANK_WARMUP} warm-up) each"
            )
            out(
                f"    part 2: {THROUGHPUT_NEEDS:,} needs (+{THROUGHPUT_WARMUP} warm-up), "
                f"{PARTITIONS} partitions, bare loop: median of {BASELINE_RUNS} runs; "
                f"part 2b: {PROFILE_NEEDS // 4} needs per pass, batches of {PROFILE_BATCH}"
            )
            out()
            if SIZES:
                report_part1(asyncio.run(part1(infra)))
            if THROUGHPUT_NEEDS:
                sys.stderr.write("bench: part 2, migrating, creating topics, seeding the demo...\n")
                prepare(infra.database_url, infra.kafka_bootstrap_servers, PARTITIONS)
                report_part2(asyncio.run(part2(infra, run_dir)))
        finally:
            infra.stop()
    out(f"total run time: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
