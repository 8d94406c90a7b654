"""Valid events to start tests from; override what the test is about."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from uuid import uuid4

from services.matching.geo import PostalArea, haversine_km
from shared import hsds
from shared.events import ConsentScope, NeedCategory, NeedSubmitted, Referrer, Urgency


def need_submitted(
    category: NeedCategory = NeedCategory.PEER_SUPPORT,
    *,
    at: datetime | None = None,
    consent_until: date | None = None,
    **overrides: Any,
) -> NeedSubmitted:
    at = at or datetime.now(UTC)
    fields: dict[str, Any] = {
        "need_id": uuid4(),
        "person_ref": uuid4(),
        "category": category,
        "urgency": Urgency.SOON,
        "postal_code": "97214",
        "languages": ("en",),
        "age_years": 34,  # intake always sends one
        "consent": ConsentScope(
            consent_id=uuid4(),
            categories=frozenset({category}),
            expires_on=consent_until or (at.date() + timedelta(days=365)),
        ),
        "referrer": Referrer(worker_ref=uuid4(), notify_email="worker@refnet.local"),
        "submitted_at": at,
    }
    return NeedSubmitted(**{**fields, **overrides})


def intake_request(today: date | None = None, **overrides: Any) -> dict[str, Any]:
    """A complete intake as the JSON API takes it (the form maps onto the same model)."""
    today = today or date.today()
    body: dict[str, Any] = {
        "submission_id": str(uuid4()),
        "person": {
            "legal_given_name": "Marisol",
            "legal_family_name": "Quintanilla-Verdugo",
            "preferred_name": "Mari",
            "date_of_birth": "1988-03-14",
            "email": "marisol.qv@example.net",
            "phone": "503-555-0142",
            "preferred_channel": "sms",
            "contact_from": "09:00",
            "contact_until": "17:30",
            "languages": ["es", "en"],
            "postal_code": "97214",
            "county": "Multnomah",
        },
        "recovery": {"stage": "early-recovery", "barc10": [5, 4, 4, 3, 5, 4, 3, 6, 4, 5]},
        "needs": [
            {"category": "peer-support", "urgency": "urgent", "note": "Evening groups only"},
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
            "expires_on": (today + timedelta(days=365)).isoformat(),
            "signature": "Marisol Quintanilla-Verdugo",
            "signed_on": today.isoformat(),
        },
    }
    for path, value in overrides.items():
        section, _, name = path.partition("__")
        if name:
            body[section][name] = value
        else:
            body[section] = value
    return body


# Every identifier in intake_request(): none may appear in a raw row or on a topic.
INTAKE_IDENTIFIERS = (
    "Marisol",
    "Quintanilla",
    "Mari",
    "1988-03-14",
    "marisol.qv@example.net",
    "503-555-0142",
    "5035550142",
    "Evening groups only",
)


# --- the directory -------------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceSpec:
    """One HSDS service and what hangs off it, in the terms a test thinks in."""

    service_id: str
    category: NeedCategory = NeedCategory.PEER_SUPPORT
    zips: tuple[str, ...] = ("97214",)
    counties: tuple[str, ...] = ()
    radius_km: float | None = None
    location: tuple[float, float] | None = (45.5152, -122.6784)
    more_locations: tuple[tuple[float, float], ...] = ()
    languages: tuple[str, ...] = ("en",)
    minimum_age: int | None = None
    maximum_age: int | None = None
    gender: str | None = None
    mat_friendly: bool | None = None
    insurance: tuple[str, ...] = ()
    capacity_status: str | None = None
    available: int | None = None
    capacity_as_of: datetime | None = None
    hours: tuple[tuple[str, str, str], ...] = ()  # (byday, opens_at, closes_at)

    def reaches(self, category: NeedCategory, postal_code: str, place: PostalArea) -> bool:
        """Whether a need of ``category`` from ``postal_code`` (at ``place``) is in this
        service's area, by the rule as a worker would state it: its ZIP code or county is
        the service's, or a location of the service is within its radius."""
        located = ([self.location] if self.location else []) + list(self.more_locations)
        return self.category == category and (
            postal_code in self.zips
            or place.county.lower() in {c.lower() for c in self.counties}
            or (
                self.radius_km is not None
                and any(haversine_km(place.point, xy) <= self.radius_km for xy in located)
            )
        )


