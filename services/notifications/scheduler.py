"""The durable scheduler: due jobs are Postgres rows, claimed in batches with FOR UPDATE
SKIP LOCKED under a lease, so several senders share them and a dead sender's jobs come
back when its lease runs out.

A send is arranged so a crash can at worst repeat it under the same key: the delivery is
logged 'sending' and committed, then sent with its idempotency key, then marked sent and the
job done in one transaction. A retry that finds 'sending' resends with the same key, and
the receiving side (Message-ID, the SMS provider's idempotency token, the webhook's id)
recognises the repeat; the log counts it.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from services.notifications import repository as repo
from services.notifications import webhooks
from services.notifications.channels import ChannelError, EmailChannel
from services.notifications.contacts import Contact, ContactBook, ContactRefused
from services.notifications.hours import next_allowed
from services.notifications.jobs import About, JobKind, job_id
from services.notifications.links import CHECK_IN, Link, Links
from services.notifications.messages import Text, category_label, language_for, reason_label, render
from services.notifications.settings import NotificationsSettings
from services.notifications.sms import SmsChannel
from shared import metrics, outbox
from shared.clock import Clock
from shared.events import OfferExpired
from shared.logs import log_context
from shared.topics import OFFER_RESPONSES

log = logging.getLogger(__name__)
SOURCE = "/refnet/notifications"


@dataclass(frozen=True)
class Deps:
    pool: asyncpg.Pool
    clock: Clock
    settings: NotificationsSettings
    email: EmailChannel
    contacts: ContactBook
    links: Links
    sms: SmsChannel | None = None
    webhooks: webhooks.WebhookSender | None = None


class GiveUp(Exception):
    """The job cannot succeed (or must not run): end it with this status and reason."""

    def __init__(self, reason: str, status: str = "failed") -> None:
        super().__init__(reason)
        self.status = status


class NotNow(Exception):
    """The job may not run yet (quiet hours): due again at ``until``."""

    def __init__(self, until: datetime) -> None:
        super().__init__(f"postponed to {until.isoformat()}")
        self.until = until


@dataclass(frozen=True)
class Outgoing:
    channel: str  # email | sms | webhook
    recipient: str  # what the log keeps: a worker's address, a masked one, an agency id
    subject: str
    send: Callable[[], Awaitable[str]]


async def run_scheduler(deps: Deps) -> None:
    while True:
        try:
            claimed = await run_due_jobs(deps)
        except Exception:  # keep the scheduler alive; the jobs stay pending and leased
            log.exception("scheduler cycle failed; retrying")
            claimed = 0
        if claimed < deps.settings.scheduler_batch_size:
            await asyncio.sleep(deps.settings.scheduler_poll_interval_s)


async def run_due_jobs(deps: Deps) -> int:
    s = deps.settings
    now = deps.clock.now()
    async with deps.pool.acquire() as conn:
        jobs = await repo.claim_due_jobs(
            conn, now, timedelta(seconds=s.scheduler_lease_s), s.scheduler_batch_size
        )
    for job in jobs:
        await run_job(deps, job)
    return len(jobs)


async def run_job(deps: Deps, job: asyncpg.Record) -> None:
    """Run one claimed job; whatever happens, it ends done, postponed, retried or given up."""
    with log_context(need_id=job["need_id"], job_id=job["job_id"]):
        await _run_job(deps, job)


async def _run_job(deps: Deps, job: asyncpg.Record) -> None:
    try:
        await _dispatch(deps, job)
    except NotNow as later:
        async with deps.pool.acquire() as conn:
            await repo.postpone_job(conn, job, later.until)
    except GiveUp as end:
        log.info("job %s (%s) %s: %s", job["job_id"], job["kind"], end.status, end)
        async with deps.pool.acquire() as conn:
            await repo.give_up_job(conn, job, end.status, str(end), deps.clock.now())
    except Exception as exc:  # one failing job must not stop the others
        log.warning(
            "job %s (%s) attempt %d failed: %s", job["job_id"], job["kind"], job["attempts"], exc
        )
        async with deps.pool.acquire() as conn:
            await repo.fail_job(
                conn,
                job,
                str(exc),
                retry_at(deps, job["attempts"]),
                deps.settings.scheduler_max_attempts,
            )


def retry_at(deps: Deps, attempts: int) -> datetime:
    """Exponential backoff with jitter (anywhere from half the base to the ceiling), so
    failed sends don't retry in step."""
    s = deps.settings
    ceiling = min(s.retry_cap_s, s.retry_base_s * 2 ** max(attempts - 1, 0))
    return deps.clock.now() + timedelta(seconds=random.uniform(s.retry_base_s / 2, ceiling))


