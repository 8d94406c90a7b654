"""The reliability harness: push N needs through the whole stack (intake's JSON API, matching,
notifications, the SMTP sink) while faults are injected, answer every offer as the agencies
would, then read everything back and audit it (audit.py). How to read its table:
tests/reliability/README.md.

Every wait here is bounded polling for a state (a service ready, every need accepted, every
mail in); none of the bounds is a timing assertion. A wait that runs out does not stop the
run: the audit then reports what is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from services.intake.admin import issue_token
from services.local_stack import DEMO_WORKER_EMAIL, LocalStack
from services.notifications.handlers import issue_api_key
from shared.clock import OffsetFileClock
from shared.cloudevents import PoisonMessage, decode, encode
from shared.db import create_pool
from shared.events import (
    DeclineReason,
    OfferAccepted,
    OfferDeclined,
    ReferralOffered,
    ReferralStatusChanged,
)
from shared.topics import (
    AGENCY_OFFERS_PATTERN,
    DLQ_SUFFIX,
    OFFER_RESPONSES,
    REFERRAL_EVENTS,
    agency_offers,
)
from tests.reliability import audit
from tests.reliability.audit import Expectation, Mail, Report, StatusRecord

log = logging.getLogger("refnet.reliability")
# Where the test leaves its table for the terminal summary (conftest.py).
TABLE = pytest.StashKey[str]()

URGENT_FANOUT = 2
CHECK_IN_DAYS = (1, 7)
SCHEDULER_LEASE_S = 30
# The stack's settings for this run (tests/reliability/conftest.py): fast polling as in the
# e2e tests; urgent needs offered to two agencies at once, so "exactly one acceptance" is
# tested against two agencies accepting; aftercare check-ins on days 1 and 7 only; no quiet
# hours (the run may happen at any hour); a short scheduler lease (a killed sender's claimed
# jobs come back after it: 30 s > 5 jobs x 5 s timeouts) and short retry backoffs, so
# recovery fits the run; still 10 attempts per job.
STACK_ENV = {
    "SCHEDULER_POLL_INTERVAL_S": "0.2",
    "OUTBOX_POLL_INTERVAL_S": "0.5",
    "KAFKA_SESSION_TIMEOUT_S": "6",
    "URGENT_FANOUT": str(URGENT_FANOUT),
    "AFTERCARE_DAYS": json.dumps(list(CHECK_IN_DAYS)),
    "QUIET_FROM_HOUR": "0",
    "QUIET_UNTIL_HOUR": "0",
    "SCHEDULER_LEASE_S": str(SCHEDULER_LEASE_S),
    "SCHEDULER_BATCH_SIZE": "5",
    "SMTP_TIMEOUT_S": "5",
    "SMS_TIMEOUT_S": "5",
    "WEBHOOK_TIMEOUT_S": "5",
    "RETRY_BASE_S": "2",
    "RETRY_CAP_S": "15",
}

# Categories the demo directory serves at ZIP 97214 with services whose places are not
# counted (so 300 needs never exhaust them), for an adult with no insurance who speaks
# English; those with three or more such agencies may have their first offer declined.
CATEGORIES = (
    "peer-support",
    "counseling",
    "employment",
    "case-management",
    "family-support",
    "mental-health",
    "transportation",
    "recovery-coaching",
    "interview-coaching",
    "medical-care",
    "clothing",
)
DECLINABLE = frozenset(
    {
        "counseling",
        "employment",
        "case-management",
        "family-support",
        "mental-health",
        "transportation",
        "recovery-coaching",
    }
)
FAULT_KINDS = (
    "kill-matching",
    "kill-notifications",
    "kill-intake",
    "restart-postgres",
    "stall-broker",
)
BROKER_STALLS_S = (3, 5, 8)  # 8 s outlasts the consumers' 6 s session timeout


@dataclass(frozen=True)
class Config:
    needs: int = 40
    rounds: int = 1
    seed: int = 8
    report_dir: Path = Path("build/reliability")
    submit_concurrency: int = 4

    @classmethod
    def from_env(cls, root: Path) -> Config:
        return cls(
            needs=int(os.environ.get("RELIABILITY_NEEDS", cls.needs)),
            rounds=int(os.environ.get("RELIABILITY_ROUNDS", cls.rounds)),
            seed=int(os.environ.get("RELIABILITY_SEED", cls.seed)),
            report_dir=Path(
                os.environ.get("RELIABILITY_REPORT_DIR", root / "build" / "reliability")
            ),
        )


@dataclass
class NeedPlan:
    index: int
    submission_id: UUID
    category: str
    urgency: str
    answer_via: str  # kafka: OfferAccepted on refnet.offer-responses.v1; http: the agency API
    decline_first: bool  # its first offer is declined (no-capacity), the next one accepted
    person_email: str
    family_name: str
    need_id: str | None = None
    intake_id: str | None = None
    posts: int = 0  # POSTs it took (a retry after a failure reuses the submission_id)
    answered_200: bool = False  # a retry found the intake already made

    def expectation(self) -> Expectation:
        assert self.need_id is not None
        urgent = self.urgency == "urgent"
        return Expectation(
            need_id=self.need_id,
            person_email=self.person_email,
            max_offers=URGENT_FANOUT if urgent else 1 + int(self.decline_first),
            fanout=urgent and URGENT_FANOUT > 1,
            declines=int(self.decline_first),
            check_in_days=CHECK_IN_DAYS,
        )


def make_plan(config: Config) -> list[NeedPlan]:
    run = uuid4().hex[:6]
    plans = []
    for i in range(config.needs):
        category = CATEGORIES[i % len(CATEGORIES)]
        urgency = ("routine", "soon", "urgent")[i % 3]
        plans.append(
            NeedPlan(
                index=i,
                submission_id=uuid4(),
                category=category,
                urgency=urgency,
                answer_via="http" if i % 2 else "kafka",
                # Not urgent ones: with a fan-out the other agency's acceptance may land
                # first, and then the decline is moot.
                decline_first=urgency != "urgent" and category in DECLINABLE and i % 5 == 0,
                person_email=f"rel-{run}-{i:04d}@example.net",
                family_name=f"Reliability{run}{i:04d}",
            )
        )
    return plans


# --- waiting ------------------------------------------------------------------------------


async def wait_until(
    check: Callable[[], Awaitable[bool] | bool], timeout_s: float, interval_s: float = 0.5
) -> bool:
    """Poll until ``check`` holds; False if it still does not after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(interval_s)


