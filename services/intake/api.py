"""The JSON API for systems that integrate: the same intake, validation and consent rule as
the form, authenticated with a worker's API token."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Body, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from services.intake import repository as repo
from services.intake.auth import ApiSubmitter, ApiWorker, TokenCaller, bad_token
from services.intake.handlers import (
    KnownPerson,
    NotThatPerson,
    TokenRefused,
    intake_of_submission,
    revoke_consent,
    submit_intake,
    tracked_intake,
)
from services.intake.models import IntakeRequest, check_dates
from services.intake.tracker import need_view
from shared.events import CheckInAnswer, NeedCategory, ReferralStatus, Urgency

router = APIRouter(
    prefix="/api/v1",
    tags=["intakes"],
    responses={
        400: {"description": "The body could not be read (not UTF-8 JSON)."},
        429: {
            "description": "Too many unknown or revoked tokens from your address: every "
            "token is refused until Retry-After (seconds) has passed."
        },
    },
)

EXAMPLE_INTAKE: dict[str, Any] = {
    "submission_id": "6f1c2f0e-8f8e-4a55-9d0b-0d7c9b1f4e21",
    "person": {
        "legal_given_name": "Marisol",
        "legal_family_name": "Quintanilla",
        "preferred_name": "Mari",
        "date_of_birth": "1988-03-14",
        "email": "mari@example.net",
        "phone": "503-555-0142",
        "preferred_channel": "sms",
        "contact_from": "09:00",
        "contact_until": "17:00",
        "languages": ["es", "en"],
        "postal_code": "97214",
        "county": "Multnomah",
    },
    "recovery": {"stage": "early-recovery", "barc10": [5, 4, 4, 3, 5, 4, 3, 6, 4, 5]},
    "needs": [
        {"category": "peer-support", "urgency": "urgent", "note": "Prefers evening groups"},
        {"category": "employment", "urgency": "routine"},
    ],
    "constraints": {
        "has_transportation": False,
        "needs_child_care": True,
        "gender_specific_preferred": False,
        "mat_friendly_required": True,
        "insurance": "medicaid",
    },
    "consent": {
        "confirmed": True,
        "recipients": "network",
        "expires_on": "2027-11-21",
        "signature": "Marisol Quintanilla",
        "signed_on": "2026-11-21",
    },
}


class NeedStatus(BaseModel):
    need_id: UUID
    category: NeedCategory
    urgency: Urgency
    status: ReferralStatus
    agency_id: str | None
    agency_name: str | None
    attempt: int
    respond_by: datetime | None
    reason: str | None = Field(description="Why the need is declined, unmatched or cancelled.")
    stuck: list[str] = Field(description="Why a worker should look at this need now.")
    check_in_answer: CheckInAnswer | None = Field(
        default=None, description="The person's latest answer to an aftercare check-in."
    )
    check_in_day: int | None = Field(
        default=None, description="Days after acceptance of the check-in they answered."
    )


class ConsentStatus(BaseModel):
    consent_id: UUID
    version: int
    expires_on: date
    revoked_at: datetime | None


class IntakeStatus(BaseModel):
    intake_id: UUID
    created_at: datetime
    consent: ConsentStatus
    needs: list[NeedStatus]


class KnownPersonCandidate(BaseModel):
    person_id: UUID
    postal_code: str
    last_intake_at: datetime | None


class KnownPersonConflict(BaseModel):
    detail: str
    candidates: list[KnownPersonCandidate]


class Problem(BaseModel):
    detail: str


class Revocation(BaseModel):
    method: Literal["in-person", "phone", "in-writing"] = Field(
        description="How the person told their worker they revoke consent."
    )


@router.post(
    "/intakes",
    status_code=201,
    response_model=IntakeStatus,
    responses={
        200: {"model": IntakeStatus, "description": "This submission_id was already accepted."},
        401: {"model": Problem},
        409: {
            "model": KnownPersonConflict,
            "description": "A person with this name and date of birth is on record: resend "
            "with reuse_person_id, or with new_person true.",
        },
    },
)
async def create_intake(
    request: Request,
    caller: ApiSubmitter,
    body: Annotated[IntakeRequest, Body(openapi_examples={"full": {"value": EXAMPLE_INTAKE}})],
) -> Any:
    """Submit an intake. Retrying with the same submission_id never creates a second one."""
    state = request.app.state
    today = state.clock.now().astimezone(state.settings.zone).date()
    errors = check_dates(body, today)
    if errors:
        done = await intake_of_submission(state.pool, body.submission_id)
        if done is None:
            raise _invalid(errors)
        # a retry: it made this intake, whatever the date is now
        return await _answer_retry(request, done, caller)
    try:
        outcome = await submit_intake(
            state.pool, state.crypto, state.clock, caller.worker, body, token=caller.token_digest
        )
    except TokenRefused:
        state.recent_tokens.forget(caller.token_digest)
        raise bad_token() from None
    except NotThatPerson:
        raise _invalid(
            {"reuse_person_id": "That person's name or date of birth differs from this one."}
        ) from None
    if isinstance(outcome, KnownPerson):
        conflict = KnownPersonConflict(
            detail="A person with this name and date of birth is already on record.",
            candidates=[KnownPersonCandidate(**c) for c in outcome.candidates],
        )
        return JSONResponse(conflict.model_dump(mode="json"), status_code=409)
    if not outcome.created:
        return await _answer_retry(request, outcome.intake_id, caller)
    # Built from the rows as written, which is what reading them back would find: only status
    # events change a need, and those come after it is published and matched.
    written = outcome.written
    status = _intake_status(outcome.intake_id, written[0], written, written[0]["created_at"])
    # The bytes JSONResponse would make of status.model_dump(mode="json"), in one step.
    return Response(status.model_dump_json(), status_code=201, media_type="application/json")


async def _answer_retry(request: Request, intake_id: UUID, caller: TokenCaller) -> JSONResponse:
    """The intake a retried submission made, as it stands now, for the token's worker as it
    is now (the token was checked moments ago, but maybe not by the database)."""
    async with request.app.state.pool.acquire() as conn:
        worker = await repo.worker_by_token(conn, caller.token_digest)
    if worker is None:
        raise bad_token()
    return JSONResponse((await _status(request, intake_id, worker)).model_dump(mode="json"))


@router.get(
    "/intakes/{intake_id}",
    response_model=IntakeStatus,
    responses={401: {"model": Problem}, 404: {"model": Problem}},
)
async def get_intake(request: Request, intake_id: UUID, worker: ApiWorker) -> IntakeStatus:
    """Where each of the intake's needs stands."""
    return await _status(request, intake_id, worker)


