"""Intake's use cases, as plain async functions over explicit dependencies."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import asyncpg

from services.intake import repository as repo
from services.intake.models import (
    CONSENT_FORM_VERSION,
    CONSENT_INFORMATION,
    CONSENT_PURPOSE,
    IntakeRequest,
    age_on,
)
from services.intake.security import PersonIndex, PiiCipher
from shared import metrics, outbox
from shared.clock import Clock
from shared.cloudevents import Envelope, PoisonMessage
from shared.events import (
    CheckInAnswered,
    ConsentRevoked,
    ConsentScope,
    ContactChannel,
    ContactPreferences,
    NeedSubmitted,
    ReferralStatus,
    ReferralStatusChanged,
    Referrer,
)
from shared.inbox import first_delivery, inbox_id
from shared.kafka import Delivery
from shared.topics import CONSENT_EVENTS, NEEDS

log = logging.getLogger(__name__)

SOURCE = "/refnet/intake"
STATUS_CONSUMER = "intake.referral-status"
CHECK_IN_CONSUMER = "intake.check-ins"
DISCLOSER = "refnet referral network (intake service)"
ACCOUNTING_YEARS = 3
# The short notice 42 CFR 2.32(a)(2) allows with every disclosure.
REDISCLOSURE_NOTICE = "42 CFR part 2 prohibits unauthorized use or disclosure of these records."


@dataclass(frozen=True)
class Crypto:
    cipher: PiiCipher
    index: PersonIndex


@dataclass(frozen=True)
class Submitted:
    intake_id: UUID
    created: bool  # False when this submission had already made the intake
    # When it made the intake: one row per need as written, each with the intake's
    # created_at and consent columns, so an answer can be built without reading it back.
    written: list[asyncpg.Record] = field(default_factory=list)


@dataclass(frozen=True)
class KnownPerson:
    """Someone with this name and date of birth is on record: the worker decides."""

    candidates: list[dict[str, Any]]


class TokenRefused(PermissionError):
    """The API token was revoked, or its worker disabled, since the request's check."""


class NotThatPerson(ValueError):
    """reuse_person_id names a person whose name and date of birth differ from the form's."""


async def intake_of_submission(pool: asyncpg.Pool, submission_id: UUID) -> UUID | None:
    """The intake a submission already made: a retry gets it back, whatever the date now."""
    async with pool.acquire() as conn:
        return await repo.intake_of_submission(conn, submission_id)


async def find_persons(
    pool: asyncpg.Pool, crypto: Crypto, given_name: str, family_name: str, dob: date
) -> list[dict[str, Any]]:
    """Everyone on record with this legal name and date of birth, found by their digest."""
    key = crypto.index.match_key(given_name, family_name, dob)
    async with pool.acquire() as conn:
        rows = await repo.persons_by_match_key(conn, key)
    return [_candidate(crypto.cipher, row) for row in rows]


async def known_persons(
    pool: asyncpg.Pool, crypto: Crypto, request: IntakeRequest
) -> list[dict[str, Any]]:
    person = request.person
    return await find_persons(
        pool, crypto, person.legal_given_name, person.legal_family_name, person.date_of_birth
    )


async def tracked_intake(
    pool: asyncpg.Pool, intake_id: UUID, worker: asyncpg.Record
) -> tuple[asyncpg.Record, list[asyncpg.Record]] | None:
    """The intake and its needs, or None unless this worker took it (or is an admin)."""
    async with pool.acquire() as conn:
        intake = await repo.intake_for_worker(conn, intake_id, worker)
        if intake is None:
            return None
        return intake, await repo.needs_of_intake(conn, intake_id)