CATEGORY_TERMS = tuple(
    hsds.TaxonomyTerm(id=c.value, code=c.value, name=c.label, taxonomy=hsds.CATEGORY_TAXONOMY)
    for c in NeedCategory
)
ELIGIBILITY_TERMS = tuple(
    hsds.TaxonomyTerm(id=t.value, code=t.value, name=t.value, taxonomy="refnet-eligibility")
    for t in hsds.EligibilityTerm
)


def agency_profile(
    agency_id: str, *services: ServiceSpec, revision: int = 1, name: str | None = None
) -> hsds.AgencyProfile:
    rows: dict[str, list[Any]] = {field: [] for field in hsds.PROFILE_FIELDS.values()}
    for spec in services:
        for table, row in _service_rows(agency_id, spec):
            rows[hsds.PROFILE_FIELDS[table]].append(row)
    return hsds.AgencyProfile(
        agency_id=agency_id,
        revision=revision,
        organization=hsds.Organization(id=agency_id, name=name or agency_id.title()),
        **{field: tuple(found) for field, found in rows.items() if field != "taxonomy_terms"},
        taxonomy_terms=CATEGORY_TERMS + ELIGIBILITY_TERMS,
    )


def _service_rows(agency_id: str, spec: ServiceSpec) -> list[tuple[str, Any]]:
    sid = spec.service_id
    rows: list[tuple[str, Any]] = [
        (
            "service",
            hsds.Service(
                id=sid,
                organization_id=agency_id,
                name=f"{spec.category.label} at {agency_id}",
                minimum_age=spec.minimum_age,
                maximum_age=spec.maximum_age,
            ),
        ),
        ("attribute", _attribute(sid, "category", spec.category.value, spec.category.value)),
    ]
    points = ([spec.location] if spec.location is not None else []) + list(spec.more_locations)
    for n, (lat, lon) in enumerate(points):
        at = f"{sid}-{n}" if n else sid
        rows.append(("location", hsds.Location(id=f"loc-{at}", organization_id=agency_id,
                                               latitude=lat, longitude=lon)))  # fmt: skip
        rows.append(("service_at_location", hsds.ServiceAtLocation(
            id=f"sal-{at}", service_id=sid, location_id=f"loc-{at}")))  # fmt: skip
    areas = [("postal_code", z) for z in spec.zips] + [("county", c) for c in spec.counties]
    if spec.radius_km is not None:
        areas.append(("radius_km", f"{spec.radius_km:g}"))
    for n, (kind, extent) in enumerate(areas):
        rows.append(("service_area", hsds.ServiceArea(
            id=f"sa-{sid}-{n}", service_id=sid, extent=extent, extent_type=kind)))  # fmt: skip
    for code in spec.languages:
        rows.append(("language", hsds.Language(id=f"lang-{sid}-{code}", service_id=sid, code=code)))
    tags = [(hsds.EligibilityTerm.INSURANCE_ACCEPTED, plan) for plan in spec.insurance]
    if spec.gender:
        tags.append((hsds.EligibilityTerm.GENDER_SPECIFIC, spec.gender))
    if spec.mat_friendly is not None:
        tags.append((hsds.EligibilityTerm.MAT_FRIENDLY, str(spec.mat_friendly).lower()))
    if spec.capacity_status:
        tags.append((hsds.EligibilityTerm.CAPACITY_STATUS, spec.capacity_status))
    for n, (term, value) in enumerate(tags):
        rows.append(("attribute", _attribute(sid, f"{term.value}-{n}", term.value, value)))
    if spec.available is not None:
        rows.append(("service_capacity", hsds.ServiceCapacity(
            id=f"cap-{sid}", service_id=sid, available=spec.available,
            updated=spec.capacity_as_of)))  # fmt: skip
    for n, (byday, opens, closes) in enumerate(spec.hours):
        rows.append(("schedule", hsds.Schedule.model_validate(
            {"id": f"sch-{sid}-{n}", "service_id": sid, "byday": byday,
             "opens_at": opens, "closes_at": closes})))  # fmt: skip
    return rows


def _attribute(service_id: str, suffix: str, term: str, value: str) -> hsds.Attribute:
    return hsds.Attribute(
        id=f"attr-{service_id}-{suffix}",
        link_id=service_id,
        link_type="service",
        taxonomy_term_id=term,
        value=value,
    )
