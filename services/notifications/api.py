"""The agency HTTP API: for agencies that don't run a Kafka consumer. Each request carries
the agency's API key; an agency sees and answers only its own offers."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field, field_validator

from services.notifications import repository as repo
from services.notifications import webhooks
from services.notifications.agency import (
    NotReleasedYet,
    NotTakenOn,
    NotYours,
    offer_of,
    view_contact,
)
from services.notifications.agency_keys import agency_for_key_from
from services.notifications.fhir import ReferralRecord, referral_bundle
from services.notifications.handlers import (
    Answer,
    Deps,
    answer_offer,
    hash_api_key,
    report_capacity,
    report_outcome,
)
from shared.events import (
    CapacityStatus,
    CapacityUpdated,
    DeclineReason,
    Outcome,
    ReferralOffered,
)
from shared.internal_api import ReleasedContact
from shared.throttle import TooManyFailures, client_address

router = APIRouter(
    prefix="/agency/v1",
    tags=["agency"],
    responses={
        400: {"description": "The body could not be read (not UTF-8 JSON)."},
        401: {"description": "No API key, or one that is unknown or revoked."},
        429: {
            "description": "Too many unknown or revoked keys from your address: every key "
            "is refused until Retry-After (seconds) has passed."
        },
    },
)
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
    deps = _deps(request)
    try:
        agency_id = await agency_for_key_from(
            deps.pool,
            credentials.credentials,
            client_address(request),
            deps.clock.now(),
            deps.settings.api_key_throttle,
        )
    except TooManyFailures as over:
        raise over.http(
            "Too many requests with unknown or revoked API keys from your address."
        ) from None
    if agency_id is None:
        raise HTTPException(401, "This API key is unknown or revoked.")
    # Who asked, for the logs of contact views: the key's fingerprint, never the key.
    request.state.viewer = f"api-key:{hash_api_key(credentials.credentials)[:8]}"
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
    stage: str = Field(
        description="Where the referral stands for your agency: offered, accepted, declined, "
        "expired, placed_elsewhere, cancelled, completed or failed."
    )
    stage_reason: str | None = None
    offer: ReferralOffered | None = Field(
        default=None, description="The offer as your topic carried it (de-identified)."
    )


def _offer_status(row: Any) -> OfferStatusPublic:
    return OfferStatusPublic(
        **{
            k: row[k]
            for k in ("offer_id", "need_id", "respond_by", "status", "stage", "stage_reason")
        },
        offer=ReferralOffered.model_validate(row["details"]) if row["details"] else None,
    )


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


# What answering an offer may meet besides success.
_ANSWER_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"description": "Not your offer."},
    409: {"description": "Already placed with another agency, or no longer open."},
}


@router.post("/offers/{offer_id}/accept", status_code=202, responses=_ANSWER_RESPONSES)
async def accept_offer(offer_id: UUID, agency_id: AgencyId, deps: AppDeps) -> AnswerPublic:
    return await _answer(deps, agency_id, offer_id, None)


@router.post("/offers/{offer_id}/decline", status_code=202, responses=_ANSWER_RESPONSES)
async def decline_offer(
    offer_id: UUID, body: DeclineBody, agency_id: AgencyId, deps: AppDeps
) -> AnswerPublic:
    return await _answer(deps, agency_id, offer_id, body.reason)


@router.get("/offers/{offer_id}", responses={404: {"description": "Not your offer."}})
async def offer_status(offer_id: UUID, agency_id: AgencyId, deps: AppDeps) -> OfferStatusPublic:
    try:
        row = await offer_of(deps.pool, agency_id, offer_id)
    except NotYours as missing:
        raise HTTPException(404, str(missing)) from None
    return _offer_status(row)


@router.get("/referrals")
async def list_referrals(
    agency_id: AgencyId,
    deps: AppDeps,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[OfferStatusPublic]:
    """Every offer made to your agency, newest first, with where its referral stands."""
    async with deps.pool.acquire() as conn:
        rows = await repo.agency_referrals(conn, agency_id, limit)
    return [_offer_status(row) for row in rows]


@router.get(
    "/offers/{offer_id}/contact",
    responses={
        403: {"description": "Your agency has not taken this person on."},
        404: {"description": "Not your offer."},
        409: {"description": "Your acceptance is still being confirmed: retry shortly."},
    },
)
async def contact_details(
    offer_id: UUID, request: Request, response: Response, agency_id: AgencyId, deps: AppDeps
) -> ReleasedContact:
    """The person's contact details, only for a referral your agency accepted. Each call is
    a disclosure under 42 CFR Part 2: it is recorded, and the notice and the consent's scope
    come with the details. Do not store or pass them on beyond what the consent allows."""
    response.headers["Cache-Control"] = "no-store"
    try:
        released = await view_contact(deps, agency_id, offer_id, request.state.viewer)
    except NotYours as missing:
        raise HTTPException(404, str(missing)) from None
    except NotTakenOn as refused:
        raise HTTPException(403, str(refused)) from None
    except NotReleasedYet as later:
        raise HTTPException(409, str(later), headers={"Retry-After": "5"}) from None
    return ReleasedContact.model_validate(released)


@router.get(
    "/offers/{offer_id}/fhir",
    responses={
        200: {"content": {"application/fhir+json": {}}},
        404: {"description": "Not your offer."},
    },
)
async def offer_as_fhir(offer_id: UUID, agency_id: AgencyId, deps: AppDeps) -> Response:
    """The referral as an HL7 FHIR R4 Bundle: a ServiceRequest and the Task for your agency,
    statuses mapped as the SDOH Clinical Care IG does (docs/fhir.md). De-identified: the
    person's contact details come only from the contact endpoint."""
    try:
        row = await offer_of(deps.pool, agency_id, offer_id)
    except NotYours as missing:
        raise HTTPException(404, str(missing)) from None
    bundle = referral_bundle(_fhir_record(row), deps.settings.public_url)
    return Response(json.dumps(bundle), media_type="application/fhir+json")


