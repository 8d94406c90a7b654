"""Reminders benchmark: `python -m bench.reminders` (or `make bench-reminders`) prints a
plain-text report.

Drains 100,000 due aftercare check-in reminders (notifications' scheduler, run_due_jobs)
into the local SMTP sink and reports reminders per second, against the sink's own raw
acceptance rate measured in the same run: pre-built messages of the same shape sent as fast
as one kept-open SMTP connection (and two) allows.

Everything runs on 127.0.0.1: embedded Postgres (started here, stopped at the end) and the
SMTP sink (aiosmtpd in a thread of this process, writing every message as .eml). Intake's
contact lookup is replaced by an in-memory contact book. Benchmarks measure and print; they
never assert.
"""

from __future__ import annotations

import asyncio
import email.policy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import aiosmtplib
import asyncpg

from services.notifications.app import close_deps
from services.notifications.channels import EmailChannel, message_id
from services.notifications.contacts import Contact, ContactRefused
from services.notifications.jobs import About, JobKind, job_id
from services.notifications.links import CHECK_IN, Link, Links
from services.notifications.messages import category_label, render
from services.notifications.scheduler import Deps, run_due_jobs
from services.notifications.settings import NotificationsSettings
from services.notifications.sms import SmsChannel
from services.notifications.webhooks import WebhookSender
from services.smtp_sink import SmtpSink
from shared.clock import ManualClock
from shared.db import create_pool, migrate
from shared.embedded import free_port
from shared.infra import Infrastructure, provision

MIGRATIONS = Path(__file__).parents[1] / "services" / "notifications" / "migrations"


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def _env_instances() -> tuple[int, ...]:
    raw = os.environ.get("BENCH_INSTANCES", "1,2")
    return tuple(int(part) for part in raw.split(",") if part.strip())


# --- settings (BENCH_* environment variables override them, for quicker trial runs) --------

REMINDERS = _env_int("BENCH_REMINDERS", 100_000)  # due reminders drained per scheduler run
BASELINE_MESSAGES = _env_int("BENCH_SMTP_BASELINE", 20_000)  # raw sends per baseline run
PROFILE_REMINDERS = _env_int("BENCH_PROFILE_REMINDERS", 2_000)  # statements counted over these
INSTANCES = _env_instances()  # scheduler instances per run, one run each
BATCH_SIZE = _env_int("BENCH_BATCH_SIZE", 200)  # scheduler_batch_size
# The lease must outlast a batch of worst-case sends: batch x the slowest channel timeout
# (15 s, the SMTP and SMS defaults), plus a minute.
LEASE_S = BATCH_SIZE * 15.0 + 60
PROGRESS_EVERY = 10_000
# 10:00 in the network's zone (America/Los_Angeles), a Monday: outside quiet hours.
BENCH_NOW = datetime(2026, 11, 23, 18, tzinfo=UTC)
ZONE = "America/Los_Angeles"
AGENCY_NAME = "Harbor Light Recovery Center"
CHECK_IN_DAY = 7
MAIL_FROM = "refnet@refnet.local"
LINK_SECRET = "bench-link-secret-" + "l" * 32
INTERNAL_TOKEN = "bench-internal-token-" + "i" * 32
PUBLIC_URL = "https://notifications.refnet.example"


def out(line: str = "") -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def note(line: str) -> None:
    sys.stderr.write(f"bench: {line}\n")
    sys.stderr.flush()


# --- machine and process figures -----------------------------------------------------------


def _machine_ticks() -> tuple[int, int]:
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def _proc_cpu(pid: int, *, children: bool = False) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    if children:  # children that have exited and been reaped count here
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


