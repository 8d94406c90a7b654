"""Intake's use cases, as plain async functions over explicit dependencies."""

from __future__ import annotations

import logging
from uuid import UUID, uuid4

import asyncpg

from services.intake import repository as repo
from services.intake.forms import CONSENT_PURPOSE, IntakeForm
from services.intake.security import PiiCipher
from shared import outbox
from shared.clock import Clock
from shared.cloudevents import Envelope
from shared.events import ConsentScope, NeedSubmitted, ReferralStatusChanged, Referrer
from shared.inbox import first_delivery
from shared.topics import NEEDS

log = logging.getLogger(__name__)

SOURCE = "/refnet/intake"
STATUS_CONSUMER = "intake.referral-status"


async def submit_intake(
    pool: asyncpg.Pool,
    cipher: PiiCipher,
    clock: Clock,
    worker: asyncpg.Record,
    form: IntakeForm,
) -> UUID:
    """Write the person, consent, intake, needs and one NeedSubmitted per need in ONE
    transaction: either all of it exists and will be published, or none of it."""
    now = clock.now()
    person_id, person_ref, consent_id, intake_id = uuid4(), uuid4(), uuid4(), uuid4()
    pii = cipher.seal(
        {
            "given_name": form.given_name,
            "family_name": form.family_name,
            "email": form.email,
            "phone": form.phone,
            "street_address": form.street_address,
        }
    )
    consent = ConsentScope(
        consent_id=consent_id, categories=form.categories, expires_on=form.consent_expires_on
    )
    referrer = Referrer(worker_ref=worker["worker_id"], notify_email=worker["email"])
    async with pool.acquire() as conn, conn.transaction():
        await repo.insert_person(
            conn, person_id, person_ref, pii, form.zip5, form.preferred_language
        )
        await repo.insert_consent(
            conn,
            consent_id,
            person_id,
            form.categories,
            CONSENT_PURPOSE,
            form.consent_expires_on,
            now,
            worker["worker_id"],
        )
        await repo.insert_intake(conn, intake_id, person_id, worker["worker_id"], consent_id, now)
        for position, need in enumerate(form.needs):
            need_id = uuid4()
            await repo.insert_need(
                conn, need_id, intake_id, position, need.category, need.urgency, now
            )
            event = NeedSubmitted(
                need_id=need_id,
                person_ref=person_ref,
                category=need.category,
                urgency=need.urgency,
                postal_code=form.zip5,
                languages=(form.preferred_language,),
                consent=consent,
                referrer=referrer,
                submitted_at=now,
            )
            await outbox.enqueue(conn, NEEDS, event, source=SOURCE, clock=clock)
    log.info("intake %s submitted with %d needs", intake_id, len(form.needs))
    return intake_id


async def record_referral_status(pool: asyncpg.Pool, envelope: Envelope) -> None:
    change = envelope.event
    assert isinstance(change, ReferralStatusChanged)
    async with pool.acquire() as conn, conn.transaction():
        if not await first_delivery(conn, STATUS_CONSUMER, envelope):
            return
        if not await repo.apply_status(conn, change):
            log.info("need %s: status %s is stale or unknown", change.need_id, change.status)
