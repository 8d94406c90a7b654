"""Intake's data access: every SQL statement the intake service runs lives here."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from shared import outbox
from shared.events import (
    CheckInAnswer,
    CheckInAnswered,
    ReferralStatus,
    ReferralStatusChanged,
)

# Statuses after which a need needs nothing more from anyone.
CLOSED_STATUSES = ("completed", "failed", "cancelled")


# --- workers, tokens and login throttling -------------------------------------------------


async def worker_by_email(conn: asyncpg.Connection, email: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT * FROM workers WHERE lower(email) = lower($1) AND active", email
    )


async def worker_by_id(conn: asyncpg.Connection, worker_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM workers WHERE worker_id = $1 AND active", worker_id)


async def worker_by_token(conn: asyncpg.Connection, digest: bytes) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT w.* FROM worker_tokens t JOIN workers w USING (worker_id) "
        "WHERE t.token_digest = $1 AND t.revoked_at IS NULL AND w.active",
        digest,
    )


# Advisory-lock namespaces (the first key of the two-key form), so kinds never collide. They
# are database-wide, and the services may share one database, so every service's are here:
# 1 (a submission) and 2 (a person's match key): intake_submission_guard (SQL); 3: intake's
# logins; 10: shared/throttle.py; 11: the agency inbox's logins (notifications/accounts.py).
_LOCK_LOGIN = 3


async def _lock(conn: asyncpg.Connection, namespace: int, key: str) -> None:
    await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", namespace, key)


async def lock_login(conn: asyncpg.Connection, account: str) -> None:
    await _lock(conn, _LOCK_LOGIN, account)


async def upsert_worker(
    conn: asyncpg.Connection,
    worker_id: UUID,
    email: str,
    name: str,
    password_hash: str,
    role: str = "intake_worker",
) -> UUID:
    """Create the worker, or reset the password and role of the one with this email."""
    found: UUID = await conn.fetchval(
        "INSERT INTO workers (worker_id, email, display_name, password_hash, role) "
        "VALUES ($1, lower($2), $3, $4, $5) "
        "ON CONFLICT (lower(email)) DO UPDATE SET password_hash = EXCLUDED.password_hash, "
        "display_name = EXCLUDED.display_name, role = EXCLUDED.role, active = true "
        "RETURNING worker_id",
        worker_id,
        email,
        name,
        password_hash,
        role,
    )
    return found


async def set_worker_active(conn: asyncpg.Connection, email: str, active: bool) -> bool:
    worker_id = await conn.fetchval(
        "UPDATE workers SET active = $2 WHERE lower(email) = lower($1) RETURNING worker_id",
        email,
        active,
    )
    if worker_id is not None and not active:
        await conn.execute(
            "UPDATE worker_tokens SET revoked_at = now() "
            "WHERE revoked_at IS NULL AND worker_id = $1",
            worker_id,
        )
    return worker_id is not None


async def insert_token(
    conn: asyncpg.Connection, digest: bytes, worker_id: UUID, label: str
) -> None:
    await conn.execute(
        "INSERT INTO worker_tokens (token_digest, worker_id, label) VALUES ($1, $2, $3)",
        digest,
        worker_id,
        label,
    )


async def login_failures_since(
    conn: asyncpg.Connection, account: str, address: str, since: datetime
) -> tuple[int, int]:
    row = await conn.fetchrow(
        "SELECT count(*) FILTER (WHERE account = $1) AS by_account, "
        "count(*) FILTER (WHERE address = $2) AS by_address "
        "FROM login_failures WHERE failed_at > $3 AND (account = $1 OR address = $2)",
        account,
        address,
        since,
    )
    return int(row["by_account"]), int(row["by_address"])


async def record_login_failure(
    conn: asyncpg.Connection, account: str, address: str, at: datetime
) -> None:
    await conn.execute(
        "INSERT INTO login_failures (account, address, failed_at) VALUES ($1, $2, $3)",
        account,
        address,
        at,
    )


async def forget_login_failures(conn: asyncpg.Connection, account: str, before: datetime) -> None:
    await conn.execute(
        "DELETE FROM login_failures WHERE account = $1 OR failed_at < $2", account, before
    )


async def end_sessions(conn: asyncpg.Connection, worker_id: UUID, at: datetime) -> None:
    """Every session of the worker that logged in at or before ``at`` is over."""
    await conn.execute(
        "UPDATE workers SET sessions_revoked_at = $2 WHERE worker_id = $1", worker_id, at
    )


# --- persons and consents -------------------------------------------------------------------


async def persons_by_match_key(conn: asyncpg.Connection, match_key: bytes) -> list[asyncpg.Record]:
    return list(
        await conn.fetch(
            "SELECT p.person_id, p.person_ref, p.pii, p.postal_code, "
            "max(i.created_at) AS last_intake_at "
            "FROM persons p LEFT JOIN intakes i USING (person_id) "
            "WHERE p.match_key = $1 GROUP BY p.person_id ORDER BY last_intake_at DESC",
            match_key,
        )
    )


async def person_by_id(conn: asyncpg.Connection, person_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM persons WHERE person_id = $1", person_id)


async def revoke_consent(
    conn: asyncpg.Connection, consent_id: UUID, worker_id: UUID, method: str, at: datetime
) -> asyncpg.Record | None:
    """Mark the consent revoked; None if it is unknown or already revoked."""
    return await conn.fetchrow(
        "UPDATE consents c SET revoked_at = $4, revoked_by = $2, revocation_method = $3 "
        "FROM persons p WHERE c.consent_id = $1 AND c.revoked_at IS NULL "
        "AND p.person_id = c.person_id RETURNING c.consent_id, p.person_ref",
        consent_id,
        worker_id,
        method,
        at,
    )


async def consents_for_person(conn: asyncpg.Connection, person_id: UUID) -> list[asyncpg.Record]:
    return list(
        await conn.fetch(
            "SELECT * FROM consents WHERE person_id = $1 ORDER BY version DESC", person_id
        )
    )


# --- intakes and needs --------------------------------------------------------------------


async def intake_of_submission(conn: asyncpg.Connection, submission_id: UUID) -> UUID | None:
    found: UUID | None = await conn.fetchval(
        "SELECT intake_id FROM intakes WHERE submission_id = $1", submission_id
    )
    return found


async def person_to_reuse(
    conn: asyncpg.Connection, submission_id: UUID, person_id: UUID, token: bytes | None
) -> asyncpg.Record:
    """For an intake that reuses a person: whether the API token (its digest, if any) is
    still good, the intake this submission already made (if any), the person (columns None
    if unknown) and the version their next consent gets."""
    row: asyncpg.Record = await conn.fetchrow(
        "SELECT ($3::bytea IS NULL OR EXISTS (SELECT FROM worker_tokens t "
        "JOIN workers w USING (worker_id) WHERE t.token_digest = $3 AND t.revoked_at IS NULL "
        "AND w.active)) AS token_valid, "
        "(SELECT intake_id FROM intakes WHERE submission_id = $1) AS existing, "
        "p.person_id, p.person_ref, p.match_key, "
        "(SELECT coalesce(max(version), 0) + 1 FROM consents WHERE person_id = $2) "
        "AS next_version FROM (SELECT) one LEFT JOIN persons p ON p.person_id = $2",
        submission_id,
        person_id,
        token,
    )
    return row


# The whole intake in one statement, so one round trip and one transaction. First the guard
# (migration 0007): the submission's and the person's locks, then what is true once they are
# held. Unless the submission already made an intake, or someone with this match key is on
# record (when asked to check, $2), or the API token ($5, if any) is no longer good, or the
# person's next consent version is not the one the events were made with ($6), it writes the
# person (or brings a reused one up to date), the consent, the intake, its needs and their
# outbox rows. It answers one row per need written, or one row saying why nothing was; every
# row has the guard's answers, and the intake's and consent's columns as intake_for_worker
# names them.
_WRITE_INTAKE = (
    "WITH guard AS (SELECT * FROM intake_submission_guard($1, $3, $4, $2, $5)), "
    "go AS (SELECT FROM guard "
    "WHERE existing IS NULL AND NOT known AND token_valid AND consent_version = $6), "
    "person AS (INSERT INTO persons (person_id, person_ref, pii, match_key, postal_code, "
    "county, languages, preferred_channel, contact_from, contact_until, created_at, "
    "updated_at) SELECT $4, $7, $8, $3, $9, $10, $11, $12, $13, $14, $15, $15 FROM go "
    "ON CONFLICT (person_id) DO UPDATE SET pii = EXCLUDED.pii, "
    "postal_code = EXCLUDED.postal_code, county = EXCLUDED.county, "
    "languages = EXCLUDED.languages, preferred_channel = EXCLUDED.preferred_channel, "
    "contact_from = EXCLUDED.contact_from, contact_until = EXCLUDED.contact_until, "
    "updated_at = EXCLUDED.updated_at), "
    "consent AS (INSERT INTO consents (consent_id, person_id, version, form_version, "
    "discloser, information, categories, recipients, named_agencies, purpose, expires_on, "
    "expiry_event, signature, signed_on, given_at, witnessed_by) "
    "SELECT $16, $4, $6, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $15, $28 "
    "FROM go RETURNING expires_on, revoked_at), "
    "intake AS (INSERT INTO intakes (intake_id, submission_id, person_id, worker_id, "
    "consent_id, recovery_stage, barc10, constraints, created_at) "
    "SELECT $29, $1, $4, $28, $16, $30, $31, $32, $15 FROM go "
    "RETURNING created_at, consent_id), "
    "need AS (INSERT INTO needs (need_id, intake_id, position, category, urgency, note, "
    "status_at) SELECT n.need_id, $29, n.position - 1, n.category, n.urgency, n.note, $15 "
    "FROM go, unnest($33::uuid[], $34::text[], $35::text[], $36::bytea[]) "
    "WITH ORDINALITY AS n (need_id, category, urgency, note, position) RETURNING *), "
    "event AS (INSERT INTO outbox (event_id, topic, key, headers, value) "
    "SELECT e.event_id, e.topic, e.key, e.headers::jsonb, e.value FROM go, "
    "unnest($37::uuid[], $38::text[], $39::text[], $40::text[], $41::bytea[]) "
    "WITH ORDINALITY AS e (event_id, topic, key, headers, value, position) "
    "ORDER BY e.position) "
    "SELECT g.existing, g.known, g.token_valid, g.consent_version, i.created_at, "
    "i.consent_id, c.expires_on AS consent_expires_on, c.revoked_at AS consent_revoked_at, n.* "
    "FROM guard g LEFT JOIN intake i ON true LEFT JOIN consent c ON true "
    "LEFT JOIN need n ON true ORDER BY n.position"
)


async def write_intake(
    conn: asyncpg.Connection,
    *,
    check_known: bool,
    token: bytes | None,
    person: dict[str, Any],
    consent: dict[str, Any],
    intake: dict[str, Any],
    needs: list[dict[str, Any]],
    events: list[outbox.OutboxRow],
) -> list[asyncpg.Record]:
    """Write a whole intake in one statement, if the guard allows (see _WRITE_INTAKE):
    ``check_known`` refuses a person whose match key is on record, ``token`` (an API
    token's digest) one no longer good, and consent["version"] must be the person's next."""
    return list(
        await conn.fetch(
            _WRITE_INTAKE,
            intake["submission_id"],
            check_known,
            person["match_key"],
            person["person_id"],
            token,
            consent["version"],
            person["person_ref"],
            person["pii"],
            person["postal_code"],
            person["county"],
            person["languages"],
            person["preferred_channel"],
            person["contact_from"],
            person["contact_until"],
            intake["created_at"],
            consent["consent_id"],
            consent["form_version"],
            consent["discloser"],
            consent["information"],
            consent["categories"],
            consent["recipients"],
            consent["named_agencies"],
            consent["purpose"],
            consent["expires_on"],
            consent["expiry_event"],
            consent["signature"],
            consent["signed_on"],
            intake["worker_id"],
            intake["intake_id"],
            intake["recovery_stage"],
            intake["barc10"],
            intake["constraints"],
            # $33 to $41: the needs and their events, column by column
            *_columns(needs, ("need_id", "category", "urgency", "note")),
            [e.event_id for e in events],
            [e.topic for e in events],
            [e.key for e in events],
            [json.dumps(e.headers) for e in events],  # as shared.outbox.write stores them
            [e.value for e in events],
        )
    )


def _columns(rows: list[dict[str, Any]], names: tuple[str, ...]) -> list[list[Any]]:
    return [[row[name] for row in rows] for name in names]


async def apply_status(conn: asyncpg.Connection, change: ReferralStatusChanged) -> bool:
    """Move a need to the reported status unless a later change is already recorded. Every
    change of a need intake holds, stale or not, also goes to its status history."""
    _, moved = await record_status(conn, change)
    return moved


# apply_status in one statement (so one round trip, and its own transaction), optionally
# recording the event in the inbox first ($12, $13: the row shared.inbox.first_delivery
# writes) and changing nothing if it was already there.
_RECORD_STATUS = (
    "WITH delivery AS (INSERT INTO inbox (consumer, event_id) SELECT $12, $13 "
    "WHERE $12::text IS NOT NULL ON CONFLICT DO NOTHING RETURNING 1), "
    "go AS (SELECT WHERE $12::text IS NULL OR EXISTS (SELECT FROM delivery)), "
    "history AS (INSERT INTO status_changes (need_id, sequence, status, agency_id, "
    "agency_name, offer_id, occurred_at) SELECT need_id, $3, $2, $5, $6, $11, $4 "
    "FROM needs, go WHERE need_id = $1 ON CONFLICT (need_id, sequence) DO NOTHING), "
    "moved AS (UPDATE needs SET status = $2, status_sequence = $3, status_at = $4, "
    "agency_id = $5, agency_name = $6, status_reason = $7, respond_by = $8, "
    "attempt = coalesce($9, attempt), "
    "declines = declines + CASE WHEN $2 = 'declined' THEN 1 ELSE 0 END, "
    "offered_at = CASE WHEN $2 = 'offered' THEN $4 ELSE offered_at END, "
    "excluded = CASE WHEN $2 = 'unmatched' THEN $10::jsonb ELSE excluded END "
    "WHERE need_id = $1 AND status_sequence < $3 AND EXISTS (SELECT FROM go) RETURNING 1) "
    "SELECT EXISTS (SELECT FROM go) AS first, EXISTS (SELECT FROM moved) AS moved"
)


async def record_status(
    conn: asyncpg.Connection,
    change: ReferralStatusChanged,
    consumer: str | None = None,
    event_id: str | None = None,
) -> tuple[bool, bool]:
    """apply_status, once per ``event_id`` for ``consumer`` if given (the inbox): whether
    this was the first delivery, and whether the need moved."""
    row = await conn.fetchrow(_RECORD_STATUS, *_record_status_args(change, consumer, event_id))
    return bool(row["first"]), bool(row["moved"])


async def record_statuses(
    conn: asyncpg.Connection, changes: Sequence[tuple[ReferralStatusChanged, str]], consumer: str
) -> list[tuple[bool, bool]]:
    """record_status for each (change, event id) in turn, as one pipelined round trip: each
    statement still sees the ones before it, so a batch ends as applying the changes one by
    one would, stale ones and declines counted included."""
    rows = await conn.fetchmany(
        _RECORD_STATUS,
        [_record_status_args(change, consumer, event_id) for change, event_id in changes],
    )
    return [(bool(row["first"]), bool(row["moved"])) for row in rows]


def _record_status_args(
    change: ReferralStatusChanged, consumer: str | None, event_id: str | None
) -> tuple[Any, ...]:
    return (
        change.need_id,
        change.status.value,
        change.sequence,
        change.occurred_at,
        change.agency_id,
        change.agency_name,
        change.reason,
        change.respond_by,
        change.attempt,
        [e.model_dump() for e in change.excluded],
        change.offer_id,
        consumer,
        event_id,
    )


async def intake_for_worker(
    conn: asyncpg.Connection, intake_id: UUID, worker: asyncpg.Record
) -> asyncpg.Record | None:
    """The intake, only for the worker who took it or an admin (minimum necessary)."""
    return await conn.fetchrow(
        "SELECT i.*, p.pii, p.person_ref, p.postal_code, p.county, p.languages, "
        "p.preferred_channel, p.contact_from, p.contact_until, "
        "c.version AS consent_version, c.expires_on AS consent_expires_on, "
        "c.recipients, c.named_agencies, c.revoked_at AS consent_revoked_at "
        "FROM intakes i JOIN persons p USING (person_id) JOIN consents c USING (consent_id) "
        "WHERE i.intake_id = $1 AND (i.worker_id = $2 OR $3)",
        intake_id,
        worker["worker_id"],
        worker["role"] == "admin",
    )


# The person's most recent check-in answer for need n, as check_in_* columns.
_LATEST_CHECK_IN = (
    "LEFT JOIN LATERAL (SELECT a.day AS check_in_day, a.answer AS check_in_answer, "
    "a.followed_up_at AS check_in_followed_up_at FROM check_in_answers a "
    "WHERE a.need_id = n.need_id ORDER BY a.answered_at DESC, a.day DESC LIMIT 1) ci ON true "
)


async def needs_of_intake(conn: asyncpg.Connection, intake_id: UUID) -> list[asyncpg.Record]:
    return list(
        await conn.fetch(
            "SELECT n.*, ci.* FROM needs n " + _LATEST_CHECK_IN + "WHERE n.intake_id = $1 "
            "ORDER BY n.position",
            intake_id,
        )
    )


async def open_needs(conn: asyncpg.Connection, worker: asyncpg.Record) -> list[asyncpg.Record]:
    """Every need still in play for the worker's intakes (an admin sees everyone's), and
    every closed one whose person asked for help and was not yet followed up."""
    return list(
        await conn.fetch(
            "SELECT n.*, ci.*, i.created_at AS intake_at, p.pii, p.person_id "
            "FROM needs n JOIN intakes i USING (intake_id) JOIN persons p USING (person_id) "
            + _LATEST_CHECK_IN
            + "WHERE (n.status <> ALL($3::text[]) OR (ci.check_in_answer = $4 "
            "AND ci.check_in_followed_up_at IS NULL)) AND (i.worker_id = $1 OR $2) "
            "ORDER BY n.status_at",
            worker["worker_id"],
            worker["role"] == "admin",
            list(CLOSED_STATUSES),
            CheckInAnswer.NEED_HELP.value,
        )
    )


async def recent_intakes(
    conn: asyncpg.Connection, worker: asyncpg.Record, limit: int = 20
) -> list[asyncpg.Record]:
    return list(
        await conn.fetch(
            "SELECT i.intake_id, i.created_at, p.pii, p.person_id, "
            "count(n.need_id) AS need_count, "
            "count(n.need_id) FILTER (WHERE n.status = $3) AS accepted "
            "FROM intakes i JOIN persons p USING (person_id) JOIN needs n USING (intake_id) "
            "WHERE i.worker_id = $1 OR $4 GROUP BY i.intake_id, p.pii, p.person_id "
            "ORDER BY i.created_at DESC LIMIT $2",
            worker["worker_id"],
            limit,
            ReferralStatus.ACCEPTED.value,
            worker["role"] == "admin",
        )
    )


# --- the disclosure ledger ------------------------------------------------------------------


async def insert_disclosure(conn: asyncpg.Connection, disclosure: dict[str, Any]) -> None:
    await conn.execute(
        "INSERT INTO disclosures (disclosure_id, person_id, consent_id, need_id, recipient_id, "
        "recipient, information, purpose, disclosed_at, recipient_user) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        disclosure["disclosure_id"],
        disclosure["person_id"],
        disclosure["consent_id"],
        disclosure["need_id"],
        disclosure["recipient_id"],
        disclosure["recipient"],
        disclosure["information"],
        disclosure["purpose"],
        disclosure["disclosed_at"],
        disclosure.get("recipient_user"),
    )


async def disclosures_for_person(
    conn: asyncpg.Connection, person_id: UUID, since: datetime
) -> list[asyncpg.Record]:
    return list(
        await conn.fetch(
            "SELECT * FROM disclosures WHERE person_id = $1 AND disclosed_at >= $2 "
            "ORDER BY disclosed_at DESC",
            person_id,
            since,
        )
    )


async def accepted_need(conn: asyncpg.Connection, need_id: UUID) -> asyncpg.Record | None:
    """A need with its person and consent, for releasing contact details to its agency or
    for the notifications service's contact lookup."""
    return await conn.fetchrow(
        "SELECT n.need_id, n.status, n.agency_id, n.agency_name, n.category, "
        "p.person_id, p.pii, p.preferred_channel, p.contact_from, p.contact_until, "
        "c.consent_id, c.purpose, c.revoked_at, c.expires_on, c.recipients, c.named_agencies, "
        "c.categories "
        "FROM needs n JOIN intakes i USING (intake_id) JOIN persons p USING (person_id) "
        "JOIN consents c ON c.consent_id = i.consent_id WHERE n.need_id = $1",
        need_id,
    )


