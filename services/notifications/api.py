"""The agency HTTP API: for agencies that don't run a Kafka consumer. Each request carries
the agency's API key; an agency sees and answers only its own offers."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from services.notifications import repository as repo
from services.notifications.handlers import (
    Answer,
    Deps,
    agency_for_key,
    answer_offer,
    report_capacity,
)
from shared.events import CapacityStatus, CapacityUpdated, DeclineReason

router = APIRouter(prefix="/agency/v1", tags=["agency"])
_bearer = HTTPBearer(auto_error=False)


def _deps(request: Request) -> Deps:
    deps: Deps = request.app.state.deps
    return deps


async def _agency(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    if credentials is None:
        raise HTTPException(401, "Send your API key as 'Authorization: Bearer <key>'.")
    agency_id = await agency_for_key(_deps(request).pool, credentials.credentials)
    if agency_id is None:
        raise HTTPException(401, "This API key is unknown or revoked.")
    return agency_id


AgencyId = Annotated[str, Depends(_agency)]
AppDeps = Annotated[Deps, Depends(_deps)]


class OfferPublic(BaseModel):
    offer_id: UUID
    need_id: UUID
    respond_by: datetime


class DeclineBody(BaseModel):
    reason: DeclineReason


class AnswerPublic(BaseModel):
    offer_id: UUID
    answer: str


class OfferStatusPublic(BaseModel):
    offer_id: UUID
    need_id: UUID
    respond_by: datetime
    # open, answered (your answer is on its way to matching), placed (another agency
    # accepted first) or closed (expired, withdrawn, or the referral moved on)
    status: str


class CapacityBody(BaseModel):
    status: CapacityStatus
    available: int | None = Field(default=None, ge=0, description="Places free right now.")
    maximum: int | None = Field(default=None, ge=0)


class CapacityAccepted(BaseModel):
    service_id: str
    status: CapacityStatus
    available: int | None


@router.get("/offers")
async def list_open_offers(agency_id: AgencyId, deps: AppDeps) -> list[OfferPublic]:
    async with deps.pool.acquire() as conn:
        rows = await repo.open_offers(conn, agency_id)
    return [
        OfferPublic(**{k: row[k] for k in ("offer_id", "need_id", "respond_by")}) for row in rows
    ]


async def _answer(
    deps: Deps, agency_id: str, offer_id: UUID, reason: DeclineReason | None
) -> AnswerPublic:
    result = await answer_offer(deps, agency_id, offer_id, reason)
    if result == Answer.NOT_FOUND:
        raise HTTPException(404, f"No offer {offer_id} for agency {agency_id}.")
    if result == Answer.ALREADY_PLACED:
        raise HTTPException(409, "Already placed: another agency accepted this referral first.")
    if result == Answer.NOT_OPEN:
        raise HTTPException(409, "This offer is no longer open (answered, expired or withdrawn).")
    return AnswerPublic(offer_id=offer_id, answer="accepted" if reason is None else "declined")


@router.post("/offers/{offer_id}/accept", status_code=202)
async def accept_offer(offer_id: UUID, agency_id: AgencyId, deps: AppDeps) -> AnswerPublic:
    return await _answer(deps, agency_id, offer_id, None)


@router.post("/offers/{offer_id}/decline", status_code=202)
async def decline_offer(
    offer_id: UUID, body: DeclineBody, agency_id: AgencyId, deps: AppDeps
) -> AnswerPublic:
    return await _answer(deps, agency_id, offer_id, body.reason)


@router.get("/offers/{offer_id}")
async def offer_status(offer_id: UUID, agency_id: AgencyId, deps: AppDeps) -> OfferStatusPublic:
    async with deps.pool.acquire() as conn:
        row = await repo.agency_offer(conn, agency_id, offer_id)
    if row is None:
        raise HTTPException(404, f"No offer {offer_id} for agency {agency_id}.")
    return OfferStatusPublic(**{k: row[k] for k in ("offer_id", "need_id", "respond_by", "status")})


@router.put("/services/{service_id}/capacity", status_code=202)
async def update_capacity(
    service_id: str, body: CapacityBody, agency_id: AgencyId, deps: AppDeps
) -> CapacityAccepted:
    """Report a service's room. Matching applies it within seconds; a service that is not
    yours is refused there (and dead-lettered for the operator)."""
    update = CapacityUpdated(
        agency_id=agency_id,
        service_id=service_id,
        status=body.status,
        available=body.available,
        maximum=body.maximum,
        updated_at=deps.clock.now(),
    )
    await report_capacity(deps, update)
    return CapacityAccepted(service_id=service_id, status=body.status, available=body.available)