async def submit_intake(
    pool: asyncpg.Pool,
    crypto: Crypto,
    clock: Clock,
    worker: asyncpg.Record,
    request: IntakeRequest,
    *,
    token: bytes | None = None,
) -> Submitted | KnownPerson:
    """Write the person, consent, intake, needs and one NeedSubmitted per need in ONE
    transaction. The same submission_id always yields the same single intake. With the
    digest of the API ``token`` the worker sent, the token is checked again in that
    transaction (TokenRefused), so a revoked token writes nothing.

    Round trips cost more here than the work they carry: that transaction is one statement
    (repository.write_intake), so one round trip; reusing a person takes one more before."""
    person = request.person
    match_key = crypto.index.match_key(
        person.legal_given_name, person.legal_family_name, person.date_of_birth
    )
    async with pool.acquire() as conn:
        for _ in range(_ATTEMPTS):
            target = await _target(conn, request, match_key, token)
            if isinstance(target, Submitted):
                return target
            written = await _write_intake(
                conn, crypto, clock, worker, request, target, match_key, token
            )
            outcome = written[0]
            if not outcome["token_valid"]:
                raise TokenRefused
            if outcome["existing"] is not None:
                return Submitted(outcome["existing"], created=False)
            if outcome["known"]:
                return await _known_person(conn, crypto, worker, request, match_key)
            if outcome["consent_version"] == target.consent_version:
                break
            # Another intake for the reused person got in first: our events named the
            # consent version it took, so make them again with the next one.
        else:
            raise RuntimeError(f"submission {request.submission_id}: the person kept changing")
    intake_id = outcome["intake_id"]
    log.info("intake %s submitted with %d needs", intake_id, len(request.needs))
    for need in request.needs:
        metrics.NEEDS_SUBMITTED.labels(need.category.value, need.urgency.value).inc()
    return Submitted(intake_id, created=True, written=written)


# How often a submission that reuses a person is tried while other intakes for that person
# keep getting in first (each attempt that loses, one of them won).
_ATTEMPTS = 5


@dataclass(frozen=True)
class _Target:
    """The person an intake is for, and the version their consent will get."""

    person_id: UUID
    person_ref: UUID
    consent_version: int


async def _target(
    conn: asyncpg.Connection, request: IntakeRequest, match_key: bytes, token: bytes | None
) -> _Target | Submitted:
    """A new person, or the one the worker chose to reuse (if it is this one); or the intake
    this submission already made, which answers a retry whatever it says now. The token is
    checked first: whether these details fit a person on record is itself a Part 2 fact."""
    if request.reuse_person_id is None:
        return _Target(uuid4(), uuid4(), consent_version=1)
    found = await repo.person_to_reuse(conn, request.submission_id, request.reuse_person_id, token)
    if not found["token_valid"]:
        raise TokenRefused
    if found["existing"] is not None:
        return Submitted(found["existing"], created=False)
    if found["person_id"] is None or found["match_key"] != match_key:
        raise NotThatPerson(str(request.reuse_person_id))
    return _Target(found["person_id"], found["person_ref"], found["next_version"])


async def _known_person(
    conn: asyncpg.Connection,
    crypto: Crypto,
    worker: asyncpg.Record,
    request: IntakeRequest,
    match_key: bytes,
) -> KnownPerson:
    known = await repo.persons_by_match_key(conn, match_key)
    # Learning that someone is on record is itself a Part 2 fact: leave a trail.
    log.info(
        "worker %s was shown %d known person(s) for submission %s",
        worker["worker_id"],
        len(known),
        request.submission_id,
    )
    return KnownPerson([_candidate(crypto.cipher, row) for row in known])


def _candidate(cipher: PiiCipher, row: asyncpg.Record) -> dict[str, Any]:
    pii = cipher.open(row["pii"], row["person_id"])
    return {
        "person_id": row["person_id"],
        "name": f"{pii['legal_given_name']} {pii['legal_family_name']}",
        "date_of_birth": pii["date_of_birth"],
        "postal_code": row["postal_code"],
        "last_intake_at": row["last_intake_at"],
    }