async def insert_contact_lookup(conn: asyncpg.Connection, lookup: dict[str, Any]) -> None:
    await conn.execute(
        "INSERT INTO contact_lookups (lookup_id, need_id, person_id, requested_by, purpose, "
        "channel, granted, reason, looked_up_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        lookup["lookup_id"],
        lookup["need_id"],
        lookup["person_id"],
        lookup["requested_by"],
        lookup["purpose"],
        lookup["channel"],
        lookup["granted"],
        lookup["reason"],
        lookup["looked_up_at"],
    )


# --- aftercare check-ins --------------------------------------------------------------------


async def save_check_in(conn: asyncpg.Connection, answered: CheckInAnswered) -> bool:
    """Store the answer unless a later one for that day is already stored; False if the need
    is unknown here or the answer is older. A new answer wants a new follow-up."""
    result = await conn.execute(
        "INSERT INTO check_in_answers (need_id, day, answer, answered_at) "
        "SELECT need_id, $2, $3, $4 FROM needs WHERE need_id = $1 "
        "ON CONFLICT (need_id, day) DO UPDATE SET answer = EXCLUDED.answer, "
        "answered_at = EXCLUDED.answered_at, followed_up_at = NULL, followed_up_by = NULL "
        "WHERE check_in_answers.answered_at < EXCLUDED.answered_at",
        answered.need_id,
        answered.day,
        answered.answer.value,
        answered.answered_at,
    )
    return bool(result != "INSERT 0 0")