def _fhir_record(row: Any) -> ReferralRecord:
    details = row["details"] or {}
    return ReferralRecord(
        need_id=row["need_id"],
        offer_id=row["offer_id"],
        agency_id=row["agency_id"],
        agency_name=row["agency_name"],
        attempt=details.get("attempt", 1),
        category=details.get("category", "case-management"),
        urgency=details.get("urgency", "routine"),
        postal_code=details.get("postal_code", ""),
        offered_at=row["offered_at"] or row["updated_at"],
        respond_by=row["respond_by"],
        status=row["stage"],
        reason=row["stage_reason"],
        updated_at=row["stage_at"] or row["updated_at"],
    )


class OutcomeBody(BaseModel):
    outcome: Outcome


class OutcomePublic(BaseModel):
    offer_id: UUID
    outcome: Outcome


@router.post(
    "/offers/{offer_id}/outcome",
    status_code=202,
    responses={
        404: {"description": "Not your offer."},
        409: {"description": "Only the offer your agency accepted has an outcome."},
    },
)
async def report_offer_outcome(
    offer_id: UUID, body: OutcomeBody, agency_id: AgencyId, deps: AppDeps
) -> OutcomePublic:
    """Close the loop on a referral you accepted: got-help completes it, any other outcome
    closes it as failed with that reason."""
    result = await report_outcome(deps, agency_id, offer_id, body.outcome)
    if result == Answer.NOT_FOUND:
        raise HTTPException(404, f"No offer {offer_id} for agency {agency_id}.")
    if result == Answer.NOT_OPEN:
        raise HTTPException(409, "Only the offer you accepted has an outcome to report.")
    return OutcomePublic(offer_id=offer_id, outcome=body.outcome)


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


# --- webhooks: offers and outcome requests pushed to the agency (docs/webhooks.md) ---------


class WebhookBody(BaseModel):
    url: str = Field(description="https (plain http only for 127.0.0.1 or localhost).")

    @field_validator("url")
    @classmethod
    def _valid_url(cls, url: str) -> str:
        return webhooks.validate_url(url)


class WebhookRegistered(BaseModel):
    url: str
    secret: str = Field(description="Verifies Refnet-Signature. Shown only in this response.")
    enabled: bool


class WebhookPublic(BaseModel):
    url: str
    enabled: bool
    consecutive_failures: int
    disabled_at: datetime | None
    disabled_reason: str | None


class WebhookDeliveryPublic(BaseModel):
    delivery_id: str = Field(description="As sent in Refnet-Webhook-Id and the body's id.")
    event: str | None
    status: str = Field(description="sending, sent, failed, replayed...")
    attempts: int
    error: str | None
    sent_at: datetime | None
    updated_at: datetime | None
    next_attempt_at: datetime | None = Field(description="When a retry is due, if one is.")


@router.put("/webhook")
async def register_webhook(
    body: WebhookBody, agency_id: AgencyId, deps: AppDeps
) -> WebhookRegistered:
    """Set (or replace) where your webhooks go. Each call issues a new secret, re-enables a
    disabled endpoint and forgets its failures."""
    async with deps.pool.acquire() as conn:
        secret = await webhooks.register(conn, agency_id, body.url, deps.clock.now())
    return WebhookRegistered(url=body.url, secret=secret, enabled=True)


@router.get("/webhook", responses={404: {"description": "No webhook is registered."}})
async def get_webhook(agency_id: AgencyId, deps: AppDeps) -> WebhookPublic:
    async with deps.pool.acquire() as conn:
        row = await webhooks.endpoint(conn, agency_id)
    if row is None:
        raise HTTPException(404, "No webhook is registered for this agency.")
    return WebhookPublic(
        **{
            k: row[k]
            for k in ("url", "enabled", "consecutive_failures", "disabled_at", "disabled_reason")
        }
    )


@router.delete("/webhook", status_code=204)
async def delete_webhook(agency_id: AgencyId, deps: AppDeps) -> Response:
    async with deps.pool.acquire() as conn:
        await webhooks.remove(conn, agency_id)
    return Response(status_code=204)


@router.get("/webhook/deliveries")
async def webhook_deliveries(
    agency_id: AgencyId,
    deps: AppDeps,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[WebhookDeliveryPublic]:
    """Your latest webhook deliveries, newest first."""
    async with deps.pool.acquire() as conn:
        rows = await webhooks.recent_deliveries(conn, agency_id, limit)
    return [
        WebhookDeliveryPublic(
            delivery_id=str(row["job_id"] or row["idempotency_key"]),
            event=row["subject"],
            status=row["status"],
            attempts=row["attempts"],
            error=row["error"],
            sent_at=row["sent_at"],
            updated_at=row["updated_at"],
            next_attempt_at=row["next_attempt_at"],
        )
        for row in rows
    ]