@router.post(
    "/intakes/{intake_id}/consent/revoke",
    response_model=IntakeStatus,
    responses={401: {"model": Problem}, 404: {"model": Problem}},
)
async def revoke(
    request: Request, intake_id: UUID, worker: ApiWorker, body: Revocation
) -> IntakeStatus:
    """Revoke the intake's consent; open referrals under it are then cancelled."""
    state = request.app.state
    async with state.pool.acquire() as conn:
        intake = await repo.intake_for_worker(conn, intake_id, worker)
    if intake is None:
        raise HTTPException(404, "No such intake, or it is not one of yours.")
    await revoke_consent(state.pool, state.clock, intake["consent_id"], worker, body.method)
    return await _status(request, intake_id, worker)


async def _status(request: Request, intake_id: UUID, worker: Any) -> IntakeStatus:
    state = request.app.state
    found = await tracked_intake(state.pool, intake_id, worker)
    if found is None:
        raise HTTPException(404, "No such intake, or it is not one of yours.")
    intake, needs = found
    return _intake_status(intake_id, intake, needs, state.clock.now())


def _intake_status(intake_id: UUID, intake: Any, needs: list[Any], now: datetime) -> IntakeStatus:
    return IntakeStatus(
        intake_id=intake_id,
        created_at=intake["created_at"],
        consent=ConsentStatus(
            consent_id=intake["consent_id"],
            version=intake["consent_version"],
            expires_on=intake["consent_expires_on"],
            revoked_at=intake["consent_revoked_at"],
        ),
        needs=[_need_status(row, now) for row in needs],
    )


def _need_status(row: Any, now: datetime) -> NeedStatus:
    view = need_view(row, now)
    return NeedStatus(
        need_id=row["need_id"],
        category=row["category"],
        urgency=row["urgency"],
        status=row["status"],
        agency_id=row["agency_id"],
        agency_name=row["agency_name"],
        attempt=row["attempt"],
        respond_by=row["respond_by"],
        reason=row["status_reason"],
        stuck=list(view.stuck),
        check_in_answer=CheckInAnswer(view.check_in_answer) if view.check_in_answer else None,
        check_in_day=view.check_in_day,
    )


def _invalid(errors: dict[str, str]) -> RequestValidationError:
    return RequestValidationError(
        [
            {
                "loc": ("body", *(int(p) if p.isdigit() else p for p in path.split("."))),
                "msg": message,
                "type": "value_error",
            }
            for path, message in errors.items()
        ]
    )


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 body without the rejected input: it may hold a person's identifiers,
    and clients, proxies and logs keep responses."""
    assert isinstance(exc, RequestValidationError)
    detail = [{k: err[k] for k in ("loc", "msg", "type") if k in err} for err in exc.errors()]
    return JSONResponse({"detail": detail}, status_code=422)