def service_urls(stack: LocalStack) -> dict[str, str]:
    urls: dict[str, str] | None = getattr(stack, "service_urls", None)
    return urls or {"intake": stack.intake_url, "notifications": stack.agency_api_url}


async def wait_ready(stack: LocalStack, timeout_s: float = 240) -> None:
    """Every service's /readyz says ready (its database, broker and consumer group are
    back), or the run stops here: a service that does not recover is a finding."""
    async with httpx.AsyncClient(timeout=5) as client:
        for name, url in service_urls(stack).items():

            async def ready(name: str = name, url: str = url) -> bool:
                dead = stack.dead_services()
                if dead:
                    raise AssertionError(f"{dead} exited; see {stack.run_dir}/logs")
                try:
                    return (await client.get(f"{url}/readyz")).status_code == 200
                except httpx.HTTPError:
                    return False

            if not await wait_until(ready, timeout_s):
                raise AssertionError(f"{name} was not ready {timeout_s:.0f} s after a fault")


class Db:
    """Short queries for the harness's own bookkeeping; Postgres may be down at any moment,
    so each one connects afresh and a failure just means "ask again"."""

    def __init__(self, url: str) -> None:
        self.url = url

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record] | None:
        try:
            conn = await asyncpg.connect(self.url, timeout=5)
        except (TimeoutError, OSError, asyncpg.PostgresError):
            return None
        try:
            return list(await conn.fetch(sql, *args))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return None
        finally:
            with contextlib.suppress(Exception):
                await conn.close()


# --- the intake worker's system: needs through the JSON API -------------------------------


