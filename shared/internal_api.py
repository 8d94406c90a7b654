"""Bodies of the one synchronous call between services: the agency-facing side (notifications)
asking intake for the contact details of a person an agency has accepted. Notifications'
agency API returns ReleasedContact as it is."""

from __future__ import annotations

from datetime import date, time
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field


class ContactRelease(BaseModel):
    """The agency-facing side (notifications) asking, for one of the agency's people."""

    model_config = ConfigDict(extra="forbid")

    need_id: UUID
    agency_id: str
    viewer: str = Field(description="Who at the agency asked: 'user:<email>' or 'api-key:<id>'")


class ConsentScopeOut(BaseModel):
    consent_id: UUID
    purpose: str
    categories: list[str]
    recipients: str
    named_agencies: list[str]
    expires_on: date


class ReleasedContact(BaseModel):
    """The minimum an accepting agency needs to reach the person, with the Part 2 notice and
    the consent it is disclosed under."""

    name: str
    preferred_channel: str
    email: str | None
    phone: str | None
    contact_from: time | None
    contact_until: time | None
    consent: ConsentScopeOut
    notice: str