class PostgresCpu:
    """CPU seconds of every Postgres process (the postmaster, its live children and those it
    has reaped), read from /proc; None when Postgres is not a local process we can see."""

    def __init__(self, postmaster: int | None) -> None:
        self.postmaster = postmaster

    @classmethod
    async def find(cls, conn: asyncpg.Connection) -> PostgresCpu:
        try:
            data_dir = await conn.fetchval("SHOW data_directory")
            pid = int((Path(data_dir) / "postmaster.pid").read_text().split()[0])
            _proc_cpu(pid)
            return cls(pid)
        except (OSError, ValueError, IndexError, asyncpg.PostgresError):
            return cls(None)

    def seconds(self) -> float | None:
        if self.postmaster is None:
            return None
        total = _proc_cpu(self.postmaster, children=True)
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == self.postmaster:
                    total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            except (OSError, IndexError, ValueError):
                continue  # exited meanwhile
        return total


@dataclass
class Usage:
    """What a timed stretch cost: this process's CPU (every thread: the scheduler or SMTP
    client and the sink), Postgres' CPU, and how busy the whole machine was."""

    process_s: float
    postgres_s: float | None
    machine_busy: float


class Meter:
    def __init__(self, pg: PostgresCpu) -> None:
        self._pg = pg
        self._cpu0 = time.process_time()
        self._pg0 = pg.seconds()
        self._ticks0 = _machine_ticks()

    def stop(self) -> Usage:
        busy1, total1 = _machine_ticks()
        pg1 = self._pg.seconds()
        return Usage(
            time.process_time() - self._cpu0,
            pg1 - self._pg0 if pg1 is not None and self._pg0 is not None else None,
            (busy1 - self._ticks0[0]) / max(total1 - self._ticks0[1], 1),
        )


# --- the sink and the messages -------------------------------------------------------------


def start_sink(run_dir: Path, tag: str) -> SmtpSink:
    """A fresh sink per measurement, so each counts only its own messages and writes into an
    empty directory: the same cost for the baseline and the scheduler."""
    sink = SmtpSink(run_dir / f"mail-{tag}", free_port())
    sink.start()
    return sink


def received_ids(sink: SmtpSink) -> Counter[str]:
    return Counter(str(m["Message-ID"]) for m in sink.messages)


def mean_file_bytes(directory: Path) -> float:
    sizes = [entry.stat().st_size for entry in os.scandir(directory)]
    return sum(sizes) / max(len(sizes), 1)


def reminder_like(links: Links, key: UUID, to: str) -> bytes:
    """A message of a reminder's shape, as EmailChannel builds it: the check-in template
    rendered with a signed link, the same headers, Message-ID set from the key."""
    text = render(
        "person_check_in.email",
        "en",
        name="Mari",
        agency_name=AGENCY_NAME,
        category_label=category_label("aftercare"),
        day=CHECK_IN_DAY,
        link_days=14,
        link=links.url(Link(key, uuid4(), CHECK_IN, day=CHECK_IN_DAY)),
    )
    message = EmailMessage()
    message["From"] = MAIL_FROM
    message["To"] = to
    message["Subject"] = text.subject
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = message_id(str(key))
    message.set_content(text.body)
    return message.as_bytes(policy=email.policy.SMTP)


# --- part 1: the sink's raw acceptance rate ------------------------------------------------


@dataclass
class RawRun:
    connections: int
    messages: int
    seconds: float
    usage: Usage
    received: int
    distinct: int
    message_bytes: float

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