async def _write_intake(
    conn: asyncpg.Connection,
    crypto: Crypto,
    clock: Clock,
    worker: asyncpg.Record,
    request: IntakeRequest,
    target: _Target,
    match_key: bytes,
    token: bytes | None,
) -> list[asyncpg.Record]:
    """Everything the intake writes, in one statement that writes nothing if the submission
    already made an intake, or (unless the worker chose) the person may be on record, or the
    token is no longer good, or the consent version is no longer the person's next."""
    now = clock.now()
    person, consent_in = request.person, request.consent
    consent_id, intake_id = uuid4(), uuid4()
    constraints = request.constraints.as_event()
    scope = ConsentScope(
        consent_id=consent_id,
        version=target.consent_version,
        categories=request.categories,
        recipients=consent_in.recipients,
        named_agencies=frozenset(consent_in.named_agencies),
        expires_on=consent_in.expires_on,
    )
    referrer = Referrer(worker_ref=worker["worker_id"], notify_email=worker["email"])
    contact = ContactPreferences(
        channel=person.preferred_channel,
        window_from=person.contact_from,
        window_until=person.contact_until,
    )
    needs, events = [], []
    for need in request.needs:
        need_id = uuid4()
        note = crypto.cipher.seal({"note": need.note}, need_id) if need.note else None
        needs.append(
            {
                "need_id": need_id,
                "category": need.category.value,
                "urgency": need.urgency.value,
                "note": note,
            }
        )
        event = NeedSubmitted(
            need_id=need_id,
            person_ref=target.person_ref,
            category=need.category,
            urgency=need.urgency,
            postal_code=person.zip5,
            county=person.county,
            languages=tuple(person.languages),
            age_years=age_on(person.date_of_birth, now.date()),
            recovery_stage=request.recovery.stage,
            gender=person.gender,
            constraints=constraints,
            consent=scope,
            referrer=referrer,
            submitted_at=now,
            contact=contact,
        )
        # The rule the brief puts first: nothing is published without a consent covering it.
        if not scope.covers(need.category, now.date()):
            raise ValueError(f"consent {consent_id} does not cover need {need_id}")
        events.append(outbox.outbox_row(NEEDS, event, source=SOURCE, clock=clock))
    return await repo.write_intake(
        conn,
        check_known=request.reuse_person_id is None and not request.new_person,
        token=token,
        person={
            "person_id": target.person_id,
            "person_ref": target.person_ref,
            "pii": crypto.cipher.seal(_identifiers(request), target.person_id),
            "match_key": match_key,
            "postal_code": person.zip5,
            "county": person.county,
            "languages": list(person.languages),
            "preferred_channel": person.preferred_channel.value,
            "contact_from": person.contact_from,
            "contact_until": person.contact_until,
        },
        consent={
            "consent_id": consent_id,
            "version": target.consent_version,
            "form_version": CONSENT_FORM_VERSION,
            "discloser": DISCLOSER,
            "information": CONSENT_INFORMATION,
            "categories": sorted(request.categories),
            "recipients": consent_in.recipients.value,
            "named_agencies": sorted(consent_in.named_agencies),
            "purpose": CONSENT_PURPOSE,
            "expires_on": consent_in.expires_on,
            "expiry_event": consent_in.expiry_event,
            "signature": crypto.cipher.seal({"signature": consent_in.signature}, consent_id),
            "signed_on": consent_in.signed_on,
        },
        intake={
            "intake_id": intake_id,
            "submission_id": request.submission_id,
            "worker_id": worker["worker_id"],
            "recovery_stage": request.recovery.stage.value,
            "barc10": request.recovery.barc10,
            "constraints": constraints.model_dump(mode="json"),
            "created_at": now,
        },
        needs=needs,
        events=events,
    )


def _identifiers(request: IntakeRequest) -> dict[str, Any]:
    person = request.person
    return {
        "legal_given_name": person.legal_given_name,
        "legal_family_name": person.legal_family_name,
        "preferred_name": person.preferred_name,
        "date_of_birth": person.date_of_birth.isoformat(),
        "email": person.email,
        "phone": person.phone,
    }


async def revoke_consent(
    pool: asyncpg.Pool, clock: Clock, consent_id: UUID, worker: asyncpg.Record, method: str
) -> bool:
    """Record the revocation and tell the network in one transaction. False if the consent
    was already revoked (a repeated click changes nothing)."""
    now = clock.now()
    async with pool.acquire() as conn, conn.transaction():
        revoked = await repo.revoke_consent(conn, consent_id, worker["worker_id"], method, now)
        if revoked is None:
            return False
        event = ConsentRevoked(
            consent_id=consent_id, person_ref=revoked["person_ref"], revoked_at=now
        )
        await outbox.enqueue(conn, CONSENT_EVENTS, event, source=SOURCE, clock=clock)
    log.info("consent %s revoked", consent_id)
    return True


async def on_event(pool: asyncpg.Pool, envelope: Envelope) -> None:
    """The one handler of intake's consumer, which follows several topics."""
    async with pool.acquire() as conn, conn.transaction():
        await _apply(conn, envelope)