class Submitter:
    def __init__(self, stack: LocalStack, token: str, plans: list[NeedPlan], config: Config):
        self.stack = stack
        self.token = token
        self.plans = plans
        self.config = config
        self.clock = OffsetFileClock(stack.clock_offset_file)
        self.submitted = 0
        self.allowed = 0  # the fault injector lets the push run ahead this far
        self._progress = asyncio.Condition()

    async def allow(self, count: int) -> None:
        async with self._progress:
            self.allowed = max(self.allowed, min(count, len(self.plans)))
            self._progress.notify_all()

    async def wait_submitted(self, count: int) -> None:
        async with self._progress:
            await self._progress.wait_for(lambda: self.submitted >= count)

    def body(self, plan: NeedPlan) -> dict[str, Any]:
        # "Today" is the stack's (the clock may have moved); recomputed at each retry.
        today = self.clock.now().date()
        return {
            "submission_id": str(plan.submission_id),
            "person": {
                "legal_given_name": "Rel",
                "legal_family_name": plan.family_name,
                "date_of_birth": "1985-04-23",
                "email": plan.person_email,
                "preferred_channel": "email",
                "languages": ["en"],
                "postal_code": "97214",
                "county": "Multnomah",
            },
            "recovery": {"stage": "early-recovery"},
            "needs": [{"category": plan.category, "urgency": plan.urgency}],
            "consent": {
                "confirmed": True,
                "recipients": "network",
                "expires_on": (today + timedelta(days=180)).isoformat(),
                "signature": f"Rel {plan.family_name}",
                "signed_on": today.isoformat(),
            },
            "new_person": True,
        }

    async def run(self) -> None:
        queue: asyncio.Queue[NeedPlan] = asyncio.Queue()
        for plan in self.plans:
            queue.put_nowait(plan)
        async with httpx.AsyncClient(
            base_url=self.stack.intake_url,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=30,
        ) as client:
            workers = [
                asyncio.create_task(self._worker(client, queue))
                for _ in range(self.config.submit_concurrency)
            ]
            await asyncio.gather(*workers)

    async def _worker(self, client: httpx.AsyncClient, queue: asyncio.Queue[NeedPlan]) -> None:
        while not queue.empty():
            plan = queue.get_nowait()
            async with self._progress:
                await self._progress.wait_for(partial(self._may_submit, plan))
            await self._submit(client, plan)
            async with self._progress:
                self.submitted += 1
                self._progress.notify_all()

    def _may_submit(self, plan: NeedPlan) -> bool:
        return plan.index < self.allowed

    async def _submit(self, client: httpx.AsyncClient, plan: NeedPlan) -> None:
        deadline = time.monotonic() + 600
        while True:
            plan.posts += 1
            try:
                response = await client.post("/api/v1/intakes", json=self.body(plan))
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code in (200, 201):
                    intake = response.json()
                    [need] = intake["needs"]
                    plan.intake_id, plan.need_id = intake["intake_id"], need["need_id"]
                    plan.answered_200 = response.status_code == 200
                    return
                if response.status_code < 500:
                    raise AssertionError(
                        f"intake refused need #{plan.index}: {response.status_code} {response.text}"
                    )
                problem = f"HTTP {response.status_code}"
            if time.monotonic() > deadline:
                raise AssertionError(f"need #{plan.index} not accepted by intake: {problem}")
            await asyncio.sleep(0.5)


# --- the agencies: accept every offer (after declining some first offers) ------------------


@dataclass
class ResponderStats:
    offers_read: int = 0
    records_read_again: int = 0  # same ce_id twice on an agency topic
    answered: Counter[str] = field(default_factory=Counter)  # "kafka accept", "http 409", ...
    gave_up: list[str] = field(default_factory=list)