async def raw_rate(run_dir: Path, pg: PostgresCpu, connections: int, count: int) -> RawRun:
    """``count`` pre-built messages over ``connections`` kept-open aiosmtplib connections,
    each sending its share one after another (sendmail: MAIL, RCPT, DATA, the message)."""
    links = Links(LINK_SECRET, ManualClock(BENCH_NOW), 14, PUBLIC_URL)
    messages = [
        (f"p{key.hex[:10]}@example.net", reminder_like(links, key, f"p{key.hex[:10]}@example.net"))
        for key in (uuid4() for _ in range(count))
    ]
    sink = start_sink(run_dir, f"raw-{connections}")
    clients = []
    try:
        for _ in range(connections):
            smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=sink.port, timeout=15)
            await smtp.connect()
            clients.append(smtp)

        async def send_share(smtp: aiosmtplib.SMTP, share: list[tuple[str, bytes]]) -> None:
            for to, raw in share:
                await smtp.sendmail(MAIL_FROM, [to], raw)

        meter = Meter(pg)
        t0 = time.perf_counter()
        await asyncio.gather(
            *(send_share(smtp, messages[i::connections]) for i, smtp in enumerate(clients))
        )
        seconds = time.perf_counter() - t0
        usage = meter.stop()
    finally:
        for smtp in clients:
            await smtp.quit()
        sink.stop()
    received = received_ids(sink)
    return RawRun(
        connections,
        count,
        seconds,
        usage,
        sum(received.values()),
        len(received),
        mean_file_bytes(sink.mail_dir),
    )


# --- part 2: the scheduler draining due reminders ------------------------------------------


class BenchContactBook:
    """Intake's contact lookup stood in for by a dict (the shape of tests/contacts.py): in
    production each send asks intake over HTTP, which this figure leaves out."""

    def __init__(self) -> None:
        self.contacts: dict[UUID, Contact] = {}

    def add(self, need_id: UUID, address: str) -> None:
        self.contacts[need_id] = Contact("email", address, "Mari")

    async def contact_for(self, need_id: UUID, purpose: str) -> Contact:
        try:
            return self.contacts[need_id]
        except KeyError:
            raise ContactRefused("intake 404: unknown need", permanent=False) from None

    async def close(self) -> None:
        return None


def notifications_settings(smtp_port: int) -> NotificationsSettings:
    """As tests/integration/conftest.py notifications_settings, without SMS."""
    return NotificationsSettings(
        database_url="postgresql://unused",
        kafka_bootstrap_servers="unused",
        smtp_host="127.0.0.1",
        smtp_port=smtp_port,
        mail_from=MAIL_FROM,
        link_secret=LINK_SECRET,  # type: ignore[arg-type]
        internal_api_token=INTERNAL_TOKEN,  # type: ignore[arg-type]
        inbox_secret_key="bench-inbox-secret-" + "k" * 32,  # type: ignore[arg-type]
        public_url=PUBLIC_URL,
        local_timezone=ZONE,
        scheduler_batch_size=BATCH_SIZE,
        scheduler_lease_s=LEASE_S,
    )


def notifications_deps(
    pool: asyncpg.Pool,
    clock: ManualClock,
    settings: NotificationsSettings,
    contacts: BenchContactBook,
    email_channel: EmailChannel | None = None,
) -> Deps:
    """As tests/integration/conftest.py notifications_deps (and the service's build_deps),
    with the in-memory contact book."""
    return Deps(
        pool=pool,
        clock=clock,
        settings=settings,
        email=email_channel or EmailChannel(settings),
        contacts=contacts,
        links=Links(
            settings.link_secret.get_secret_value(),
            clock,
            settings.link_max_age_days,
            settings.public_url,
        ),
        sms=SmsChannel.from_settings(settings),
        webhooks=WebhookSender(settings.webhook_timeout_s),
    )