async def on_events(pool: asyncpg.Pool, deliveries: Sequence[Delivery]) -> None:
    """A fetch's events of a topic in one transaction: one connection and one commit for the
    batch (shared.kafka.process_batch handles them one at a time again if it fails). Status
    changes in a row go to the database together, in one round trip."""
    async with pool.acquire() as conn, _transaction(conn, deliveries):
        for run in _runs_of_status_changes(deliveries):
            if isinstance(run[0].envelope.event, ReferralStatusChanged):
                await record_referral_statuses(conn, run)
                continue
            with run[0].context():
                await _apply(conn, run[0].envelope)


def _runs_of_status_changes(deliveries: Sequence[Delivery]) -> list[list[Delivery]]:
    """The deliveries in order, consecutive status changes together, anything else alone."""
    runs: list[list[Delivery]] = []
    for delivery in deliveries:
        change = isinstance(delivery.envelope.event, ReferralStatusChanged)
        if change and runs and isinstance(runs[-1][-1].envelope.event, ReferralStatusChanged):
            runs[-1].append(delivery)
        else:
            runs.append([delivery])
    return runs


def _transaction(
    conn: asyncpg.Connection, deliveries: Sequence[Delivery]
) -> contextlib.AbstractAsyncContextManager[Any]:
    """A status change is one statement, atomic by itself: alone in its batch (as at low
    load, where every event comes by itself) it needs no BEGIN and COMMIT, two round trips
    more than the change."""
    if len(deliveries) == 1 and isinstance(deliveries[0].envelope.event, ReferralStatusChanged):
        return contextlib.nullcontext()
    return conn.transaction()


async def _apply(conn: asyncpg.Connection, envelope: Envelope) -> None:
    if isinstance(envelope.event, ReferralStatusChanged):
        await record_referral_status(conn, envelope)
    elif isinstance(envelope.event, CheckInAnswered):
        await record_check_in(conn, envelope)
    else:  # a topic's new event type this build does not know: keep it in the DLQ
        raise PoisonMessage(f"intake does not handle {envelope.type}")


async def record_referral_status(conn: asyncpg.Connection, envelope: Envelope) -> None:
    # Inbox, history and status in one statement: one round trip instead of six, for an
    # event every need brings several of.
    change, event_id = _status_change(envelope)
    first, moved = await repo.record_status(conn, change, STATUS_CONSUMER, event_id)
    _note_unapplied(change, first, moved)


async def record_referral_statuses(conn: asyncpg.Connection, run: Sequence[Delivery]) -> None:
    changes = [_status_change(delivery.envelope) for delivery in run]
    outcomes = await repo.record_statuses(conn, changes, STATUS_CONSUMER)
    for delivery, (change, _), (first, moved) in zip(run, changes, outcomes, strict=True):
        with delivery.context():
            _note_unapplied(change, first, moved)


def _status_change(envelope: Envelope) -> tuple[ReferralStatusChanged, str]:
    change = envelope.event
    assert isinstance(change, ReferralStatusChanged)
    return change, inbox_id(envelope)


def _note_unapplied(change: ReferralStatusChanged, first: bool, moved: bool) -> None:
    # Matching's SUBMITTED confirms what intake recorded when it wrote the need: not news.
    if first and not moved and change.status is not ReferralStatus.SUBMITTED:
        log.info("need %s: status %s is stale or unknown", change.need_id, change.status)


async def record_check_in(conn: asyncpg.Connection, envelope: Envelope) -> None:
    answered = envelope.event
    assert isinstance(answered, CheckInAnswered)
    if not await first_delivery(conn, CHECK_IN_CONSUMER, envelope):
        return
    if not await repo.save_check_in(conn, answered):
        log.info("need %s: day-%d answer is stale or unknown", answered.need_id, answered.day)


async def follow_up_check_in(
    pool: asyncpg.Pool, clock: Clock, worker: asyncpg.Record, need_id: UUID, day: int
) -> bool:
    """The worker has responded to the person's request for help: it leaves their list."""
    async with pool.acquire() as conn:
        return await repo.follow_up_check_in(conn, need_id, day, worker["worker_id"], clock.now())


class ReleaseRefused(PermissionError):
    pass


class ReleaseNotYet(ReleaseRefused):
    """The agency's acceptance has not reached intake yet: asking again shortly will do."""