class Responder:
    """Every agency at once: one consumer on all agency offer topics. Each ReferralOffered
    is answered by its plan, over Kafka or the agency HTTP API (with that agency's key)."""

    def __init__(self, stack: LocalStack, plans: list[NeedPlan]) -> None:
        assert stack.infra is not None
        self.stack = stack
        self.bootstrap = stack.infra.kafka_bootstrap_servers
        self.database_url = stack.infra.database_url
        self.plans = plans
        self.clock = OffsetFileClock(stack.clock_offset_file)
        self.stats = ResponderStats()
        self._seen_ids: set[str] = set()
        self._answered: set[UUID] = set()
        self._keys: dict[str, str] = {}
        self._keys_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._producer: AIOKafkaProducer | None = None
        self._http: httpx.AsyncClient | None = None
        self._pool: asyncpg.Pool | None = None
        self.ready = asyncio.Event()

    def plan_for(self, need_id: str) -> NeedPlan | None:
        return next((p for p in self.plans if p.need_id == need_id), None)

    @property
    def busy(self) -> int:
        return len(self._tasks)

    async def run(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id="reliability-agencies",
            auto_offset_reset="earliest",
            enable_auto_commit=True,
            session_timeout_ms=6000,
            heartbeat_interval_ms=2000,
            metadata_max_age_ms=5000,
        )
        consumer.subscribe(pattern=AGENCY_OFFERS_PATTERN)
        self._producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        self._http = httpx.AsyncClient(base_url=self.stack.agency_api_url, timeout=15)
        await consumer.start()
        await self._producer.start()
        self.ready.set()
        try:
            async for record in consumer:
                self._read(record)
        finally:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await consumer.stop()
            await self._producer.stop()
            await self._http.aclose()
            if self._pool is not None:
                await self._pool.close()

    def _read(self, record: Any) -> None:
        agency_id = record.topic.removeprefix("refnet.agency.").removesuffix(".offers")
        try:
            envelope = decode(agency_offers(agency_id), record.key, record.value, record.headers)
        except PoisonMessage as exc:
            self.stats.gave_up.append(f"unreadable offer record on {record.topic}: {exc}")
            return
        if envelope.id in self._seen_ids:
            self.stats.records_read_again += 1
            return
        self._seen_ids.add(envelope.id)
        offer = envelope.event
        if not isinstance(offer, ReferralOffered) or offer.offer_id in self._answered:
            return  # withdrawals and refusals only inform; an offer is answered once
        self.stats.offers_read += 1
        self._answered.add(offer.offer_id)
        task = asyncio.create_task(self._answer(offer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, offer: ReferralOffered) -> None:
        need_id = str(offer.need_id)
        # The offer can be read before the submitter has intake's answer (or while it
        # retries a POST that intake had already taken).
        if not await wait_until(lambda: self.plan_for(need_id) is not None, 600):
            self.stats.gave_up.append(f"offer {offer.offer_id} for a need never submitted")
            return
        plan = self.plan_for(need_id)
        assert plan is not None
        decline = plan.decline_first and offer.attempt == 1
        try:
            if plan.answer_via == "kafka":
                await self._answer_on_kafka(offer, decline)
            else:
                await self._answer_over_http(offer, decline)
        except Exception as exc:
            self.stats.gave_up.append(f"offer {offer.offer_id}: {type(exc).__name__}: {exc}")

    async def _answer_on_kafka(self, offer: ReferralOffered, decline: bool) -> None:
        assert self._producer is not None
        now = self.clock.now()
        answer: OfferAccepted | OfferDeclined
        if decline:
            answer = OfferDeclined(
                offer_id=offer.offer_id,
                need_id=offer.need_id,
                agency_id=offer.agency_id,
                reason=DeclineReason.NO_CAPACITY,
                declined_at=now,
            )
        else:
            answer = OfferAccepted(
                offer_id=offer.offer_id,
                need_id=offer.need_id,
                agency_id=offer.agency_id,
                accepted_at=now,
            )
        headers, value = encode(
            answer, event_id=uuid4(), source=f"/agencies/{offer.agency_id}", time=now
        )
        deadline = time.monotonic() + 600
        while True:
            try:
                await self._producer.send_and_wait(
                    OFFER_RESPONSES.name,
                    key=str(offer.need_id).encode(),
                    value=value,
                    headers=headers,
                )
                break
            except KafkaError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(1)
        self.stats.answered["kafka " + ("decline" if decline else "accept")] += 1

    async def _answer_over_http(self, offer: ReferralOffered, decline: bool) -> None:
        assert self._http is not None
        key = await self._key(offer.agency_id)
        path = f"/agency/v1/offers/{offer.offer_id}/" + ("decline" if decline else "accept")
        body = {"reason": DeclineReason.NO_CAPACITY.value} if decline else None
        deadline = time.monotonic() + 600
        while True:
            try:
                response = await self._http.post(
                    path, json=body, headers={"Authorization": f"Bearer {key}"}
                )
                status = response.status_code
            except httpx.HTTPError:
                status = 0
            # 202: taken. 409: answered already (a retry after a lost reply) or placed with
            # the other agency of a fan-out. 404: notifications has not read the offer yet.
            if status in (202, 409):
                self.stats.answered[f"http {'decline' if decline else 'accept'} {status}"] += 1
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"the agency API kept answering {status} to {path}")
            await asyncio.sleep(0.5)

    async def _key(self, agency_id: str) -> str:
        async with self._keys_lock:
            while agency_id not in self._keys:
                try:
                    if self._pool is None:
                        self._pool = await create_pool(
                            self.database_url, "notifications", max_size=2
                        )
                    self._keys[agency_id] = await issue_api_key(self._pool, agency_id)
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                    await asyncio.sleep(0.5)  # Postgres is being restarted
            return self._keys[agency_id]


# --- faults ---------------------------------------------------------------------------------