async def drop_schema(database_url: str, schema: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def fresh_schema(database_url: str, tag: str) -> str:
    schema = f"bench_reminders_{tag}"
    await drop_schema(database_url, schema)
    await asyncio.to_thread(migrate, database_url, schema, MIGRATIONS)
    return schema


async def given_due_check_ins(
    pool: asyncpg.Pool, contacts: BenchContactBook, count: int, now: datetime
) -> set[str]:
    """As tests/integration/test_scheduler.py given_many_due_check_ins: each an aftercare
    need remembered with contact channel email, and its day-7 check-in due now. Loaded by
    COPY (jobs through a temporary table: COPY has no binary encoder for jsonb here)."""
    payload = json.dumps({"about": "check-in", "day": CHECK_IN_DAY, "agency_name": AGENCY_NAME})
    rows, jobs = [], []
    for _ in range(count):
        need_id = uuid4()
        contacts.add(need_id, f"p{need_id.hex[:10]}@example.net")
        rows.append((need_id, uuid4(), "worker@refnet.local", "aftercare", "soon", "email"))
        jobs.append(
            (
                job_id(need_id, About.CHECK_IN, CHECK_IN_DAY),
                JobKind.PERSON_MESSAGE.value,
                need_id,
                now,
                payload,
            )
        )
    async with pool.acquire() as conn:
        async with conn.transaction():
            await conn.copy_records_to_table(
                "need_referrers",
                records=rows,
                columns=[
                    "need_id",
                    "worker_ref",
                    "notify_email",
                    "category",
                    "urgency",
                    "contact_channel",
                ],
            )
            await conn.execute(
                "CREATE TEMP TABLE bench_jobs (job_id uuid, kind text, need_id uuid, "
                "due_at timestamptz, payload text) ON COMMIT DROP"
            )
            await conn.copy_records_to_table(
                "bench_jobs",
                records=jobs,
                columns=["job_id", "kind", "need_id", "due_at", "payload"],
            )
            await conn.execute(
                "INSERT INTO scheduled_jobs (job_id, kind, need_id, due_at, payload) "
                "SELECT job_id, kind, need_id, due_at, payload::jsonb FROM bench_jobs"
            )
        await conn.execute("ANALYZE need_referrers")
        await conn.execute("ANALYZE scheduled_jobs")
    return {message_id(str(job[0])) for job in jobs}


class Progress:
    def __init__(self, label: str, total: int) -> None:
        self.label, self.total, self.done = label, total, 0
        self.started = time.perf_counter()
        self._next = PROGRESS_EVERY

    def add(self, count: int) -> None:
        self.done += count
        if self.done >= self._next:
            elapsed = time.perf_counter() - self.started
            note(
                f"{self.label}: {self.done:,} / {self.total:,} reminders in {elapsed:.0f} s "
                f"({self.done / elapsed:,.0f}/s)"
            )
            while self._next <= self.done:
                self._next += PROGRESS_EVERY


async def drain(deps: Deps, progress: Progress) -> tuple[int, int, float]:
    """run_due_jobs until it claims nothing: (jobs claimed, claims, when the last claimed
    batch was finished)."""
    claimed = claims = 0
    last = time.perf_counter()
    while batch := await run_due_jobs(deps):
        claimed += batch
        claims += 1
        last = time.perf_counter()
        progress.add(batch)
    return claimed, claims, last


@dataclass
class DrainRun:
    instances: int
    reminders: int
    seconds: float  # from the first claim to the last claimed batch finished
    usage: Usage
    insert_seconds: float
    claimed: list[int]  # per instance
    claims: int
    jobs: dict[str, int]  # scheduled_jobs by status afterwards
    deliveries_sent: int
    deliveries_other: int
    repeats: int
    received: int  # messages the sink got
    distinct: int  # distinct Message-IDs among them
    expected_received: int  # distinct Message-IDs that are the jobs' keys
    message_bytes: float

    @property
    def rate(self) -> float:
        return self.reminders / self.seconds

    @property
    def duplicates(self) -> int:
        return self.received - self.distinct

    @property
    def lost(self) -> int:
        return self.reminders - self.expected_received


async def scheduler_run(
    infra: Infrastructure, run_dir: Path, pg: PostgresCpu, instances: int, count: int
) -> DrainRun:
    """``count`` due reminders in a fresh schema, drained by ``instances`` schedulers at once,
    each with its own pool, Deps and SMTP connection (as separate services would be; here
    they share this process's event loop)."""
    tag = f"{instances}x"
    schema = await fresh_schema(infra.database_url, tag)
    clock = ManualClock(BENCH_NOW)
    contacts = BenchContactBook()
    pools = [await create_pool(infra.database_url, schema) for _ in range(instances)]
    sink = start_sink(run_dir, tag)
    deps: list[Deps] = []
    try:
        note(f"{tag}: inserting {count:,} due check-ins...")
        i0 = time.perf_counter()
        expected = await given_due_check_ins(pools[0], contacts, count, clock.now())
        insert_seconds = time.perf_counter() - i0
        settings = notifications_settings(sink.port)
        deps = [notifications_deps(pool, clock, settings, contacts) for pool in pools]
        note(f"{tag}: draining with {instances} scheduler instance(s)...")
        progress = Progress(tag, count)
        meter = Meter(pg)
        t0 = time.perf_counter()
        results = await asyncio.gather(*(drain(d, progress) for d in deps))
        seconds = max(last for _, _, last in results) - t0
        usage = meter.stop()
        async with pools[0].acquire() as conn:
            jobs = {
                r["status"]: r["n"]
                for r in await conn.fetch(
                    "SELECT status, count(*) AS n FROM scheduled_jobs GROUP BY status"
                )
            }
            delivered = await conn.fetchrow(
                "SELECT count(*) FILTER (WHERE status = 'sent') AS sent, "
                "count(*) FILTER (WHERE status <> 'sent') AS other, "
                "coalesce(sum(repeats), 0) AS repeats FROM deliveries"
            )
    finally:
        for d in deps:
            await close_deps(d)
        for pool in pools:
            await pool.close()
        sink.stop()
    await drop_schema(infra.database_url, schema)
    received = received_ids(sink)
    return DrainRun(
        instances=instances,
        reminders=count,
        seconds=seconds,
        usage=usage,
        insert_seconds=insert_seconds,
        claimed=[c for c, _, _ in results],
        claims=sum(n for _, n, _ in results),
        jobs=jobs,
        deliveries_sent=delivered["sent"],
        deliveries_other=delivered["other"],
        repeats=delivered["repeats"],
        received=sum(received.values()),
        distinct=len(received),
        expected_received=len(expected & received.keys()),
        message_bytes=mean_file_bytes(sink.mail_dir),
    )


# --- part 3: what one reminder costs: statements, round trips, where the time goes ---------


class TimedEmail(EmailChannel):
    """EmailChannel, timing its sends (building the message included)."""

    def __init__(self, settings: NotificationsSettings) -> None:
        super().__init__(settings)
        self.seconds = 0.0

    async def send(self, to: str, subject: str, body: str, key: str) -> str:
        t0 = time.perf_counter()
        try:
            return await super().send(to, subject, body, key)
        finally:
            self.seconds += time.perf_counter() - t0


@dataclass
class Profile:
    reminders: int
    seconds: float
    statements: dict[str, list[float]] = field(default_factory=dict)
    smtp_seconds: float = 0.0

    @property
    def statement_count(self) -> int:
        return sum(len(v) for v in self.statements.values())

    @property
    def sql_seconds(self) -> float:
        return sum(sum(v) for v in self.statements.values()) / 1000


async def profile_run(infra: Infrastructure, run_dir: Path, count: int) -> Profile:
    """One instance on a pool of one connection with every statement logged (asyncpg's
    query logger: each is one round trip, BEGIN, COMMIT and the pool's reset included)."""
    schema = await fresh_schema(infra.database_url, "profile")
    clock = ManualClock(BENCH_NOW)
    contacts = BenchContactBook()
    pool = await create_pool(infra.database_url, schema, max_size=1)
    sink = start_sink(run_dir, "profile")
    settings = notifications_settings(sink.port)
    email_channel = TimedEmail(settings)
    deps = notifications_deps(pool, clock, settings, contacts, email_channel)
    profile = Profile(count, 0.0)

    def log_query(query: Any) -> None:
        text = " ".join(query.query.split())
        profile.statements.setdefault(text[:90], []).append(query.elapsed * 1000)

    try:
        await given_due_check_ins(pool, contacts, count, clock.now())
        async with pool.acquire() as conn:
            conn.add_query_logger(log_query)
        t0 = time.perf_counter()
        while await run_due_jobs(deps):
            pass
        profile.seconds = time.perf_counter() - t0
        async with pool.acquire() as conn:
            conn.remove_query_logger(log_query)
        profile.smtp_seconds = email_channel.seconds
    finally:
        await close_deps(deps)
        await pool.close()
        sink.stop()
    await drop_schema(infra.database_url, schema)
    return profile


# --- report --------------------------------------------------------------------------------


def _usage_line(usage: Usage, count: int, seconds: float, unit: str) -> str:
    pg = (
        f"Postgres CPU {usage.postgres_s:.1f} s ({usage.postgres_s / count * 1000:.3f} ms/{unit})"
        if usage.postgres_s is not None
        else "Postgres CPU n/a"
    )
    return (
        f"this process CPU {usage.process_s:.1f} s = {usage.process_s / seconds:.0%} of one core "
        f"({usage.process_s / count * 1000:.3f} ms/{unit}); {pg}; machine busy "
        f"{usage.machine_busy:.0%} of {os.cpu_count()} CPUs"
    )


def report_raw(runs: list[RawRun], *, again: bool = False) -> None:
    if again:
        out("PART 1, AGAIN: the sink's raw rate after the scheduler runs (drift check)")
    else:
        out("PART 1: the SMTP sink's raw acceptance rate")
        out("  aiosmtplib.SMTP kept open, sendmail() of pre-built messages one after another per")
        out("  connection (MAIL, RCPT, DATA, message: 4 round trips each, no pipelining);")
        out("  messages built and serialised before the clock starts; connect and quit outside")
        out("  the timing; a fresh sink (new directory) per run; measured again at the end")
    for r in runs:
        out(
            f"  {r.connections} connection(s): {r.messages:,} messages (~{r.message_bytes:.0f} B "
            f"each as stored) in {r.seconds:.2f} s: {r.rate:,.0f} messages/s"
        )
        out(f"    {_usage_line(r.usage, r.messages, r.seconds, 'message')}")
        out(
            f"    sink received {r.received:,}, distinct Message-IDs {r.distinct:,}, "
            f"lost {r.messages - r.distinct:,}"
        )
    out()


def report_drain_header() -> None:
    out("PART 2: the scheduler draining due aftercare check-ins into the sink")
    out(
        f"  per run: a fresh notifications schema with {REMINDERS:,} needs (need_referrers, "
        "contact channel email) and"
    )
    out(
        f"    their day-{CHECK_IN_DAY} check-in jobs (person_message), all due, loaded by COPY and "
        "ANALYZEd;"
    )
    out(
        "    services.notifications.scheduler.run_due_jobs in a loop until it claims nothing; "
        f"batch {BATCH_SIZE},"
    )
    out(
        f"    lease {LEASE_S:.0f} s, zone {ZONE}, ManualClock at "
        f"{BENCH_NOW:%Y-%m-%d %H:%M} UTC (10:00 local, no quiet hours)"
    )
    out(
        "    each instance: its own asyncpg pool (max 10), Deps and EmailChannel (one kept-open "
        "SMTP connection);"
    )
    out(
        "    N instances run as N tasks in this one process and event loop, i.e. concurrent, "
        "not parallel"
    )
    out(
        "  NOT in this figure: intake's contact lookup. In production every reminder asks "
        "intake for the"
    )
    out(
        "    address over HTTP (POST /internal/v1/contact-lookups, audited there); here a dict "
        "answers it."
    )
    out(
        "    Logging is not configured (WARNING), so the scheduler's per-job INFO line is not "
        "written."
    )
    out("  timed from the first claim to the last claimed batch finished; the ratio to the raw")
    out("  rate is in the SUMMARY")


def report_drain(r: DrainRun) -> None:
    out()
    out(
        f"  {r.instances} instance(s): {r.reminders:,} reminders in {r.seconds:.1f} s: "
        f"{r.rate:,.0f} reminders/s  (loading them took {r.insert_seconds:.1f} s, untimed)"
    )
    out(f"    {_usage_line(r.usage, r.reminders, r.seconds, 'reminder')}")
    share = " / ".join(f"{c:,}" for c in r.claimed)
    out(
        f"    claimed per instance: {share} in {r.claims:,} claims "
        f"(~{sum(r.claimed) / max(r.claims, 1):.0f} per claim); messages "
        f"~{r.message_bytes:.0f} B each as stored"
    )
    jobs = ", ".join(f"{status} {n:,}" for status, n in sorted(r.jobs.items()))
    out(f"    afterwards: jobs {jobs}")
    out(
        f"    deliveries 'sent' {r.deliveries_sent:,} of {r.reminders:,} "
        f"({'all' if r.deliveries_sent == r.reminders else 'NOT all'}), other "
        f"{r.deliveries_other:,}, repeats {r.repeats:,}"
    )
    out(
        f"    sink: {r.received:,} messages, {r.distinct:,} distinct Message-IDs; "
        f"duplicates {r.duplicates:,}, lost {r.lost:,}"
    )


def report_profile(p: Profile, raw: list[RawRun]) -> None:
    n = p.reminders
    out("PART 3: what one reminder costs (1 instance, a pool of one connection, every statement")
    out(f"  logged by asyncpg's query logger; {n:,} reminders in a fresh schema)")
    out(
        f"  {n / p.seconds:,.0f} reminders/s with the logger on; per reminder "
        f"{p.seconds / n * 1000:.3f} ms:"
    )
    sql_ms, smtp_ms = p.sql_seconds / n * 1000, p.smtp_seconds / n * 1000
    out(
        f"    SQL, client-side elapsed (round trips included) {sql_ms:.3f} ms; "
        f"SMTP send (building the message included) {smtp_ms:.3f} ms;"
    )
    out(
        f"    the rest (claim decoding, rendering, signing the link, the event loop) "
        f"{p.seconds / n * 1000 - sql_ms - smtp_ms:.3f} ms"
    )
    if raw:
        out(
            "    for comparison, the raw SMTP send: "
            f"{statistics.fmean(1000 / r.rate for r in raw):.3f} ms per message "
            "(part 1, 1 connection)"
        )
    out(
        f"  Postgres round trips per reminder: {p.statement_count / n:.2f} statements "
        "(asyncpg, prepared statements cached: one round trip each); SMTP: 4"
    )
    out("  statements by time per reminder:                                     count/rem  ms/rem")
    top = sorted(p.statements.items(), key=lambda kv: -sum(kv[1]))
    for query, times in top[:14]:
        out(f"    {query[:70]:<70} {len(times) / n:>6.3f} {sum(times) / n:>7.3f}")
    out()


def report_summary(drains: list[DrainRun], raw_runs: list[RawRun]) -> None:
    out("SUMMARY (the raw rate: the mean of part 1's runs before and after, same connections)")
    for r in drains:
        same = [b for b in raw_runs if b.connections == r.instances]
        raw_rate = statistics.fmean(b.rate for b in same) if same else None
        raw_cpu_ms = (
            statistics.fmean(b.usage.process_s / b.messages * 1000 for b in same) if same else 0
        )
        spread = ", ".join(f"{b.rate:,.0f}" for b in same)
        ratio = (
            f" = {r.rate / raw_rate:.1%} of the sink's raw rate over {r.instances} "
            f"connection(s) ({raw_rate:,.0f} messages/s; runs: {spread})"
            if raw_rate
            else ""
        )
        out(f"  {r.instances} scheduler instance(s): {r.rate:,.0f} reminders/s{ratio}")
        cpu_ms = r.usage.process_s / r.reminders * 1000
        beyond = f", {cpu_ms - raw_cpu_ms:.3f} ms more than a bare send in part 1" if same else ""
        out(
            f"    CPU of this process (scheduler, SMTP client and sink) {cpu_ms:.3f} ms per "
            f"reminder{beyond}"
        )
        out(
            f"    {r.deliveries_sent:,} deliveries sent of {r.reminders:,}; sink: duplicates "
            f"{r.duplicates:,}, lost {r.lost:,}"
        )
    out("  intake's contact lookup (an HTTP call per reminder in production) is not included")
    out()


# --- main ----------------------------------------------------------------------------------


async def run(infra: Infrastructure, run_dir: Path) -> None:
    conn = await asyncpg.connect(infra.database_url)
    try:
        pg = await PostgresCpu.find(conn)
        version = await conn.fetchval("SHOW server_version")
        durability = await conn.fetchval(
            "SELECT string_agg(name || '=' || setting, ', ' ORDER BY name) FROM pg_settings "
            "WHERE name IN ('fsync', 'synchronous_commit', 'shared_buffers')"
        )
    finally:
        await conn.close()
    out("refnet reminders benchmark")
    out(
        f"  machine: {os.cpu_count()} CPU(s), {platform.machine()}, {platform.system()} "
        f"{platform.release()}"
    )
    out(f"  python: {platform.python_version()} ({sys.executable})")
    out(f"  load average at start: {_load()} (other processes on the machine count in it)")
    out(f"  postgres: {version}, {infra.postgres_source}, 127.0.0.1 ({durability})")
    out(
        "  SMTP sink: services.smtp_sink.SmtpSink (aiosmtpd in a thread of this process, "
        "so it shares the GIL"
    )
    out("    with the sender; each message parsed and written as .eml), 127.0.0.1")
    out(
        f"  settings: {REMINDERS:,} reminders per scheduler run, instances "
        f"{' and '.join(str(i) for i in INSTANCES)}; raw baseline {BASELINE_MESSAGES:,} "
        f"messages per run; profile {PROFILE_REMINDERS:,} reminders"
    )
    out()

    async def raw_runs(when: str) -> list[RawRun]:
        runs = []
        for connections in (1, 2) if BASELINE_MESSAGES else ():
            note(
                f"raw SMTP rate ({when}), {connections} connection(s), "
                f"{BASELINE_MESSAGES:,} messages..."
            )
            runs.append(await raw_rate(run_dir, pg, connections, BASELINE_MESSAGES))
        return runs

    before = await raw_runs("before")
    if before:
        report_raw(before)

    drains: list[DrainRun] = []
    if REMINDERS and INSTANCES:
        report_drain_header()
        for instances in INSTANCES:
            drains.append(await scheduler_run(infra, run_dir, pg, instances, REMINDERS))
            report_drain(drains[-1])
        out()

    after = await raw_runs("after") if drains else []
    if after:
        report_raw(after, again=True)

    if PROFILE_REMINDERS:
        note(f"profile, {PROFILE_REMINDERS:,} reminders with every statement logged...")
        raw_one = [r for r in before + after if r.connections == 1]
        report_profile(await profile_run(infra, run_dir, PROFILE_REMINDERS), raw_one)
    if drains:
        report_summary(drains, before + after)


def _load() -> str:
    return " / ".join(f"{v:.2f}" for v in os.getloadavg()) + " (1 / 5 / 15 min)"


def main() -> None:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="refnet-bench-reminders-") as tmp:
        run_dir = Path(tmp)
        # Embedded (or testcontainers) only: never a DATABASE_URL from the caller's shell.
        infra = provision(run_dir / "infra", env={})
        try:
            asyncio.run(run(infra, run_dir))
        finally:
            infra.stop()
    out(f"load average at the end: {_load()}")
    out(f"total run time: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
