"""The operator dashboard: pipeline health from each service's /readyz, the dead letters on
every DLQ, and the referral funnel and response times from intake's own tables.

Each part is read on its own and fails on its own: a service that does not answer shows as
unreachable, a broker that does not answer leaves the dead letters unread, and the rest of
the page still renders."""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import httpx
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, ValidationError

from services.intake import repository as repo
from services.intake.charts import BarChart, columns, horizontal_bars
from services.intake.settings import IntakeSettings
from services.intake.tracker import humanise
from shared import dlq

log = logging.getLogger(__name__)

# A health answer slower than this shows the service as unreachable: the page must not hang.
HEALTH_TIMEOUT_S = 2.0
DLQ_READ_TIMEOUT_S = 5.0
DEFAULT_DAYS, MAX_DAYS = 30, 365

# The statuses by which a need has reached each stage of the funnel: an accepted need was
# offered first, a completed one accepted. Anything after acceptance (a later failure or
# cancellation) still counts as accepted.
_AFTER_ACCEPTANCE = ["accepted", "in_progress", "on_hold", "completed", "failed"]
REACHED = {
    "offered": ["offered", "declined", "expired", *_AFTER_ACCEPTANCE],
    "accepted": _AFTER_ACCEPTANCE,
    "completed": ["completed"],
}
FUNNEL_STAGES = (
    ("submitted", "Submitted"),
    ("offered", "Offered"),
    ("accepted", "Accepted"),
    ("completed", "Completed"),
)
# Time-to-accept buckets: (upper bound in seconds, label); the last has no bound.
TIME_BUCKETS: tuple[tuple[float, str], ...] = (
    (15 * 60, "< 15 min"),
    (3600, "15-60 min"),
    (4 * 3600, "1-4 h"),
    (24 * 3600, "4-24 h"),
    (3 * 86400, "1-3 days"),
    (7 * 86400, "3-7 days"),
    (math.inf, "7+ days"),
)
# The checks the /readyz contract names, in the order the page shows them.
CHECK_ORDER = ("postgres", "kafka", "consumer", "outbox_backlog", "consumer_lag")
CHECK_LABELS = {
    "postgres": "PostgreSQL",
    "kafka": "Kafka",
    "consumer": "Consumer",
    "outbox_backlog": "Outbox backlog",
    "consumer_lag": "Consumer lag",
}


# --- pipeline health -------------------------------------------------------------------------


class Check(BaseModel):
    model_config = ConfigDict(extra="ignore")

    ok: bool
    detail: str = ""
    value: int | None = None
    threshold: int | None = None
    per_topic: dict[str, int] = {}


class Readiness(BaseModel):
    """A service's /readyz answer (200 ready, 503 not), read leniently."""

    model_config = ConfigDict(extra="ignore")

    service: str
    ready: bool
    checks: dict[str, Check] = {}


@dataclass(frozen=True)
class ServiceHealth:
    name: str
    state: str  # ready, not-ready or unreachable
    detail: str  # why unreachable
    checks: list[tuple[str, str, Check]] = field(default_factory=list)  # (key, label, check)

    def check(self, name: str) -> Check | None:
        return next((c for key, _, c in self.checks if key == name), None)

    @property
    def outbox_backlog(self) -> Check | None:
        return self.check("outbox_backlog")

    @property
    def consumer_lag(self) -> Check | None:
        return self.check("consumer_lag")


def _ordered(checks: dict[str, Check]) -> list[tuple[str, str, Check]]:
    names = [n for n in CHECK_ORDER if n in checks] + sorted(set(checks) - set(CHECK_ORDER))
    return [(n, CHECK_LABELS.get(n, n.replace("_", " ").capitalize()), checks[n]) for n in names]


async def _readiness(name: str, client: httpx.AsyncClient) -> ServiceHealth:
    try:
        response = await asyncio.wait_for(client.get("/readyz"), HEALTH_TIMEOUT_S)
    except TimeoutError:
        return ServiceHealth(name, "unreachable", f"no answer in {HEALTH_TIMEOUT_S:g} s")
    except Exception as exc:  # refused, reset, DNS: the service is not there to ask
        return ServiceHealth(name, "unreachable", f"{type(exc).__name__}: {exc}"[:200])
    if response.status_code not in (200, 503):
        return ServiceHealth(name, "unreachable", f"/readyz answered {response.status_code}")
    try:
        answer = Readiness.model_validate_json(response.content)
    except ValidationError:
        return ServiceHealth(name, "unreachable", "/readyz answered something unexpected")
    ready = answer.ready and response.status_code == 200
    return ServiceHealth(name, "ready" if ready else "not-ready", "", _ordered(answer.checks))


async def pipeline_health(app: FastAPI, settings: IntakeSettings) -> list[ServiceHealth]:
    """Each service's readiness, asked at once. Intake answers in-process, through its own
    app (the same route, without a trip over the network)."""
    own = httpx.ASGITransport(app=app)
    async with (
        httpx.AsyncClient(transport=own, base_url="http://intake") as intake,
        httpx.AsyncClient(base_url=settings.matching_url, timeout=HEALTH_TIMEOUT_S) as matching,
        httpx.AsyncClient(
            base_url=settings.notifications_url, timeout=HEALTH_TIMEOUT_S
        ) as notifications,
    ):
        found = await asyncio.gather(
            _readiness("intake", intake),
            _readiness("matching", matching),
            _readiness("notifications", notifications),
        )
    return list(found)


