"""The agency web inbox: for agencies that will never run a Kafka consumer or call an API.

Server-rendered, works without JavaScript. Someone at the agency logs in, sees the offers
(de-identified: what the agency decides on, and why refnet chose it), accepts or declines,
and only for a referral the agency took on sees the person's contact details, beside the
42 CFR Part 2 notice and the consent they are disclosed under, then records the outcome.
Every page is the agency's own: another agency's offer is a 404, like one that never was.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from services.notifications import repository as repo
from services.notifications.accounts import (
    AgencyUser,
    TooManyAttempts,
    authenticate,
    end_sessions,
    user_by_id,
)
from services.notifications.agency import (
    TAKEN_ON,
    NotReleasedYet,
    NotTakenOn,
    NotYours,
    offer_of,
    view_contact,
)
from services.notifications.handlers import Answer, answer_offer, report_outcome
from services.notifications.scheduler import Deps
from shared.events import (
    CATEGORY_LABELS,
    OUTCOME_LABELS,
    DeclineReason,
    NeedCategory,
    Outcome,
    ReferralOffered,
)
from shared.passwords import csrf_matches, new_csrf_token
from shared.throttle import client_address

router = APIRouter(prefix="/inbox", include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).parent / "templates" / "inbox")

DECLINE_LABELS = {
    DeclineReason.NO_CAPACITY: "No capacity right now",
    DeclineReason.NOT_ELIGIBLE: "Not eligible for our service",
    DeclineReason.CANT_REACH: "We can't serve that area or time",
    DeclineReason.OTHER: "Other",
}
STAGE_LABELS = {
    "offered": "Waiting for your answer",
    "accepted": "Accepted",
    "in_progress": "In progress",
    "on_hold": "On hold",
    "declined": "Declined",
    "expired": "Expired",
    "placed_elsewhere": "Placed with another agency",
    "withdrawn": "Withdrawn",
    "cancelled": "Cancelled",
    "completed": "Completed",
    "failed": "Closed without success",
}


def _deps(request: Request) -> Deps:
    deps: Deps = request.app.state.deps
    return deps


def _csrf(request: Request) -> str:
    token = request.session.get("csrf")
    if not token:
        token = request.session["csrf"] = new_csrf_token()
    return str(token)


async def _form(request: Request) -> dict[str, str]:
    form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
    if not csrf_matches(request.session.get("csrf"), form.get("csrf_token")):
        raise HTTPException(403, "The form expired or was not sent from refnet. Reload and retry.")
    return form


async def _signed_in(request: Request) -> AgencyUser:
    user_id = request.session.get("agency_user")
    max_age = _deps(request).settings.inbox_session_max_age_s
    user = None
    login_at = request.session.get("login_at", 0)
    if user_id and time.time() - login_at <= max_age:
        async with _deps(request).pool.acquire() as conn:
            user = await user_by_id(conn, user_id, logged_in_at=login_at)
    if user is None:
        request.session.pop("agency_user", None)
        raise HTTPException(303, headers={"Location": "/inbox/login"})
    return user


User = Annotated[AgencyUser, Depends(_signed_in)]
Form = Annotated[dict[str, str], Depends(_form)]


def _render(request: Request, template: str, status_code: int = 200, **context: Any) -> Response:
    context.setdefault("csrf_token", _csrf(request))
    context.setdefault("stage_labels", STAGE_LABELS)
    response = templates.TemplateResponse(request, template, context, status_code=status_code)
    # Contact pages hold a person's details: no cache, nor the back button, may keep them.
    response.headers["Cache-Control"] = "no-store"
    return response


def _to(path: str) -> Response:
    return RedirectResponse(path, status_code=303)


@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request) -> Response:
    return _render(request, "login.html", email="", error=None)


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request, form: Form) -> Response:
    deps = _deps(request)
    email = form.get("email", "")
    address = client_address(request)
    try:
        user = await authenticate(
            deps.pool, deps.settings, deps.clock.now(), email, form.get("password", ""), address
        )
    except TooManyAttempts:
        error = "Too many failed attempts. Wait 15 minutes, or ask your refnet operator."
        return _render(request, "login.html", 429, email=email, error=error)
    if user is None:
        return _render(request, "login.html", 401, email=email, error="Wrong email or password.")
    request.session.clear()
    request.session.update(agency_user=user.user_id, login_at=time.time())
    return _to("/inbox")


@router.post("/logout")
async def logout(request: Request, form: Form) -> Response:
    """Ends the session here and on the server: a copy of the cookie is no longer let in.
    The user's other sessions (another browser) end with it."""
    user_id = request.session.get("agency_user")
    if user_id:
        async with _deps(request).pool.acquire() as conn:
            await end_sessions(conn, user_id, datetime.now(UTC))
    request.session.clear()
    return _to("/inbox/login")