async def _dispatch(deps: Deps, job: asyncpg.Record) -> None:
    async with deps.pool.acquire() as conn:
        need = await repo.referrer(conn, job["need_id"])
        # Scheduled by a handler that had not yet seen the revocation (another replica, or
        # the need's events read before the consent's).
        if need is not None and need["consent_revoked"]:
            await repo.cancel_need_jobs(conn, [job["need_id"]])
            raise GiveUp("consent revoked", "cancelled")
    if job["kind"] == JobKind.OFFER_DEADLINE:
        await _expire_offer(deps, job)
        return
    if need is None:
        raise LookupError(f"need {job['need_id']} not yet known to notifications")
    outgoing = await _outgoing(deps, job, need)
    await deliver(deps, job, outgoing)


async def _outgoing(deps: Deps, job: asyncpg.Record, need: asyncpg.Record) -> Outgoing:
    kind = JobKind(job["kind"])
    if kind == JobKind.WORKER_EMAIL:
        return _worker_email(deps, job, need)
    if kind == JobKind.PERSON_MESSAGE:
        return await _person_message(deps, job, need)
    if kind == JobKind.AGENCY_WEBHOOK:
        return await _agency_webhook(deps, job)
    raise GiveUp(f"unknown job kind {kind}")


async def deliver(deps: Deps, job: asyncpg.Record, out: Outgoing) -> None:
    async with deps.pool.acquire() as conn:
        async with conn.transaction():
            before = await repo.begin_delivery(
                conn, job, out.channel, out.recipient, out.subject, deps.clock.now()
            )
        if before == "sent":
            await repo.finish_job(conn, job, deps.clock.now())
            return
        try:
            provider_id = await out.send()
        except (ChannelError, webhooks.WebhookFailed) as exc:
            metrics.REMINDERS_FAILED.labels(out.channel, job["kind"]).inc()
            await repo.delivery_failed(conn, job, str(exc), deps.clock.now())
            if getattr(exc, "permanent", False):
                raise GiveUp(str(exc)) from exc
            raise
        async with conn.transaction():
            await repo.delivery_sent(conn, job, provider_id, deps.clock.now())
            await repo.finish_job(conn, job, deps.clock.now())
    metrics.REMINDERS_SENT.labels(out.channel, job["kind"]).inc()
    log.info("job %s (%s) delivered by %s", job["job_id"], job["kind"], out.channel)


async def measure_due_jobs(conn: asyncpg.Connection, clock: Clock) -> None:
    """The reminders-due gauge, per job kind: pending jobs whose time has come."""
    due = await repo.due_jobs_by_kind(conn, clock.now())
    for kind in JobKind:
        metrics.REMINDERS_DUE.labels(kind.value).set(due.get(kind.value, 0))


# --- offer deadlines -----------------------------------------------------------------------


async def _expire_offer(deps: Deps, job: asyncpg.Record) -> None:
    now = deps.clock.now()
    async with deps.pool.acquire() as conn, conn.transaction():
        offer = await repo.offer_for_update(conn, job["offer_id"])
        if offer is not None and offer["status"] == "open":
            await repo.set_offer_status(conn, offer["offer_id"], "expiring", now)
            expired = OfferExpired(
                offer_id=offer["offer_id"],
                need_id=offer["need_id"],
                agency_id=offer["agency_id"],
                expired_at=now,
            )
            await outbox.enqueue(
                conn,
                OFFER_RESPONSES,
                expired,
                source=SOURCE,
                clock=deps.clock,
                event_id=job_id(job["job_id"], "event"),
            )
        await repo.finish_job(conn, job, now)


# --- the intake worker ---------------------------------------------------------------------


def _worker_email(deps: Deps, job: asyncpg.Record, need: asyncpg.Record) -> Outgoing:
    payload = job["payload"]
    about = About(payload["about"])
    context = {
        **payload,
        "need_id": job["need_id"],
        "category_label": category_label(need["category"]),
        "urgency": need["urgency"],
        "reason_label": reason_label(payload.get("reason")),
        "aftercare_days": ", ".join(str(d) for d in payload.get("aftercare_days", [])),
    }
    context.setdefault("agency_name", need["agency_name"])
    text = render(f"worker_{about.value.replace('-', '_')}", "en", **context)
    to, key = need["notify_email"], str(job["job_id"])
    return Outgoing(
        "email", to, text.subject, lambda: deps.email.send(to, text.subject, text.body, key)
    )


# --- the person ----------------------------------------------------------------------------


