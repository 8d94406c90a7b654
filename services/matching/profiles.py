"""Turn an agency's HSDS profile into the facts matching decides on: pure functions.

A profile arrives on refnet.agencies.v1 as HSDS rows; matching keeps, per active service,
its category, where it works, who it serves, its hours and its room.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from services.matching.geo import Point
from services.matching.ranking import OpeningHours
from shared.events import CapacityStatus, Gender, NeedCategory
from shared.hsds import (
    CATEGORY_TAXONOMY,
    AgencyProfile,
    Attribute,
    EligibilityTerm,
    ExtentType,
    ServiceArea,
)

E = TypeVar("E", Gender, CapacityStatus)


@dataclass(frozen=True)
class ServiceFacts:
    service_id: str
    agency_id: str
    name: str
    category: NeedCategory
    postal_codes: frozenset[str]
    counties: frozenset[str]  # lower case
    radius_km: float | None
    locations: tuple[Point, ...]
    languages: frozenset[str]
    minimum_age: int | None
    maximum_age: int | None
    gender: Gender | None
    mat_friendly: bool | None
    insurance: frozenset[str]
    capacity_status: CapacityStatus
    available: int | None
    capacity_as_of: datetime | None
    schedule: tuple[OpeningHours, ...]


def service_facts(profile: AgencyProfile) -> list[ServiceFacts]:
    """One entry per active service with a refnet category; others cannot be offered."""
    terms = {t.id: t for t in profile.taxonomy_terms}
    by_service: dict[str, list[tuple[str, str]]] = {}
    for attribute in profile.attributes:
        if attribute.link_type == "service" and attribute.taxonomy_term_id in terms:
            term = terms[attribute.taxonomy_term_id]
            code = term.code if term.taxonomy != CATEGORY_TAXONOMY else f"category:{term.code}"
            by_service.setdefault(attribute.link_id, []).append((code, _value(attribute)))
    facts = []
    for service in profile.services:
        tags = by_service.get(service.id, [])
        category = _category(tags)
        if service.status != "active" or category is None:
            continue
        facts.append(_facts(profile, service.id, category, tags))
    return facts


def _facts(
    profile: AgencyProfile, service_id: str, category: NeedCategory, tags: list[tuple[str, str]]
) -> ServiceFacts:
    service = next(s for s in profile.services if s.id == service_id)
    areas = [a for a in profile.service_areas if a.service_id == service_id]
    capacity = next((c for c in profile.service_capacities if c.service_id == service_id), None)
    radii = [float(a.extent) for a in areas if a.extent_type == ExtentType.RADIUS_KM]
    return ServiceFacts(
        service_id=service_id,
        agency_id=profile.agency_id,
        name=service.name,
        category=category,
        postal_codes=_extents(areas, ExtentType.POSTAL_CODE),
        counties=frozenset(e.lower() for e in _extents(areas, ExtentType.COUNTY)),
        radius_km=max(radii) if radii else None,
        locations=_locations(profile, service_id),
        languages=frozenset(
            lang.code for lang in profile.languages if lang.service_id == service_id
        ),
        minimum_age=service.minimum_age,
        maximum_age=service.maximum_age,
        gender=_one(tags, EligibilityTerm.GENDER_SPECIFIC, Gender),
        mat_friendly=_flag(tags, EligibilityTerm.MAT_FRIENDLY),
        insurance=frozenset(v for k, v in tags if k == EligibilityTerm.INSURANCE_ACCEPTED),
        capacity_status=_capacity_status(tags, capacity.available if capacity else None),
        available=capacity.available if capacity else None,
        capacity_as_of=capacity.updated if capacity else None,
        schedule=tuple(
            OpeningHours(frozenset(s.byday.split(",")), s.opens_at, s.closes_at)
            for s in profile.schedules
            if s.service_id == service_id
        ),
    )


def _value(attribute: Attribute) -> str:
    return (attribute.value or "").strip().lower()


def _category(tags: list[tuple[str, str]]) -> NeedCategory | None:
    for code, _ in tags:
        if code.startswith("category:"):
            try:
                return NeedCategory(code.removeprefix("category:"))
            except ValueError:
                return None
    return None


def _one(tags: list[tuple[str, str]], term: EligibilityTerm, kind: type[E]) -> E | None:
    values = [v for k, v in tags if k == term]
    return kind(values[0]) if values and values[0] in set(kind) else None


def _flag(tags: list[tuple[str, str]], term: EligibilityTerm) -> bool | None:
    values = [v for k, v in tags if k == term]
    return values[0] == "true" if values else None


def _capacity_status(tags: list[tuple[str, str]], available: int | None) -> CapacityStatus:
    stated = _one(tags, EligibilityTerm.CAPACITY_STATUS, CapacityStatus)
    if stated is not None:
        return stated
    return CapacityStatus.NO_CAPACITY if available == 0 else CapacityStatus.CAPACITY


def _extents(areas: list[ServiceArea], kind: ExtentType) -> frozenset[str]:
    return frozenset(a.extent for a in areas if a.extent_type == kind)


def _locations(profile: AgencyProfile, service_id: str) -> tuple[Point, ...]:
    at = {sal.location_id for sal in profile.service_at_locations if sal.service_id == service_id}
    return tuple(
        (loc.latitude, loc.longitude)
        for loc in profile.locations
        if loc.id in at and loc.latitude is not None and loc.longitude is not None
    )
