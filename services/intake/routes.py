"""Worker-facing pages. Routes parse input and call a handler; rendering is in templates."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any
from uuid import UUID

import asyncpg
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from services.intake import repository as repo
from services.intake.forms import (
    CATEGORY_CHOICES,
    LANGUAGES,
    NEED_ROWS,
    URGENCY_CHOICES,
    parse_intake_form,
)
from services.intake.handlers import submit_intake
from services.intake.security import csrf_matches, new_csrf_token, verify_password
from shared.events import CATEGORY_LABELS, NeedCategory

templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
router = APIRouter()


class LoginRequired(Exception):
    pass


def _csrf_token(request: Request) -> str:
    token = request.session.get("csrf")
    if not token:
        token = request.session["csrf"] = new_csrf_token()
    return str(token)


async def _check_csrf(request: Request) -> dict[str, str]:
    form = {k: str(v) for k, v in (await request.form()).items()}
    if not csrf_matches(request.session.get("csrf"), form.get("csrf_token")):
        raise HTTPException(403, "The form expired or was not sent from refnet. Reload and retry.")
    return form


async def _current_worker(request: Request) -> asyncpg.Record:
    worker_id = request.session.get("worker_id")
    max_age = request.app.state.settings.session_max_age_s
    if not worker_id or time.time() - request.session.get("login_at", 0) > max_age:
        raise HTTPException(303, headers={"Location": "/login"})
    async with request.app.state.pool.acquire() as conn:
        worker = await repo.worker_by_id(conn, UUID(worker_id))
    if worker is None:
        request.session.clear()
        raise HTTPException(303, headers={"Location": "/login"})
    return worker


Worker = Annotated[asyncpg.Record, Depends(_current_worker)]
CsrfForm = Annotated[dict[str, str], Depends(_check_csrf)]


def _render(request: Request, name: str, status_code: int = 200, **context: Any) -> Response:
    context.setdefault("csrf_token", _csrf_token(request))
    return templates.TemplateResponse(request, name, context, status_code=status_code)


@router.get("/healthz", include_in_schema=False)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request) -> Response:
    return _render(request, "login.html", email="", error=None)


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request, form: CsrfForm) -> Response:
    email = form.get("email", "").strip()
    async with request.app.state.pool.acquire() as conn:
        worker = await repo.worker_by_email(conn, email)
    if not verify_password(worker["password_hash"] if worker else None, form.get("password", "")):
        return _render(
            request, "login.html", 401, email=email, error="Email or password is not right."
        )
    assert worker is not None
    request.session.clear()
    request.session.update(
        worker_id=str(worker["worker_id"]), login_at=time.time(), csrf=new_csrf_token()
    )
    return RedirectResponse("/", status_code=303)


@router.post("/logout")
async def logout(request: Request, form: CsrfForm) -> Response:
    request.session.clear()
    return RedirectResponse("/login", status_code=303)


@router.get("/", response_class=HTMLResponse)
async def home(request: Request, worker: Worker) -> Response:
    cipher = request.app.state.cipher
    async with request.app.state.pool.acquire() as conn:
        rows = await repo.recent_intakes(conn, worker["worker_id"])
    intakes = [dict(row, person=cipher.open(row["pii"])) for row in rows]
    return _render(request, "home.html", worker=worker, intakes=intakes)


def _form_context(values: dict[str, str], errors: dict[str, str]) -> dict[str, Any]:
    return {
        "values": values,
        "errors": errors,
        "need_rows": range(NEED_ROWS),
        "categories": CATEGORY_CHOICES,
        "urgencies": URGENCY_CHOICES,
        "languages": LANGUAGES,
    }


@router.get("/intakes/new", response_class=HTMLResponse)
async def new_intake(request: Request, worker: Worker) -> Response:
    today = request.app.state.clock.now().date()
    defaults = {
        "preferred_language": "en",
        "consent_expires_on": (today + timedelta(days=365)).isoformat(),
    }
    return _render(request, "intake_form.html", worker=worker, **_form_context(defaults, {}))


@router.post("/intakes", response_class=HTMLResponse)
async def create_intake(request: Request, worker: Worker, form: CsrfForm) -> Response:
    state = request.app.state
    parsed, errors = parse_intake_form(form, state.clock.now().date())
    if parsed is None:
        return _render(
            request, "intake_form.html", 422, worker=worker, **_form_context(form, errors)
        )
    intake_id = await submit_intake(state.pool, state.cipher, state.clock, worker, parsed)
    return RedirectResponse(f"/intakes/{intake_id}", status_code=303)


@router.get("/intakes/{intake_id}", response_class=HTMLResponse)
async def intake_status(request: Request, intake_id: UUID, worker: Worker) -> Response:
    async with request.app.state.pool.acquire() as conn:
        found = await repo.intake_with_needs(conn, intake_id, worker["worker_id"])
    if found is None:
        raise HTTPException(404, "No such intake.")
    intake, needs = found
    person = request.app.state.cipher.open(intake["pii"])
    open_statuses = {"submitted", "offered", "declined", "expired"}
    return _render(
        request,
        "intake_status.html",
        worker=worker,
        intake=intake,
        person=person,
        needs=needs,
        labels={c.value: CATEGORY_LABELS[c] for c in NeedCategory},
        refresh=any(n["status"] in open_statuses for n in needs),
    )
