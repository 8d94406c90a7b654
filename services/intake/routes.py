"""Worker-facing pages. Routes parse input and call a handler; rendering is in templates."""

from __future__ import annotations

import csv
import hashlib
import io
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from services.intake import dashboard
from services.intake import repository as repo
from services.intake.auth import (
    Admin,
    CsrfForm,
    TooManyAttempts,
    Worker,
    authenticate,
    csrf_token,
)
from services.intake.forms import (
    MAX_NEED_ROWS,
    FormValues,
    barc10_total,
    field_id,
    parse_intake_form,
    submission_of,
)
from services.intake.handlers import (
    KnownPerson,
    NotThatPerson,
    ReleaseRefused,
    Submitted,
    accounting_of_disclosures,
    find_persons,
    follow_up_check_in,
    intake_of_submission,
    known_persons,
    release_contact,
    revoke_consent,
    submit_intake,
    tracked_intake,
)
from services.intake.models import (
    BARC10_ITEMS,
    BARC10_SCALE,
    CATEGORY_CHOICES,
    CONSENT_INFORMATION,
    CONSENT_PURPOSE,
    EXPIRY_EVENTS,
    GENDER_LABELS,
    INSURANCE_LABELS,
    LANGUAGES,
    REVOCATION_METHODS,
    STAGE_LABELS,
    URGENCY_CHOICES,
)
from services.intake.tracker import SEARCHING, need_view
from shared import dlq
from shared.events import ConsentRecipients
from shared.passwords import new_csrf_token

templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
templates.env.filters["field_id"] = field_id
router = APIRouter(include_in_schema=False)


def _today(request: Request) -> date:
    """Today where the workers are: consent dates are signed in local time, not UTC."""
    state = request.app.state
    return state.clock.now().astimezone(state.settings.zone).date()


def _render(request: Request, template: str, status_code: int = 200, **context: Any) -> Response:
    context.setdefault("csrf_token", csrf_token(request))
    response = templates.TemplateResponse(request, template, context, status_code=status_code)
    # Pages show a person's details: never keep them in a shared cache or the back button.
    response.headers["Cache-Control"] = "no-store"
    return response


@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request) -> Response:
    return _render(request, "login.html", email="", error=None)


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request, form: CsrfForm) -> Response:
    email = form.get("email")
    try:
        worker = await authenticate(request, email, form.raw("password"))
    except TooManyAttempts:
        minutes = request.app.state.settings.login_window_s // 60
        error = f"Too many failed logins. Wait {minutes} minutes, or ask an administrator."
        return _render(request, "login.html", 429, email=email, error=error)
    if worker is None:
        error = "Email or password is not right."
        return _render(request, "login.html", 401, email=email, error=error)
    request.session.clear()
    request.session.update(
        worker_id=str(worker["worker_id"]), login_at=time.time(), csrf=new_csrf_token()
    )
    return RedirectResponse("/", status_code=303)


@router.post("/logout")
async def logout(request: Request, form: CsrfForm) -> Response:
    """Ends the session here and on the server: a copy of the cookie is no longer let in.
    The worker's other sessions (another browser) end with it."""
    worker_id = request.session.get("worker_id")
    if worker_id:
        async with request.app.state.pool.acquire() as conn:
            await repo.end_sessions(conn, UUID(worker_id), datetime.now(UTC))
    request.session.clear()
    return RedirectResponse("/login", status_code=303)


# --- the intake form -----------------------------------------------------------------------


def _form_context(
    request: Request, values: FormValues, errors: dict[str, str], rows: int
) -> dict[str, Any]:
    return {
        "values": values,
        "errors": errors,
        "need_rows": range(rows),
        "categories": CATEGORY_CHOICES,
        "urgencies": URGENCY_CHOICES,
        "languages": LANGUAGES,
        "stages": STAGE_LABELS,
        "genders": GENDER_LABELS,
        "insurance": INSURANCE_LABELS,
        "barc10_items": BARC10_ITEMS,
        "barc10_scale": [(n, f"{n}: {text}") for n, text in BARC10_SCALE.items()],
        "expiry_events": EXPIRY_EVENTS,
        "recipients": ConsentRecipients,
        "consent_information": CONSENT_INFORMATION,
        "consent_purpose": CONSENT_PURPOSE,
        "barc10_total": barc10_total(values),
    }


