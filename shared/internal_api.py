"""Bodies of the one synchronous call between services: the agency-facing side (notifications)
asking intake for the contact details of a person an agency has accepted. Notifications'
agency API returns ReleasedContact as it is."""

from __future__ import annotations

from datetime import date, time
from typing import Annotated
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

# A wall-clock time in the network's zone (LOCAL_TIMEZONE), sent as HH:MM:SS with no offset.
# Not JSON Schema's "time" format: that is an RFC 3339 time, which carries an offset.
LocalTime = Annotated[
    time,
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^[0-2]\d:[0-5]\d(:[0-5]\d(\.\d+)?)?$",
            "description": "Local time in the network's time zone, HH:MM:SS, no offset.",
        }
    ),
]


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
    contact_from: LocalTime | None
    contact_until: LocalTime | None
    consent: ConsentScopeOut
    notice: str
