"""The API other refnet services call, with the shared INTERNAL_API_TOKEN. Left out of the
public OpenAPI: integrators never call it."""

from __future__ import annotations

import hmac
from typing import Annotated, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict

from services.intake.handlers import (
    ContactNotAllowed,
    NotAcceptedYet,
    ReleaseNotYet,
    ReleaseRefused,
    UnknownNeed,
    lookup_contact,
    release_to_agency,
)
from shared.internal_api import ContactRelease, ReleasedContact

router = APIRouter(prefix="/internal/v1", include_in_schema=False)
_bearer = HTTPBearer(auto_error=False)
# Intake applies an acceptance within seconds of notifications hearing of it.
RETRY_AFTER_S = 30


def token_matches(expected: str, credentials: HTTPAuthorizationCredentials | None) -> bool:
    if credentials is None:
        return False
    # Constant time, on bytes: compare_digest refuses non-ASCII str, which a caller can send.
    return hmac.compare_digest(credentials.credentials.encode(), expected.encode())


async def _internal_caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    expected = request.app.state.settings.internal_api_token.get_secret_value()
    if not token_matches(expected, credentials):
        raise HTTPException(
            401,
            "Send the internal API token: Authorization: Bearer <token>.",
            headers={"WWW-Authenticate": "Bearer"},
        )


class ContactLookup(BaseModel):
    model_config = ConfigDict(extra="forbid")

    need_id: UUID
    purpose: Literal["acceptance-notice", "aftercare-check-in"]


class Contact(BaseModel):
    """Only what the one message needs: the chosen channel's address and a first name."""

    channel: Literal["email", "sms"]
    address: str
    name: str


@router.post("/contact-lookups", dependencies=[Depends(_internal_caller)])
async def contact_lookup(request: Request, response: Response, body: ContactLookup) -> Contact:
    """Where to send the person an automated message; every call is audited, refused or not.
    404 unknown need, 409 not accepted yet (retry), 403 never (consent, channel)."""
    state = request.app.state
    # Holds a person's address: no cache may keep it.
    response.headers["Cache-Control"] = "no-store"
    try:
        found = await lookup_contact(
            state.pool, state.crypto, state.clock, body.need_id, body.purpose
        )
    except UnknownNeed as refused:
        raise HTTPException(404, str(refused)) from None
    except NotAcceptedYet as refused:
        raise HTTPException(
            409, f"{refused}: retry later", headers={"Retry-After": str(RETRY_AFTER_S)}
        ) from None
    except ContactNotAllowed as refused:
        raise HTTPException(403, str(refused)) from None
    return Contact.model_validate(found)


@router.post("/contact-releases", dependencies=[Depends(_internal_caller)])
async def contact_release(
    request: Request, response: Response, body: ContactRelease
) -> ReleasedContact:
    """Release the person's contact details to the agency that accepted their need, written
    to the disclosure ledger. 409 while intake has not yet heard of the acceptance (retry);
    403 when it is not this agency's, or the consent no longer covers it."""
    state = request.app.state
    response.headers["Cache-Control"] = "no-store"
    try:
        released = await release_to_agency(
            state.pool, state.crypto, state.clock, body.need_id, body.agency_id, body.viewer
        )
    except ReleaseNotYet as refused:
        raise HTTPException(
            409, f"{refused}: retry later", headers={"Retry-After": str(RETRY_AFTER_S)}
        ) from None
    except ReleaseRefused as refused:
        raise HTTPException(403, str(refused)) from None
    return ReleasedContact.model_validate(released)