@router.get("/intakes/new", response_class=HTMLResponse, name="new_intake")
async def new_intake(request: Request, worker: Worker) -> Response:
    today = _today(request)
    defaults = FormValues(
        {
            "submission_id": str(uuid4()),
            "person.languages": "en",
            "person.preferred_channel": "email",
            "consent.recipients": "network",
            "consent.expires_on": (today + timedelta(days=365)).isoformat(),
            "consent.signed_on": today.isoformat(),
        }.items()
    )
    context = _form_context(request, defaults, {}, defaults.need_row_count())
    return _render(request, "intake_form.html", worker=worker, **context)


@router.post("/intakes", response_class=HTMLResponse)
async def create_intake(request: Request, worker: Worker, form: CsrfForm) -> Response:
    state = request.app.state
    rows = form.need_row_count()
    if form.get("action") == "add-need":
        # Without JavaScript, another need row is one more round trip; nothing is validated.
        context = _form_context(request, form, {}, min(rows + 1, MAX_NEED_ROWS))
        return _render(request, "intake_form.html", worker=worker, focus_row=rows, **context)
    submission = submission_of(form)
    done = submission and await intake_of_submission(state.pool, submission)
    if done:  # a resubmission: whatever it says now, it already made this intake
        return RedirectResponse(f"/intakes/{done}", status_code=303)
    parsed, errors = parse_intake_form(form, _today(request))
    if parsed is None:
        context = _form_context(request, form, errors, rows)
        return _render(request, "intake_form.html", 422, worker=worker, **context)
    try:
        outcome = await submit_intake(state.pool, state.crypto, state.clock, worker, parsed)
    except NotThatPerson:
        matches = await known_persons(state.pool, state.crypto, parsed)
        return _ask_which_person(request, worker, form, rows, matches, NOT_THAT_PERSON)
    if isinstance(outcome, KnownPerson):
        return _ask_which_person(request, worker, form, rows, outcome.candidates, WHICH_PERSON)
    assert isinstance(outcome, Submitted)
    return RedirectResponse(f"/intakes/{outcome.intake_id}", status_code=303)


WHICH_PERSON = "Someone with this name and date of birth is on record: reuse them or create new."
NOT_THAT_PERSON = "That record has another name or date of birth: choose again."


def _ask_which_person(
    request: Request,
    worker: Any,
    form: FormValues,
    rows: int,
    matches: list[dict[str, Any]],
    message: str,
) -> Response:
    context = _form_context(request, form, {"person_match": message}, rows)
    return _render(request, "intake_form.html", 409, worker=worker, matches=matches, **context)


# --- the dashboard and the tracker ---------------------------------------------------------


async def _dashboard(request: Request, worker: Any) -> dict[str, Any]:
    state = request.app.state
    now = state.clock.now()
    async with state.pool.acquire() as conn:
        needs = await repo.open_needs(conn, worker)
        intakes = await repo.recent_intakes(conn, worker)
    rows = [
        (
            need_view(row, now),
            _display_name(state.crypto.cipher.open(row["pii"], row["person_id"])),
            row,
        )
        for row in needs
    ]
    rows.sort(key=lambda r: (not r[0].stuck, r[2]["status_at"]))
    recent = [
        dict(row, person=_display_name(state.crypto.cipher.open(row["pii"], row["person_id"])))
        for row in intakes
    ]
    return {
        "worker": worker,
        "open_needs": rows,
        "intakes": recent,
        "live_version": _version([view for view, _, _ in rows]),
    }


@router.get("/", response_class=HTMLResponse)
async def home(request: Request, worker: Worker) -> Response:
    return _render(request, "home.html", **await _dashboard(request, worker))


@router.get("/dashboard/needs", response_class=HTMLResponse)
async def dashboard_needs(request: Request, worker: Worker) -> Response:
    """The open-needs table alone, for the page's script to swap in while it refreshes."""
    return _render(request, "_open_needs.html", **await _dashboard(request, worker))


async def _tracker(request: Request, intake_id: UUID, worker: Any) -> dict[str, Any]:
    state = request.app.state
    found = await tracked_intake(state.pool, intake_id, worker)
    if found is None:
        raise HTTPException(404, "No such intake, or it is not one of yours.")
    intake, needs = found
    now = state.clock.now()
    views = [need_view(row, now) for row in needs]
    return {
        "worker": worker,
        "intake": intake,
        "person": state.crypto.cipher.open(intake["pii"], intake["person_id"]),
        "needs": views,
        "searching": any(v.status in SEARCHING for v in views),
        "live_version": _version([views, intake["consent_revoked_at"]]),
        "stages": STAGE_LABELS,
        "languages": LANGUAGES,
        "revocation_methods": REVOCATION_METHODS,
    }