class Faults:
    """Each fault is injected on this stack's own processes, by pid, then the run waits
    (bounded) until every service is ready again."""

    def __init__(self, stack: LocalStack, rng: random.Random) -> None:
        self.stack = stack
        self.rng = rng
        self.log: list[dict[str, Any]] = []
        self._postgres_restarts = 0
        self._stalls = 0

    async def inject(self, kind: str, **progress: Any) -> dict[str, Any]:
        started = time.monotonic()
        detail = await getattr(self, kind.replace("-", "_"))()
        await wait_ready(self.stack)
        entry = {
            "kind": kind,
            "detail": detail,
            **progress,
            "recovered_after_s": round(time.monotonic() - started, 1),
        }
        self.log.append(entry)
        log.warning("fault %s: %s (%s)", kind, detail, progress)
        return entry

    def _kill(self, name: str) -> str:
        pid = self.stack.processes[name].pid
        # SIGKILL by pid, then the same command again (LocalStack.restart).
        self.stack.restart(name, signal.SIGKILL)
        return f"SIGKILL pid {pid}, restarted as pid {self.stack.processes[name].pid}"

    async def kill_matching(self) -> str:
        return self._kill("matching")

    async def kill_notifications(self) -> str:
        return self._kill("notifications")

    async def kill_intake(self) -> str:
        return self._kill("intake")

    async def restart_postgres(self) -> str:
        assert self.stack.infra is not None and self.stack.infra.postgres is not None
        pg = self.stack.infra.postgres
        # Alternately a fast shutdown (SIGINT: sessions are ended) and an immediate one
        # (SIGQUIT: no checkpoint, crash recovery at the next start).
        sig = (signal.SIGINT, signal.SIGQUIT)[self._postgres_restarts % 2]
        self._postgres_restarts += 1
        pid = pg.pid
        await asyncio.to_thread(pg.stop, sig)
        await asyncio.sleep(2)  # down for a while, with traffic knocking
        # Started from the loop's own thread: the child dies with the thread that made it.
        pg.start()
        return f"{sig.name} to postmaster pid {pid}, down 2 s, restarted as pid {pg.pid}"

    async def stall_broker(self) -> str:
        assert self.stack.infra is not None and self.stack.infra.kafka is not None
        pid = self.stack.infra.kafka.pid
        assert pid is not None
        seconds = BROKER_STALLS_S[self._stalls % len(BROKER_STALLS_S)]
        self._stalls += 1
        os.kill(pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(seconds)
        finally:
            os.kill(pid, signal.SIGCONT)
        return f"SIGSTOP broker pid {pid} for {seconds} s, then SIGCONT"


# --- reading back ---------------------------------------------------------------------------


async def read_quiet_topics(bootstrap: str, topics: list[str]) -> list[Any]:
    """Every record of these topics from the beginning, in offset order per partition: at
    least up to the end offsets, then until three fetches in a row bring nothing (the stack
    is quiet by then). The end offsets alone would not do: Tansu reports the last batch's
    base offset as the end."""
    if not topics:
        return []
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None
    )
    await consumer.start()
    try:
        await consumer.topics()
        tps = [
            TopicPartition(topic, p)
            for topic in topics
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        records: list[Any] = []
        empty = 0
        while empty < 3:
            batch = await consumer.getmany(*tps, timeout_ms=700, max_records=2000)
            got = [r for recs in batch.values() for r in recs]
            records.extend(got)
            behind = [tp for tp in tps if await consumer.position(tp) < ends[tp]]
            empty = 0 if got or behind else empty + 1
        return records
    finally:
        await consumer.stop()


async def list_topics(bootstrap: str) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return sorted(await admin.list_topics())
    finally:
        await admin.close()


def header(record: Any, name: str) -> str:
    for key, value in record.headers or ():
        if key == name:
            return bytes(value).decode(errors="replace")
    return ""


# --- the run ----------------------------------------------------------------------------------


class Harness:
    def __init__(self, stack: LocalStack, config: Config) -> None:
        assert stack.infra is not None and stack.mail is not None
        self.stack = stack
        self.config = config
        self.rng = random.Random(config.seed)
        self.plans = make_plan(config)
        self.db = Db(stack.infra.database_url)
        self.clock = OffsetFileClock(stack.clock_offset_file)
        self.faults = Faults(stack, self.rng)
        self.report = Report(needs=config.needs, rounds=config.rounds)
        self.report.faults = self.faults.log  # filled in as they strike
        self._mail_kinds: dict[str, tuple[str | None, str]] = {}

    # -- progress, from the outside ------------------------------------------------------

    def need_ids(self) -> list[str]:
        return [p.need_id for p in self.plans if p.need_id]

    async def accepted(self) -> int | None:
        rows = await self.db.fetch(
            "SELECT count(*) AS n FROM matching.referrals "
            "WHERE status = 'accepted' AND need_id = ANY($1::uuid[])",
            self.need_ids(),
        )
        return None if rows is None else int(rows[0]["n"])

    def mail_kinds(self) -> Counter[str]:
        """Kinds of the mail kept so far (classified once per Message-ID)."""
        assert self.stack.mail is not None
        by_person = {p.person_email: p.need_id for p in self.plans if p.need_id}
        for message in self.stack.mail.messages:
            message_id = str(message["Message-ID"])
            if message_id not in self._mail_kinds:
                self._mail_kinds[message_id] = audit.classify(_mail(message), by_person)
        return Counter(kind for _, kind in self._mail_kinds.values())

    # -- phases --------------------------------------------------------------------------

    async def run(self) -> Report:
        started = time.monotonic()
        token = await issue_token(
            self.stack.infra.database_url,  # type: ignore[union-attr]
            DEMO_WORKER_EMAIL,
            "reliability",
        )
        responder = Responder(self.stack, self.plans)
        responder_task = asyncio.create_task(responder.run(), name="agency-responder")
        try:
            await asyncio.wait_for(responder.ready.wait(), 120)
            await self._phase("push under faults", self._push(token))
            await self._phase("until every need is accepted", self._all_accepted())
            await self._phase("acceptance mail", self._acceptance_mail())
            for i, day in enumerate(CHECK_IN_DAYS):
                await self._phase(f"day-{day} check-ins", self._check_ins(i, day))
            await self._phase("quiet", self._quiet(responder))
            self.report.duration_s = time.monotonic() - started
            await self._audit(responder)
        finally:
            responder_task.cancel()
            await asyncio.gather(responder_task, return_exceptions=True)
        self.report.duration_s = time.monotonic() - started
        return self.report

    async def _phase(self, name: str, work: Awaitable[None]) -> None:
        started = time.monotonic()
        log.warning("phase: %s", name)
        await work
        self.report.phases_s[name] = round(time.monotonic() - started, 1)

    def _schedule(self) -> list[str]:
        schedule = []
        for _ in range(self.config.rounds):
            kinds = list(FAULT_KINDS)
            self.rng.shuffle(kinds)
            schedule += kinds
        return schedule

    async def _push(self, token: str) -> None:
        """Submit the needs in segments: fault i strikes once segment i is in (so earlier
        needs are in flight), while segment i+1 is being submitted."""
        schedule = self._schedule()
        submitter = Submitter(self.stack, token, self.plans, self.config)
        segment = self.config.needs / (len(schedule) + 1)
        await submitter.allow(round(2 * segment))
        pushing = asyncio.create_task(submitter.run(), name="submitter")
        try:
            for i, kind in enumerate(schedule):
                await _unless_failed(submitter.wait_submitted(round((i + 1) * segment)), pushing)
                await self.faults.inject(
                    kind,
                    phase="push",
                    submitted=submitter.submitted,
                    accepted=await self.accepted(),
                )
                await submitter.allow(round((i + 3) * segment))
            await submitter.allow(self.config.needs)
            await pushing
        finally:
            pushing.cancel()
            await asyncio.gather(pushing, return_exceptions=True)

    async def _all_accepted(self) -> None:
        bound = max(300, 2 * self.config.needs)

        async def done() -> bool:
            return await self.accepted() == self.config.needs

        if not await wait_until(done, bound, 1):
            self.report.notes.append(f"not every need accepted after {bound} s")

    async def _acceptance_mail(self) -> None:
        wanted = Counter(
            {
                audit.WORKER_ACCEPTED: self.config.needs,
                audit.PERSON_ACCEPTED: self.config.needs,
                audit.WORKER_DECLINED: sum(p.decline_first for p in self.plans),
            }
        )

        def done() -> bool:
            kinds = self.mail_kinds()
            return all(kinds[k] >= n for k, n in wanted.items())

        if not await wait_until(done, 300, 1):
            self.report.notes.append("acceptance mail still missing after 300 s")

    async def _check_ins(self, i: int, day: int) -> None:
        """Move the stack's clock to the day's check-ins, strike while they are being sent,
        then wait for all of them."""
        already = 0 if i == 0 else CHECK_IN_DAYS[i - 1]
        self.clock.advance(timedelta(days=day - already, minutes=1 if i == 0 else 0))
        kind = audit.check_in(day)
        n = self.config.needs
        await wait_until(lambda: self.mail_kinds()[kind] >= max(1, n // 4), 120, 0.1)
        sent = self.mail_kinds()[kind]
        fault = ("kill-notifications", "restart-postgres", "stall-broker")[i % 3]
        await self.faults.inject(fault, phase=f"day-{day} check-ins", sent=sent, of=n)
        if not await wait_until(lambda: self.mail_kinds()[kind] >= n, 300, 1):
            self.report.notes.append(f"day-{day} check-ins still missing after 300 s")

    async def _quiet(self, responder: Responder) -> None:
        """Nothing left to publish, send or answer."""

        async def quiet() -> bool:
            rows = await self.db.fetch(
                "SELECT (SELECT count(*) FROM intake.outbox WHERE published_at IS NULL "
                "   AND rejected_at IS NULL) "
                "+ (SELECT count(*) FROM matching.outbox WHERE published_at IS NULL "
                "   AND rejected_at IS NULL) "
                "+ (SELECT count(*) FROM notifications.outbox WHERE published_at IS NULL "
                "   AND rejected_at IS NULL) "
                "+ (SELECT count(*) FROM notifications.scheduled_jobs "
                "   WHERE status = 'pending' AND due_at <= $1) AS left",
                self.clock.now(),
            )
            return rows is not None and rows[0]["left"] == 0 and responder.busy == 0

        if not await wait_until(quiet, 180, 1):
            self.report.notes.append("outboxes or due jobs not empty after 180 s")
        # Whatever was just published reaches its readers.
        await asyncio.sleep(3)

    # -- the audit -----------------------------------------------------------------------

    async def _audit(self, responder: Responder) -> None:
        r = self.report
        assert self.stack.infra is not None and self.stack.mail is not None
        bootstrap = self.stack.infra.kafka_bootstrap_servers
        problems = r.problems
        missing_ids = [p.index for p in self.plans if p.need_id is None]
        if missing_ids:
            problems.append(f"needs never submitted: {missing_ids}")
        plans = {p.need_id: p for p in self.plans if p.need_id}
        expectations = {need_id: p.expectation() for need_id, p in plans.items()}

        # Referral events, as a consumer reads them.
        records = []
        for record in await read_quiet_topics(bootstrap, [REFERRAL_EVENTS.name]):
            envelope = decode(REFERRAL_EVENTS, record.key, record.value, record.headers)
            event = envelope.event
            assert isinstance(event, ReferralStatusChanged)
            records.append(
                StatusRecord(
                    str(event.need_id),
                    envelope.id,
                    event.sequence,
                    event.status.value,
                    str(event.offer_id) if event.offer_id else None,
                    record.partition,
                    record.offset,
                )
            )
        needs = audit.audit_referral_events(records, expectations)
        mail = audit.audit_mail(
            [_mail(m) for m in self.stack.mail.messages], self.stack.mail.repeats, expectations
        )

        lost: set[str] = set(str(i) for i in missing_ids)
        side_effects: Counter[str] = Counter()
        for need_id, a in sorted(needs.items()):
            expected = expectations.get(need_id)
            if a.final_status != "accepted" or a.acceptances == 0:
                lost.add(need_id)
                problems.append(f"need {need_id}: ends {a.final_status}, never accepted")
            if a.acceptances > 1:
                side_effects["need accepted twice (events)"] += a.acceptances - 1
                problems.append(f"need {need_id}: {a.acceptances} acceptances")
            if a.duplicated_transitions:
                side_effects["transition emitted twice"] += a.duplicated_transitions
                problems += [f"need {need_id}: {d}" for d in a.duplicates]
            if expected and len(a.offers) > expected.max_offers:
                side_effects["offers beyond the plan"] += len(a.offers) - expected.max_offers
                problems.append(f"need {need_id}: {len(a.offers)} offers")
            r.state_machine_violations += len(a.violations)
            problems += [f"need {need_id}: {v}" for v in a.violations]
            r.reordered_per_key += a.reordered
        r.accepted = sum(1 for a in needs.values() if a.final_status == "accepted")

        for need_id, kinds in mail.missing.items():
            lost.add(need_id)
            problems.append(f"need {need_id}: no {', '.join(kinds)} mail")
        for need_id, kinds in mail.duplicated.items():
            side_effects["mail sent twice (two Message-IDs)"] += len(kinds)
            problems.append(f"need {need_id}: {', '.join(kinds)} sent twice")
        assert self.stack.sms is not None
        texts = self.stack.sms.messages
        r.unexpected_mail = len(mail.unexpected) + len(texts)
        problems += [f"unexpected mail: {u}" for u in mail.unexpected]
        problems += [f"unexpected text to {t['to']}" for t in texts]

        # The services' own records.
        rows = await self.db.fetch(
            "SELECT need_id::text AS need_id, count(*) AS n FROM matching.offers "
            "WHERE status = 'accepted' GROUP BY need_id HAVING count(*) > 1"
        )
        for row in rows or []:
            side_effects["offer accepted twice (matching)"] += row["n"] - 1
            problems.append(f"need {row['need_id']}: {row['n']} accepted offers in matching")
        rows = await self.db.fetch("SELECT count(*) AS n FROM intake.needs")
        if rows and rows[0]["n"] > len(plans):
            side_effects["need recorded twice (intake)"] += rows[0]["n"] - len(plans)
        rows = await self.db.fetch(
            "SELECT need_id::text AS need_id, status, status_sequence FROM intake.needs"
        )
        last_sequence: Counter[str] = Counter()
        for s in records:
            last_sequence[s.need_id] = max(last_sequence[s.need_id], s.sequence)
        for row in rows or []:
            seen = needs.get(row["need_id"])
            final, last = (seen.final_status if seen else None), last_sequence[row["need_id"]]
            if row["status"] != final or row["status_sequence"] != last:
                r.intake_view_wrong += 1
                problems.append(
                    f"need {row['need_id']}: intake shows {row['status']} "
                    f"#{row['status_sequence']}, events end {final} #{last}"
                )
        for schema in ("intake", "matching", "notifications"):
            rows = await self.db.fetch(
                f"SELECT count(*) AS n FROM {schema}.outbox WHERE published_at IS NULL"
            )
            r.outbox_unpublished[schema] = rows[0]["n"] if rows else -1
        rows = await self.db.fetch(
            "SELECT job_id::text AS job_id, kind, last_error FROM notifications.scheduled_jobs "
            "WHERE status = 'failed'"
        )
        r.failed_jobs = len(rows or [])
        problems += [
            f"job {j['job_id']} ({j['kind']}) failed: {j['last_error']}" for j in rows or []
        ]
        rows = await self.db.fetch(
            "SELECT coalesce(sum(repeats), 0) AS n FROM notifications.deliveries"
        )
        logged_repeats = rows[0]["n"] if rows else -1

        dlq_topics = [t for t in await list_topics(bootstrap) if t.endswith(DLQ_SUFFIX)]
        dead = await read_quiet_topics(bootstrap, dlq_topics)
        r.dead_lettered = len(dead)
        problems += [
            f"dead-lettered from {header(d, 'dlq_topic')} by {header(d, 'dlq_consumer')}: "
            f"{header(d, 'dlq_reason')}"
            for d in dead
        ]
        problems += responder.stats.gave_up

        redelivered = sum(a.redeliveries for a in needs.values())
        r.duplicate_deliveries_by_kind = {
            "referral events read again (same ce_id)": redelivered,
            "mail repeated (same Message-ID)": len(self.stack.mail.repeats),
            "agency offer records read again (same ce_id)": responder.stats.records_read_again,
        }
        r.duplicate_deliveries = sum(r.duplicate_deliveries_by_kind.values())
        r.duplicated_side_effects_by_kind = dict(side_effects)
        r.duplicated_side_effects = sum(side_effects.values())
        r.lost = len(lost)
        r.mail = {
            "expected": mail.expected,
            "delivered": mail.delivered,
            **{f"repeated {k}": v for k, v in sorted(mail.repeats.items())},
        }
        retried = [p for p in self.plans if p.posts > 1]
        fanned_out = sum(
            1
            for n, a in needs.items()
            if n in expectations and expectations[n].fanout and len(a.offers) > 1
        )
        r.notes += [
            f"{fanned_out} urgent need(s) offered to {URGENT_FANOUT} agencies at once, both "
            "accepting",
            f"{len(retried)} intake POSTs retried after a failure, "
            f"{sum(p.answered_200 for p in retried)} answered 200 (the intake was already made)",
            f"agency answers: {dict(responder.stats.answered)}",
            f"notifications' delivery log counts {logged_repeats} repeated send(s)",
        ]

    def write(self, report_dir: Path) -> tuple[Path, Path]:
        report_dir.mkdir(parents=True, exist_ok=True)
        data = asdict(self.report)
        data["failures"] = self.report.failures
        data["config"] = {
            "needs": self.config.needs,
            "rounds": self.config.rounds,
            "seed": self.config.seed,
            "stack_env": STACK_ENV,
        }
        data["plan"] = [
            {k: str(v) for k, v in asdict(p).items() if k not in ("family_name",)}
            for p in self.plans
        ]
        json_path = report_dir / "report.json"
        json_path.write_text(json.dumps(data, indent=2, default=str))
        text_path = report_dir / "report.txt"
        text_path.write_text(self.report.table() + "\n")
        return json_path, text_path


def _mail(message: Any) -> Mail:
    # A long subject is folded onto its own line; what a reader sees is the words.
    return Mail(
        str(message["Message-ID"]),
        str(message["To"]),
        " ".join(str(message["Subject"]).split()),
        message.get_content(),
    )


async def _unless_failed(wait: Awaitable[None], task: asyncio.Task[None]) -> None:
    """Wait for ``wait`` unless ``task`` ends first (its exception is the run's)."""
    waiting = asyncio.ensure_future(wait)
    done, _ = await asyncio.wait({waiting, task}, return_when=asyncio.FIRST_COMPLETED)
    if waiting not in done:
        waiting.cancel()
        task.result()  # raises the submitter's failure
        raise AssertionError("the submitter stopped before the fault's turn")


__all__ = ["STACK_ENV", "TABLE", "Config", "Harness"]