async def release_contact(
    pool: asyncpg.Pool, crypto: Crypto, clock: Clock, need_id: UUID, agency_id: str
) -> dict[str, Any]:
    """The person's contact details for the agency that accepted the need, written to the
    disclosure ledger in the same transaction that reads them."""
    async with pool.acquire() as conn, conn.transaction():
        need = await repo.accepted_need(conn, need_id)
        _check_release(need, agency_id, clock.now())
        assert need is not None
        pii = crypto.cipher.open(need["pii"], need["person_id"])
        released: dict[str, Any] = {
            "name": pii.get("preferred_name") or pii["legal_given_name"],
            "legal_name": f"{pii['legal_given_name']} {pii['legal_family_name']}",
            "email": pii.get("email"),
            "phone": pii.get("phone"),
            "preferred_channel": need["preferred_channel"],
        }
        await _record_disclosure(conn, clock, need, agency_id, released)
    return {
        **released,
        "consent_id": need["consent_id"],
        "purpose": need["purpose"],
        "notice": REDISCLOSURE_NOTICE,
    }


async def release_to_agency(
    pool: asyncpg.Pool,
    crypto: Crypto,
    clock: Clock,
    need_id: UUID,
    agency_id: str,
    viewer: str,
) -> dict[str, Any]:
    """What the accepting agency needs to reach the person, and no more: a name, the address
    of the channel they chose, their hours. Each release (every view by someone at the
    agency) is written to the disclosure ledger with who asked, in the reading transaction."""
    async with pool.acquire() as conn, conn.transaction():
        need = await repo.accepted_need(conn, need_id)
        _check_release(need, agency_id, clock.now())
        assert need is not None
        pii = crypto.cipher.open(need["pii"], need["person_id"])
        channel = need["preferred_channel"]
        by_phone = channel in (ContactChannel.SMS, ContactChannel.PHONE)
        released: dict[str, Any] = {
            "name": pii.get("preferred_name") or pii["legal_given_name"],
            "email": pii.get("email") if channel == ContactChannel.EMAIL else None,
            "phone": pii.get("phone") if by_phone else None,
        }
        await _record_disclosure(conn, clock, need, agency_id, released, viewer)
    return {
        **released,
        "preferred_channel": channel,
        "contact_from": need["contact_from"],
        "contact_until": need["contact_until"],
        "consent": {
            "consent_id": need["consent_id"],
            "purpose": need["purpose"],
            "categories": list(need["categories"]),
            "recipients": need["recipients"],
            "named_agencies": list(need["named_agencies"] or []),
            "expires_on": need["expires_on"],
        },
        "notice": REDISCLOSURE_NOTICE,
    }


async def _record_disclosure(
    conn: asyncpg.Connection,
    clock: Clock,
    need: asyncpg.Record,
    agency_id: str,
    released: dict[str, Any],
    recipient_user: str | None = None,
) -> None:
    await repo.insert_disclosure(
        conn,
        {
            "disclosure_id": uuid4(),
            "person_id": need["person_id"],
            "consent_id": need["consent_id"],
            "need_id": need["need_id"],
            "recipient_id": agency_id,
            "recipient": need["agency_name"] or agency_id,
            "recipient_user": recipient_user,
            "information": sorted(k for k, v in released.items() if v),
            "purpose": need["purpose"],
            "disclosed_at": clock.now(),
        },
    )


# Statuses before any acceptance: intake may simply not have heard of it yet.
_BEFORE_ACCEPTANCE = ("submitted", "offered", "declined", "expired")


def _check_release(need: asyncpg.Record | None, agency_id: str, now: datetime) -> None:
    if need is not None and need["status"] in _BEFORE_ACCEPTANCE:
        raise ReleaseNotYet(f"the need is {need['status']}, not accepted yet")
    if need is None or need["agency_id"] != agency_id:
        raise ReleaseRefused("this agency has not accepted this need")
    if need["status"] not in ("accepted", "in_progress", "on_hold"):
        raise ReleaseRefused(f"the need is {need['status']}, not accepted")
    if need["revoked_at"] is not None or need["expires_on"] < now.date():
        raise ReleaseRefused("the person's consent is revoked or expired")
    named = need["recipients"] == "named"
    if need["category"] not in need["categories"] or (
        named and agency_id not in need["named_agencies"]
    ):
        raise ReleaseRefused("the person's consent does not cover this agency or need")


class LookupRefused(Exception):
    """A contact lookup that was refused; the message is the reason written to the audit."""