@router.get("/intakes/{intake_id}", response_class=HTMLResponse)
async def intake_status(request: Request, intake_id: UUID, worker: Worker) -> Response:
    return _render(request, "intake_status.html", **await _tracker(request, intake_id, worker))


@router.get("/intakes/{intake_id}/needs", response_class=HTMLResponse)
async def intake_needs(request: Request, intake_id: UUID, worker: Worker) -> Response:
    return _render(request, "_intake_needs.html", **await _tracker(request, intake_id, worker))


@router.post("/intakes/{intake_id}/consent/revoke")
async def revoke(request: Request, intake_id: UUID, worker: Worker, form: CsrfForm) -> Response:
    state = request.app.state
    async with state.pool.acquire() as conn:
        intake = await repo.intake_for_worker(conn, intake_id, worker)
    if intake is None:
        raise HTTPException(404, "No such intake, or it is not one of yours.")
    method = form.get("method")
    if method not in REVOCATION_METHODS or form.get("confirm") != "yes":
        context = await _tracker(request, intake_id, worker)
        error = "Choose how the person revoked consent and tick the confirmation."
        return _render(
            request, "intake_status.html", 422, revoke_error=error, revoke_method=method, **context
        )
    await revoke_consent(state.pool, state.clock, intake["consent_id"], worker, method)
    return RedirectResponse(f"/intakes/{intake_id}", status_code=303)


@router.post("/intakes/{intake_id}/needs/{need_id}/contact-released")
async def record_contact_release(
    request: Request, intake_id: UUID, need_id: UUID, worker: Worker, form: CsrfForm
) -> Response:
    """The worker gave the person's contact details to the accepting agency (by phone, say):
    checked against the consent and written to the disclosure ledger like any release."""
    state = request.app.state
    context = await _tracker(request, intake_id, worker)
    need = next((n for n in context["needs"] if n.need_id == str(need_id)), None)
    if need is None or need.agency_id is None:
        raise HTTPException(404, "No such need on this intake.")
    try:
        await release_contact(state.pool, state.crypto, state.clock, need_id, need.agency_id)
    except ReleaseRefused as refused:
        return _render(request, "intake_status.html", 409, release_error=str(refused), **context)
    return RedirectResponse(f"/intakes/{intake_id}", status_code=303)


@router.post("/intakes/{intake_id}/needs/{need_id}/check-ins/{day}/followed-up")
async def record_check_in_follow_up(
    request: Request, intake_id: UUID, need_id: UUID, day: int, worker: Worker, form: CsrfForm
) -> Response:
    """The worker responded to the person's "I need help": the need leaves their list. The
    day pins the answer they saw, so a newer request for help stays flagged."""
    state = request.app.state
    context = await _tracker(request, intake_id, worker)
    if not any(n.need_id == str(need_id) for n in context["needs"]):
        raise HTTPException(404, "No such need on this intake.")
    await follow_up_check_in(state.pool, state.clock, worker, need_id, day)
    return RedirectResponse(f"/intakes/{intake_id}", status_code=303)


# --- administration: the accounting of disclosures -----------------------------------------


@router.get("/admin/persons", response_class=HTMLResponse)
async def find_person_page(request: Request, admin: Admin) -> Response:
    query = FormValues([])
    return _render(request, "admin_persons.html", worker=admin, query=query, found=[], error=None)


@router.post("/admin/persons", response_class=HTMLResponse)
async def find_person(request: Request, admin: Admin, form: CsrfForm) -> Response:
    # POST, not GET: a name and date of birth must never sit in a URL, a log or history.
    found, error = await _search_person(request, form)
    return _render(
        request, "admin_persons.html", worker=admin, query=form, found=found, error=error
    )


async def _search_person(
    request: Request, query: FormValues
) -> tuple[list[dict[str, Any]], str | None]:
    state = request.app.state
    try:
        dob = date.fromisoformat(query.get("date_of_birth"))
    except ValueError:
        return [], "Enter the date of birth as YYYY-MM-DD."
    found = await find_persons(
        state.pool, state.crypto, query.get("given_name"), query.get("family_name"), dob
    )
    return found, None if found else "No person with that name and date of birth."