# --- dead letters ----------------------------------------------------------------------------


@dataclass(frozen=True)
class DeadLetters:
    listing: dlq.Listing | None
    error: str | None  # why they could not be read


async def dead_letters(pool: asyncpg.Pool, settings: IntakeSettings) -> DeadLetters:
    try:
        listing = await asyncio.wait_for(
            dlq.read_dead_letters(settings, timeout_s=DLQ_READ_TIMEOUT_S),
            DLQ_READ_TIMEOUT_S + 10,
        )
    except Exception as exc:  # the broker is down or refuses: say so, show the rest
        log.warning("could not read the DLQs: %s", exc)
        return DeadLetters(None, f"{type(exc).__name__}: {exc}"[:300] or "no answer")
    async with pool.acquire() as conn:
        done = await dlq.replays(conn)
    return DeadLetters(dlq.with_replays(listing, done), None)


# --- the referral funnel and response times --------------------------------------------------


@dataclass(frozen=True)
class AgencyRow:
    agency_id: str
    agency_name: str | None
    offers: int
    accepted: int
    declined: int
    expired: int
    median_response_s: float | None

    @property
    def unanswered(self) -> int:
        """Still open, or withdrawn (another agency took the need, or consent was revoked)."""
        return self.offers - self.accepted - self.declined - self.expired

    @property
    def acceptance_rate(self) -> float | None:
        return self.accepted / self.offers if self.offers else None

    @property
    def median_response(self) -> str:
        if self.median_response_s is None:
            return "-"
        return humanise(timedelta(seconds=self.median_response_s))


@dataclass(frozen=True)
class Referrals:
    days: int
    since: datetime
    funnel: list[tuple[str, str, int]]  # (stage, label, needs)
    funnel_chart: BarChart
    accepted_times: list[float]  # seconds, sorted
    time_buckets: list[tuple[str, int]]
    time_chart: BarChart
    agencies: list[AgencyRow]

    @property
    def median_to_accept(self) -> str | None:
        return _duration(percentile(self.accepted_times, 0.5))

    @property
    def p90_to_accept(self) -> str | None:
        return _duration(percentile(self.accepted_times, 0.9))


def _duration(seconds: float | None) -> str | None:
    return None if seconds is None else humanise(timedelta(seconds=seconds))


def percentile(sorted_values: list[float], q: float) -> float | None:
    """The nearest-rank percentile of already sorted values; None for none."""
    if not sorted_values:
        return None
    rank = max(math.ceil(q * len(sorted_values)), 1)
    return sorted_values[rank - 1]


def bucket_times(seconds: list[float]) -> list[tuple[str, int]]:
    counts = dict.fromkeys((label for _, label in TIME_BUCKETS), 0)
    for value in seconds:
        label = next(label for bound, label in TIME_BUCKETS if value < bound)
        counts[label] += 1
    return list(counts.items())


def window_days(raw: str | None) -> int:
    """The ?days= window: a whole number of days from 1 to MAX_DAYS, else the default."""
    try:
        days = int(raw) if raw else DEFAULT_DAYS
    except ValueError:
        return DEFAULT_DAYS
    return min(max(days, 1), MAX_DAYS)


async def referrals(pool: asyncpg.Pool, now: datetime, days: int) -> Referrals:
    since = now - timedelta(days=days)
    async with pool.acquire() as conn:
        counts = await repo.referral_funnel(conn, since, REACHED)
        accepted_times = await repo.times_to_accept(conn, since)
        rows = await repo.agency_responses(conn, since)
    funnel = [(stage, label, counts[stage]) for stage, label in FUNNEL_STAGES]
    buckets = bucket_times(accepted_times)
    agencies = [
        AgencyRow(
            agency_id=row["agency_id"],
            agency_name=row["agency_name"],
            offers=int(row["offers"]),
            accepted=int(row["accepted"]),
            declined=int(row["declined"]),
            expired=int(row["expired"]),
            median_response_s=(
                None if row["median_response_s"] is None else float(row["median_response_s"])
            ),
        )
        for row in rows
    ]
    return Referrals(
        days=days,
        since=since,
        funnel=funnel,
        funnel_chart=horizontal_bars(
            "funnel-chart",
            f"Referral funnel, needs submitted in the last {days} days",
            [(label, n) for _, label, n in funnel],
            unit="needs",
        ),
        accepted_times=accepted_times,
        time_buckets=buckets,
        time_chart=columns(
            "time-to-accept-chart",
            f"Time from submission to acceptance, needs submitted in the last {days} days",
            buckets,
            unit="needs",
        ),
        agencies=agencies,
    )


async def dashboard(
    app: FastAPI, pool: asyncpg.Pool, settings: IntakeSettings, now: datetime, days: int
) -> dict[str, Any]:
    """Everything the page shows, each part read at the same time."""
    health, letters, numbers = await asyncio.gather(
        pipeline_health(app, settings), dead_letters(pool, settings), referrals(pool, now, days)
    )
    return {"services": health, "dead_letters": letters, "referrals": numbers}