@router.get("", response_class=HTMLResponse)
async def inbox(request: Request, user: User) -> Response:
    async with _deps(request).pool.acquire() as conn:
        rows = await repo.agency_referrals(conn, user.agency_id)
    offers = [_summary(row) for row in rows]
    return _render(
        request,
        "inbox.html",
        user=user,
        open_offers=[o for o in offers if o["open"]],
        taken_on=[o for o in offers if o["stage"] in TAKEN_ON],
        others=[o for o in offers if not o["open"] and o["stage"] not in TAKEN_ON],
    )


@router.get("/offers/{offer_id}", response_class=HTMLResponse)
async def offer_page(request: Request, offer_id: UUID, user: User) -> Response:
    return await _offer_view(request, offer_id, user)


async def _offer_view(
    request: Request, offer_id: UUID, user: AgencyUser, status_code: int = 200, **extra: Any
) -> Response:
    try:
        row = await offer_of(_deps(request).pool, user.agency_id, offer_id)
    except NotYours as missing:
        raise HTTPException(404, str(missing)) from None
    return _render(
        request,
        "offer.html",
        status_code,
        user=user,
        offer=_summary(row),
        decline_reasons=DECLINE_LABELS,
        outcomes=OUTCOME_LABELS,
        taken_on=row["stage"] in TAKEN_ON,
        **extra,
    )


@router.post("/offers/{offer_id}/accept")
async def accept(request: Request, offer_id: UUID, user: User, form: Form) -> Response:
    return await _answer(request, offer_id, user, None)


@router.post("/offers/{offer_id}/decline")
async def decline(request: Request, offer_id: UUID, user: User, form: Form) -> Response:
    try:
        reason = DeclineReason(form.get("reason", ""))
    except ValueError:
        error = "Choose a reason for declining."
        return await _offer_view(request, offer_id, user, 422, decline_error=error)
    return await _answer(request, offer_id, user, reason)


async def _answer(
    request: Request, offer_id: UUID, user: AgencyUser, reason: DeclineReason | None
) -> Response:
    result = await answer_offer(_deps(request), user.agency_id, offer_id, reason)
    if result == Answer.NOT_FOUND:
        raise HTTPException(404, f"No offer {offer_id} for agency {user.agency_id}.")
    if result != Answer.RECORDED:
        error = (
            "Another agency accepted this referral first."
            if result == Answer.ALREADY_PLACED
            else "This offer is no longer open: it was answered, expired or withdrawn."
        )
        return await _offer_view(request, offer_id, user, 409, answer_error=error)
    return _to(f"/inbox/offers/{offer_id}")


@router.get("/offers/{offer_id}/contact", response_class=HTMLResponse)
async def contact_page(request: Request, offer_id: UUID, user: User) -> Response:
    try:
        released = await view_contact(
            _deps(request), user.agency_id, offer_id, f"user:{user.email}"
        )
    except NotYours as missing:
        raise HTTPException(404, str(missing)) from None
    except NotTakenOn as refused:
        return await _offer_view(request, offer_id, user, 403, contact_error=str(refused))
    except NotReleasedYet as later:
        return await _offer_view(request, offer_id, user, 409, contact_error=str(later))
    row = await offer_of(_deps(request).pool, user.agency_id, offer_id)
    scope = released["consent"]
    categories = [CATEGORY_LABELS.get(NeedCategory(c), c) for c in scope["categories"]]
    return _render(
        request,
        "contact.html",
        user=user,
        offer=_summary(row),
        contact=released,
        categories=categories,
    )


@router.post("/offers/{offer_id}/outcome")
async def outcome(request: Request, offer_id: UUID, user: User, form: Form) -> Response:
    try:
        chosen = Outcome(form.get("outcome", ""))
    except ValueError:
        error = "Choose how the referral ended."
        return await _offer_view(request, offer_id, user, 422, outcome_error=error)
    result = await report_outcome(_deps(request), user.agency_id, offer_id, chosen)
    if result == Answer.NOT_FOUND:
        raise HTTPException(404, f"No offer {offer_id} for agency {user.agency_id}.")
    if result != Answer.RECORDED:
        error = "Only a referral your agency accepted has an outcome to record."
        return await _offer_view(request, offer_id, user, 409, outcome_error=error)
    return _to(f"/inbox/offers/{offer_id}?outcome=recorded")


def _summary(row: Any) -> dict[str, Any]:
    """An offer as the inbox shows it: the de-identified facts and where it stands."""
    details = ReferralOffered.model_validate(row["details"]) if row["details"] else None
    return {
        "offer_id": row["offer_id"],
        "need_id": row["need_id"],
        "respond_by": row["respond_by"],
        "offered_at": row["offered_at"],
        "status": row["status"],
        "stage": row["stage"],
        "stage_reason": row["stage_reason"],
        "open": row["status"] == "open" and row["stage"] == "offered",
        "answered": row["status"] == "answered" and row["stage"] == "offered",
        "details": details,
        "category": details.category.label if details else None,
    }