async def _accounting(request: Request, person_id: UUID) -> tuple[dict[str, Any], list[Any]]:
    state = request.app.state
    async with state.pool.acquire() as conn:
        person = await repo.person_by_id(conn, person_id)
    if person is None:
        raise HTTPException(404, "No such person.")
    rows = await accounting_of_disclosures(state.pool, state.clock, person_id)
    return state.crypto.cipher.open(person["pii"], person_id), rows


@router.get("/admin/persons/{person_id}/disclosures", response_class=HTMLResponse)
async def disclosures_page(request: Request, person_id: UUID, admin: Admin) -> Response:
    pii, rows = await _accounting(request, person_id)
    return _render(
        request,
        "admin_disclosures.html",
        worker=admin,
        person_id=person_id,
        person_name=_display_name(pii),
        disclosures=rows,
    )


@router.get("/admin/persons/{person_id}/disclosures.csv")
async def disclosures_csv(request: Request, person_id: UUID, admin: Admin) -> Response:
    _, rows = await _accounting(request, person_id)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(
        [
            "disclosed_at",
            "recipient_id",
            "recipient",
            "recipient_user",
            "information",
            "purpose",
            "consent_id",
            "need_id",
        ]
    )
    for row in rows:
        cells = [
            row["disclosed_at"].isoformat(),
            row["recipient_id"],
            row["recipient"],
            row["recipient_user"] or "",
            "; ".join(row["information"]),
            row["purpose"],
            row["consent_id"],
            row["need_id"],
        ]
        writer.writerow([_inert(cell) for cell in cells])
    return Response(
        out.getvalue(),
        media_type="text/csv",
        headers={
            "Content-Disposition": f'attachment; filename="disclosures-{person_id}.csv"',
            "Cache-Control": "no-store",
        },
    )


# --- administration: the operator dashboard -------------------------------------------------


@router.get("/admin/dashboard", response_class=HTMLResponse)
async def operator_dashboard(request: Request, admin: Admin) -> Response:
    days = dashboard.window_days(request.query_params.get("days"))
    return await _operator_dashboard(request, admin, days)


async def _operator_dashboard(
    request: Request, admin: Any, days: int, status_code: int = 200, error: str | None = None
) -> Response:
    state = request.app.state
    now = state.clock.now()
    shown = await dashboard.dashboard(request.app, state.pool, state.settings, now, days)
    return _render(
        request,
        "admin_dashboard.html",
        status_code,
        worker=admin,
        days=days,
        flash=request.session.pop("dashboard_flash", None),
        replay_error=error,
        **shown,
    )


@router.post("/admin/dashboard/dlq/replay")
async def replay_dead_letter(request: Request, admin: Admin, form: CsrfForm) -> Response:
    """Re-produce one dead letter to its original topic, once; who did it is recorded."""
    state = request.app.state
    days = dashboard.window_days(form.get("days"))
    topic = form.get("dlq_topic")
    try:
        at = dlq.Position(topic, int(form.get("dlq_partition")), int(form.get("dlq_offset")))
        if at.partition < 0 or at.offset < 0:
            raise ValueError("negative position")
    except ValueError:
        raise HTTPException(400, "Name the dead letter by topic, partition and offset.") from None
    if topic not in dlq.dlq_topics():
        raise HTTPException(400, f"{topic} is not a refnet dead-letter queue.")
    try:
        done = await dlq.replay(
            state.pool, state.settings, at, f"worker:{admin['email']}", state.clock.now()
        )
    except dlq.ReplayRefused as refused:
        return await _operator_dashboard(request, admin, days, 409, str(refused))
    request.session["dashboard_flash"] = f"Replayed {done.original} to {done.to}."
    return RedirectResponse(f"/admin/dashboard?days={days}#dead-letters", status_code=303)


def _inert(cell: object) -> str:
    """A spreadsheet must show a cell, never run it: a leading formula sign is escaped."""
    text = "" if cell is None else str(cell)
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text


def _version(shown: object) -> str:
    """Changes whenever what a live region shows changes, so the page swaps only then."""
    return hashlib.sha256(repr(shown).encode()).hexdigest()[:16]


def _display_name(pii: dict[str, Any]) -> str:
    given = pii.get("preferred_name") or pii.get("legal_given_name") or pii.get("given_name", "")
    family = pii.get("legal_family_name") or pii.get("family_name", "")
    return f"{given} {family}".strip()