class UnknownNeed(LookupRefused):
    pass


class NotAcceptedYet(LookupRefused):
    """Notifications may ask before intake has applied the acceptance: it retries later."""


class ContactNotAllowed(LookupRefused):
    pass


# Statuses in which an agency has taken the need on, so refnet may write to the person.
CONTACTABLE = frozenset({"accepted", "in_progress", "on_hold", "completed", "failed"})
# Channels refnet sends to itself; phone means a person calls, none means nobody writes.
AUTOMATED_CHANNELS = frozenset({ContactChannel.EMAIL, ContactChannel.SMS})
LOOKUP_REQUESTER = "notifications"


async def lookup_contact(
    pool: asyncpg.Pool, crypto: Crypto, clock: Clock, need_id: UUID, purpose: str
) -> dict[str, str]:
    """Where to send the person one automated message: only the chosen channel's address
    and their first name. Every lookup, granted or refused, is audited in the transaction
    that reads the data; a refusal raises after that commits."""
    now = clock.now()
    async with pool.acquire() as conn, conn.transaction():
        need = await repo.accepted_need(conn, need_id)
        outcome = _contact_or_refusal(crypto, need, now)
        refused = outcome if isinstance(outcome, LookupRefused) else None
        await repo.insert_contact_lookup(
            conn,
            {
                "lookup_id": uuid4(),
                "need_id": need_id,
                "person_id": need["person_id"] if need is not None else None,
                "requested_by": LOOKUP_REQUESTER,
                "purpose": purpose,
                "channel": need["preferred_channel"] if need is not None else None,
                "granted": refused is None,
                "reason": str(refused) if refused else None,
                "looked_up_at": now,
            },
        )
    if isinstance(outcome, LookupRefused):
        raise outcome
    return outcome


def _contact_or_refusal(
    crypto: Crypto, need: asyncpg.Record | None, now: datetime
) -> dict[str, str] | LookupRefused:
    refused = _lookup_refusal(need, now)
    if refused is not None:
        return refused
    assert need is not None
    channel = need["preferred_channel"]
    pii = crypto.cipher.open(need["pii"], need["person_id"])
    address = pii.get("email" if channel == ContactChannel.EMAIL else "phone")
    if not address:
        return ContactNotAllowed(f"no {channel} address on record")
    name = pii.get("preferred_name") or pii["legal_given_name"]
    return {"channel": channel, "address": address, "name": name}


def _lookup_refusal(need: asyncpg.Record | None, now: datetime) -> LookupRefused | None:
    # Consent first: a revoked consent is a final answer, whatever the need's status.
    if need is None:
        return UnknownNeed("unknown need")
    if need["revoked_at"] is not None:
        return ContactNotAllowed("the person's consent is revoked")
    if need["expires_on"] < now.date():
        return ContactNotAllowed("the person's consent has expired")
    if need["status"] == "cancelled":  # final too: retrying would never succeed
        return ContactNotAllowed("the need was cancelled")
    if need["status"] not in CONTACTABLE:
        return NotAcceptedYet(f"the need is {need['status']}, not accepted yet")
    if need["preferred_channel"] not in AUTOMATED_CHANNELS:
        return ContactNotAllowed(f"the person chose {need['preferred_channel']}: no messages")
    return None


async def accounting_of_disclosures(
    pool: asyncpg.Pool, clock: Clock, person_id: UUID
) -> list[asyncpg.Record]:
    """Every disclosure of the person's identifying data in the past three years."""
    since = clock.now() - timedelta(days=365 * ACCOUNTING_YEARS + 1)
    async with pool.acquire() as conn:
        return await repo.disclosures_for_person(conn, person_id, since)


async def reseal_all(pool: asyncpg.Pool, cipher: PiiCipher) -> int:
    """Re-encrypt every sealed value that the current key did not seal (key rotation)."""
    count = 0
    async with pool.acquire() as conn:
        for row in await repo.sealed_values(conn):
            if cipher.needs_reseal(row["sealed"]):
                plain = cipher.open(row["sealed"], row["id"])
                new = cipher.seal(plain, row["id"])
                # Row by row, and only if unchanged since read: a concurrent update wins and
                # the next run re-seals it.
                count += await repo.reseal(conn, row["tbl"], row["id"], row["sealed"], new)
    return count
