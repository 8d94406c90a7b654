"""The agency directory in Open Referral HSDS 3.x shape: one pydantic model per table row,
and AgencyProfile, one organization's slice of the directory as it travels on the
compacted refnet.agencies.v1 topic.

Only the tables and fields refnet uses are modelled; readers ignore the rest. Eligibility
that HSDS has no column for is an attribute on the service, whose taxonomy term is one of
ELIGIBILITY_TERMS; the service's refnet category is an attribute whose term belongs to
the CATEGORY_TAXONOMY and whose code is a NeedCategory.
"""

from __future__ import annotations

import re
from datetime import datetime, time
from enum import StrEnum
from typing import Annotated, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from shared.events import CapacityStatus, Event, Gender, Insurance

CATEGORY_TAXONOMY = "refnet-recovery-support"
AGENCY_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
_WEEKDAYS = ("MO", "TU", "WE", "TH", "FR", "SA", "SU")


class EligibilityTerm(StrEnum):
    """Taxonomy term codes refnet reads from a service's attributes, with their values."""

    CAPACITY_STATUS = "capacity-status"  # value: a CapacityStatus
    GENDER_SPECIFIC = "gender-specific"  # value: the Gender served
    MAT_FRIENDLY = "mat-friendly"  # value: "true" or "false"
    INSURANCE_ACCEPTED = "insurance-accepted"  # value: an Insurance, one row per plan


ELIGIBILITY_VALUES: dict[EligibilityTerm, frozenset[str]] = {
    EligibilityTerm.CAPACITY_STATUS: frozenset(CapacityStatus),
    EligibilityTerm.GENDER_SPECIFIC: frozenset(Gender),
    EligibilityTerm.MAT_FRIENDLY: frozenset({"true", "false"}),
    EligibilityTerm.INSURANCE_ACCEPTED: frozenset(Insurance),
}


class ExtentType(StrEnum):
    """How a service_area's extent is written. HSDS leaves the vocabulary open; refnet
    reads these three."""

    POSTAL_CODE = "postal_code"  # extent: a five-digit ZIP code
    COUNTY = "county"  # extent: a county name, e.g. "Multnomah"
    RADIUS_KM = "radius_km"  # extent: kilometres around each of the service's locations


def _byday(value: str) -> str:
    days = [d.strip().upper() for d in value.split(",") if d.strip()]
    unknown = [d for d in days if d not in _WEEKDAYS]
    if not days or unknown:
        raise ValueError(f"use comma-separated days from {','.join(_WEEKDAYS)}, not {value!r}")
    return ",".join(days)


class Row(BaseModel):
    """A table row; ``table`` names its HSDS table (and CSV file)."""

    model_config = ConfigDict(extra="ignore", frozen=True, str_strip_whitespace=True)
    table: ClassVar[str]

    id: str = Field(min_length=1)


class Organization(Row):
    table: ClassVar[str] = "organization"

    id: str = Field(pattern=AGENCY_ID_PATTERN)  # also names the agency's Kafka topic
    name: str = Field(min_length=1)
    description: str | None = None
    email: str | None = None
    website: str | None = None


class Service(Row):
    table: ClassVar[str] = "service"

    organization_id: str
    name: str = Field(min_length=1)
    description: str | None = None
    status: str = Field(default="active", pattern=r"^(active|inactive|defunct|temporarily closed)$")
    eligibility_description: str | None = None
    minimum_age: int | None = Field(default=None, ge=0, le=120)
    maximum_age: int | None = Field(default=None, ge=0, le=120)


class Location(Row):
    table: ClassVar[str] = "location"

    organization_id: str | None = None
    name: str | None = None
    location_type: str = Field(default="physical", pattern=r"^(physical|postal|virtual)$")
    latitude: float | None = Field(default=None, ge=-90, le=90)
    longitude: float | None = Field(default=None, ge=-180, le=180)


class ServiceAtLocation(Row):
    table: ClassVar[str] = "service_at_location"

    service_id: str
    location_id: str


class ServiceArea(Row):
    table: ClassVar[str] = "service_area"

    service_id: str
    name: str | None = None
    extent: str = Field(min_length=1)
    extent_type: ExtentType


class Language(Row):
    table: ClassVar[str] = "language"

    service_id: str
    name: str | None = None
    code: str = Field(pattern=r"^[a-z]{2,3}$")  # ISO 639


class Schedule(Row):
    table: ClassVar[str] = "schedule"

    service_id: str
    freq: str = Field(default="WEEKLY", pattern=r"^WEEKLY$")
    byday: Annotated[str, AfterValidator(_byday)]
    opens_at: time
    closes_at: time
    description: str | None = None


class TaxonomyTerm(Row):
    table: ClassVar[str] = "taxonomy_term"

    code: str = Field(min_length=1)
    name: str = Field(min_length=1)
    description: str | None = None
    taxonomy: str | None = None
    version: str | None = None


class Attribute(Row):
    table: ClassVar[str] = "attribute"

    link_id: str
    link_type: str = Field(pattern=r"^(organization|service|location)$")
    link_entity: str | None = None
    taxonomy_term_id: str
    value: str | None = None


class Unit(Row):
    table: ClassVar[str] = "unit"

    name: str = Field(min_length=1)
    scheme: str | None = None
    identifier: str | None = None
    uri: str | None = None


class ServiceCapacity(Row):
    """HSDS 3.1: how many of a unit (places, beds, appointments) a service has free."""

    table: ClassVar[str] = "service_capacity"

    service_id: str
    unit_id: str | None = None
    available: int = Field(ge=0)
    maximum: int | None = Field(default=None, ge=0)
    description: str | None = None
    updated: datetime | None = None


# Every table refnet reads, in the order a data package lists them.
TABLES: tuple[type[Row], ...] = (
    Organization,
    Service,
    Location,
    ServiceAtLocation,
    ServiceArea,
    Language,
    Schedule,
    TaxonomyTerm,
    Attribute,
    Unit,
    ServiceCapacity,
)


class AgencyProfile(Event):
    """One organization and everything about its services, keyed by agency_id on the
    compacted refnet.agencies.v1; a tombstone (null value) removes the agency. ``revision``
    grows with every change the directory publishes, so a reader can skip a stale copy."""

    ce_type: ClassVar[str] = "org.refnet.agency.profile"

    agency_id: str = Field(pattern=AGENCY_ID_PATTERN)
    revision: int
    organization: Organization
    services: tuple[Service, ...] = ()
    locations: tuple[Location, ...] = ()
    service_at_locations: tuple[ServiceAtLocation, ...] = ()
    service_areas: tuple[ServiceArea, ...] = ()
    languages: tuple[Language, ...] = ()
    schedules: tuple[Schedule, ...] = ()
    taxonomy_terms: tuple[TaxonomyTerm, ...] = ()
    attributes: tuple[Attribute, ...] = ()
    units: tuple[Unit, ...] = ()
    service_capacities: tuple[ServiceCapacity, ...] = ()


# AgencyProfile field holding each table's rows (organization holds exactly one).
PROFILE_FIELDS: dict[str, str] = {
    "service": "services",
    "location": "locations",
    "service_at_location": "service_at_locations",
    "service_area": "service_areas",
    "language": "languages",
    "schedule": "schedules",
    "taxonomy_term": "taxonomy_terms",
    "attribute": "attributes",
    "unit": "units",
    "service_capacity": "service_capacities",
}


def is_postal_code(value: str) -> bool:
    return re.fullmatch(r"[0-9]{5}", value) is not None