async def follow_up_check_in(
    conn: asyncpg.Connection, need_id: UUID, day: int, worker_id: UUID, at: datetime
) -> bool:
    """Record that the worker followed up a request for help; False if there was none."""
    result = await conn.execute(
        "UPDATE check_in_answers SET followed_up_at = $4, followed_up_by = $3 "
        "WHERE need_id = $1 AND day = $2 AND answer = $5 AND followed_up_at IS NULL",
        need_id,
        day,
        worker_id,
        at,
        CheckInAnswer.NEED_HELP.value,
    )
    return bool(result != "UPDATE 0")


# --- key rotation ---------------------------------------------------------------------------


async def sealed_values(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    """Every sealed value with the id it is bound to, for re-sealing under a new key."""
    return list(
        await conn.fetch(
            "SELECT 'persons' AS tbl, person_id AS id, pii AS sealed FROM persons "
            "UNION ALL SELECT 'consents', consent_id, signature FROM consents "
            "WHERE signature IS NOT NULL "
            "UNION ALL SELECT 'needs', need_id, note FROM needs WHERE note IS NOT NULL"
        )
    )


# Each re-seal applies only if the value is still the one read: an update in between wins.
_RESEAL = {
    "persons": "UPDATE persons SET pii = $2 WHERE person_id = $1 AND pii = $3",
    "consents": "UPDATE consents SET signature = $2 WHERE consent_id = $1 AND signature = $3",
    "needs": "UPDATE needs SET note = $2 WHERE need_id = $1 AND note = $3",
}


async def reseal(
    conn: asyncpg.Connection, table: str, row_id: UUID, old: bytes, new: bytes
) -> bool:
    return bool(await conn.execute(_RESEAL[table], row_id, new, old) != "UPDATE 0")


# --- the operator dashboard -----------------------------------------------------------------


async def referral_funnel(
    conn: asyncpg.Connection, since: datetime, reached: dict[str, list[str]]
) -> dict[str, int]:
    """Needs submitted since ``since``, and how many of them ever reached each stage (a
    stage is reached by any of its statuses in the need's history)."""
    row = await conn.fetchrow(
        "SELECT count(*) AS submitted, count(*) FILTER (WHERE h.offered) AS offered, "
        "count(*) FILTER (WHERE h.accepted) AS accepted, "
        "count(*) FILTER (WHERE h.completed) AS completed "
        "FROM needs n JOIN intakes i USING (intake_id) "
        "LEFT JOIN LATERAL (SELECT bool_or(s.status = ANY($2::text[])) AS offered, "
        "bool_or(s.status = ANY($3::text[])) AS accepted, "
        "bool_or(s.status = ANY($4::text[])) AS completed "
        "FROM status_changes s WHERE s.need_id = n.need_id) h ON true "
        "WHERE i.created_at >= $1",
        since,
        reached["offered"],
        reached["accepted"],
        reached["completed"],
    )
    return {name: int(row[name]) for name in ("submitted", "offered", "accepted", "completed")}


async def times_to_accept(conn: asyncpg.Connection, since: datetime) -> list[float]:
    """Seconds from submission (the intake's time) to the first acceptance, for each need
    submitted since ``since`` that was accepted."""
    rows = await conn.fetch(
        "SELECT extract(epoch FROM a.accepted_at - i.created_at)::float8 AS seconds "
        "FROM needs n JOIN intakes i USING (intake_id) "
        "JOIN LATERAL (SELECT min(s.occurred_at) AS accepted_at FROM status_changes s "
        "WHERE s.need_id = n.need_id AND s.status = 'accepted') a "
        "ON a.accepted_at IS NOT NULL WHERE i.created_at >= $1 ORDER BY seconds",
        since,
    )
    return [max(float(row["seconds"]), 0.0) for row in rows]


async def agency_responses(conn: asyncpg.Connection, since: datetime) -> list[asyncpg.Record]:
    """Per agency, the offers made to it since ``since`` and how they were answered: counts,
    and the median seconds from the offer to its first answer (accepted, declined or
    expired; an expiry counts at the time it was recorded)."""
    return list(
        await conn.fetch(
            "WITH offers AS (SELECT offer_id, min(agency_id) AS agency_id, "
            "max(agency_name) AS agency_name, min(occurred_at) AS offered_at "
            "FROM status_changes WHERE status = 'offered' AND offer_id IS NOT NULL "
            "GROUP BY offer_id HAVING min(occurred_at) >= $1), "
            "answers AS (SELECT DISTINCT ON (offer_id) offer_id, status, occurred_at "
            "FROM status_changes WHERE offer_id IS NOT NULL "
            "AND status IN ('accepted', 'declined', 'expired') "
            "ORDER BY offer_id, occurred_at, sequence) "
            "SELECT o.agency_id, max(o.agency_name) AS agency_name, count(*) AS offers, "
            "count(*) FILTER (WHERE a.status = 'accepted') AS accepted, "
            "count(*) FILTER (WHERE a.status = 'declined') AS declined, "
            "count(*) FILTER (WHERE a.status = 'expired') AS expired, "
            "percentile_cont(0.5) WITHIN GROUP (ORDER BY "
            "extract(epoch FROM a.occurred_at - o.offered_at)) "
            "FILTER (WHERE a.offer_id IS NOT NULL) AS median_response_s "
            "FROM offers o LEFT JOIN answers a USING (offer_id) "
            "GROUP BY o.agency_id ORDER BY o.agency_id",
            since,
        )
    )