async def _person_message(deps: Deps, job: asyncpg.Record, need: asyncpg.Record) -> Outgoing:
    payload = job["payload"]
    about = About(payload["about"])
    if need["contact_channel"] not in ("email", "sms"):
        raise GiveUp(f"the person chose {need['contact_channel']} contact", "cancelled")
    if about == About.CHECK_IN and need["reminders_stopped_at"] is not None:
        raise GiveUp("the person stopped reminders", "cancelled")
    s = deps.settings
    now = deps.clock.now()
    allowed = next_allowed(
        now,
        s.zone,
        need["window_from"],
        need["window_until"],
        s.quiet_from_hour,
        s.quiet_until_hour,
    )
    if allowed > now:
        raise NotNow(allowed)
    contact = await _contact(deps, job, about)
    language = language_for(need["languages"])
    text = render(
        f"person_{about.value.replace('-', '_')}.{contact.channel}",
        language,
        **_person_context(deps, job, need, contact, language),
    )
    return _to_person(deps, job, contact, text)


async def _contact(deps: Deps, job: asyncpg.Record, about: About) -> Contact:
    purpose = "acceptance-notice" if about == About.ACCEPTED else "aftercare-check-in"
    try:
        return await deps.contacts.contact_for(job["need_id"], purpose)
    except ContactRefused as refused:
        if refused.permanent:
            raise GiveUp(str(refused), "cancelled") from refused
        raise


def _person_context(
    deps: Deps, job: asyncpg.Record, need: asyncpg.Record, contact: Contact, language: str
) -> dict[str, Any]:
    payload = job["payload"]
    context: dict[str, Any] = {
        "name": contact.name,
        "agency_name": payload.get("agency_name") or need["agency_name"],
        "category_label": category_label(need["category"], language),
        "check_in_days": ", ".join(str(d) for d in payload.get("check_in_days", [])),
        "day": payload.get("day"),
        "link_days": deps.settings.link_max_age_days,
    }
    if payload.get("day") is not None:
        link = Link(job["job_id"], job["need_id"], CHECK_IN, day=payload["day"], language=language)
        context["link"] = deps.links.url(link)
    return context


def _to_person(deps: Deps, job: asyncpg.Record, contact: Contact, text: Text) -> Outgoing:
    key = str(job["job_id"])
    masked = mask(contact.address)
    if contact.channel == "sms":
        sms = deps.sms
        if sms is None:
            raise GiveUp("SMS is not configured (SMS_API_URL and credentials)")
        return Outgoing(
            "sms", masked, text.subject, lambda: sms.send(contact.address, text.body.strip(), key)
        )
    return Outgoing(
        "email",
        masked,
        text.subject,
        lambda: deps.email.send(contact.address, text.subject, text.body, key),
    )


def mask(address: str) -> str:
    """Enough of an address for an operator to tell deliveries apart, not to contact anyone:
    the log is not another copy of the person's details."""
    if "@" in address:
        user, domain = address.split("@", 1)
        return f"{user[:1]}***@{domain}"
    return f"***{address[-4:]}"


# --- agencies ------------------------------------------------------------------------------


async def _agency_webhook(deps: Deps, job: asyncpg.Record) -> Outgoing:
    payload = job["payload"]
    agency_id = payload["agency_id"]
    async with deps.pool.acquire() as conn:
        endpoint = await webhooks.endpoint(conn, agency_id)
        offer = await repo.agency_offer(conn, agency_id, job["offer_id"])
        if payload.get("only_if_open") and (offer is None or offer["status"] != "open"):
            raise GiveUp("the offer is no longer open", "cancelled")
    if endpoint is None:
        raise GiveUp(f"agency {agency_id} has no webhook", "cancelled")
    if not endpoint["enabled"]:
        raise GiveUp(f"agency {agency_id}'s webhook is disabled: {endpoint['disabled_reason']}")
    assert deps.webhooks is not None
    sender = deps.webhooks
    key = str(job["job_id"])
    body = webhooks.body_for(
        key, payload["type"], payload["data"], datetime.fromisoformat(payload["created_at"])
    )

    async def send() -> str:
        try:
            status = await sender.send(
                endpoint["url"], endpoint["secret"], key, body, deps.clock.now()
            )
        except webhooks.WebhookFailed as failed:
            await _count_failure(deps, agency_id, failed)
            raise
        async with deps.pool.acquire() as conn:
            await webhooks.record_success(conn, agency_id, deps.clock.now())
        return f"HTTP {status}"

    return Outgoing("webhook", agency_id, payload["type"], send)


async def _count_failure(deps: Deps, agency_id: str, failed: webhooks.WebhookFailed) -> None:
    threshold = 1 if failed.gone else deps.settings.webhook_disable_after
    async with deps.pool.acquire() as conn:
        if await webhooks.record_failure(conn, agency_id, threshold, str(failed), deps.clock.now()):
            log.warning("agency %s: webhook disabled after failures: %s", agency_id, failed)
