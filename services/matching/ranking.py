"""Who gets the next offer for a need: pure functions, no I/O.

Every service the need's area query found is either ranked, with each factor behind its
score, or excluded with the first rule it fails, so an offer and an unmatched need both
explain themselves. The score is deterministic: the same directory, history and clock give
the same order, ties broken by agency and service id.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from services.matching.geo import Point, haversine_km
from shared.events import (
    CapacityStatus,
    ConsentScope,
    Constraints,
    ExcludedAgency,
    Gender,
    MatchFactor,
    NeedCategory,
    Urgency,
)

WEEKDAYS = ("MO", "TU", "WE", "TH", "FR", "SA", "SU")
# What an agency with no answered offers yet is assumed to do: middling, so it is neither
# favoured nor starved.
PRIOR_ACCEPTANCE_RATE = 0.5
PRIOR_RESPONSE_HOURS = 24.0
HOURS_WEIGHT = {Urgency.URGENT: 15.0, Urgency.SOON: 5.0, Urgency.ROUTINE: 0.0}


@dataclass(frozen=True)
class NeedView:
    category: NeedCategory
    urgency: Urgency
    postal_code: str
    county: str | None
    point: Point | None  # the centroid of the person's ZIP code, when known
    languages: tuple[str, ...]
    age_years: int | None
    gender: Gender | None
    constraints: Constraints
    consent: ConsentScope
    tried: frozenset[str] = frozenset()


@dataclass(frozen=True)
class OpeningHours:
    weekdays: frozenset[str]
    opens_at: time
    closes_at: time


@dataclass(frozen=True)
class ServiceView:
    service_id: str
    agency_id: str
    agency_name: str
    name: str
    category: NeedCategory
    postal_codes: frozenset[str] = frozenset()
    counties: frozenset[str] = frozenset()  # lower case
    radius_km: float | None = None
    locations: tuple[Point, ...] = ()
    languages: frozenset[str] = frozenset()
    minimum_age: int | None = None
    maximum_age: int | None = None
    gender: Gender | None = None
    mat_friendly: bool | None = None
    insurance: frozenset[str] = frozenset()  # empty: none listed
    capacity_status: CapacityStatus = CapacityStatus.CAPACITY
    available: int | None = None  # None: the agency does not count places
    reserved: int = 0
    consumed: int = 0
    schedule: tuple[OpeningHours, ...] = ()

    @property
    def free_places(self) -> int | None:
        if self.available is None:
            return None
        return self.available - self.reserved - self.consumed


@dataclass(frozen=True)
class AgencyStats:
    answered: int = 0
    acceptance_rate: float = PRIOR_ACCEPTANCE_RATE
    response_hours: float = PRIOR_RESPONSE_HOURS


@dataclass(frozen=True)
class Candidate:
    service: ServiceView
    score: float
    factors: tuple[MatchFactor, ...]


@dataclass(frozen=True)
class Ranking:
    candidates: list[Candidate] = field(default_factory=list)  # best first, one per agency
    excluded: list[ExcludedAgency] = field(default_factory=list)


def rank(
    need: NeedView,
    services: list[ServiceView],
    stats: dict[str, AgencyStats],
    now: datetime,
    timezone: ZoneInfo,
) -> Ranking:
    scored: list[Candidate] = []
    excluded: list[ExcludedAgency] = []
    for service in sorted(services, key=lambda s: (s.agency_id, s.service_id)):
        reason = exclusion(need, service, now.astimezone(timezone))
        if reason:
            excluded.append(
                ExcludedAgency(
                    agency_id=service.agency_id, service_id=service.service_id, reason=reason
                )
            )
        else:
            stat = stats.get(service.agency_id, AgencyStats())
            scored.append(score(need, service, stat, now.astimezone(timezone)))
    scored.sort(key=lambda c: (-c.score, c.service.agency_id, c.service.service_id))
    candidates = _best_per_agency(scored)
    chosen = {c.service.agency_id for c in candidates}
    # An agency with an eligible service is not "excluded" for its other services.
    return Ranking(candidates, [e for e in excluded if e.agency_id not in chosen])


# --- eligibility -------------------------------------------------------------------------


def exclusion(need: NeedView, service: ServiceView, local_now: datetime) -> str | None:
    """The first eligibility rule the service fails for this need, or None."""
    for rule in _RULES:
        reason = rule(need, service, local_now)
        if reason:
            return reason
    return None


def _consent(need: NeedView, service: ServiceView, local_now: datetime) -> str | None:
    if service.category != need.category:
        return f"offers {service.category.value}, not {need.category.value}"
    if not need.consent.covers(need.category, local_now.date()):
        return "outside the person's consent (category not covered or consent expired)"
    if not need.consent.allows_recipient(service.agency_id):
        return "not named in the person's consent"
    if service.agency_id in need.tried:
        return "already offered this need"
    return None


def _area(need: NeedView, service: ServiceView, local_now: datetime) -> str | None:
    if covers(need, service) is not None:
        return None
    where = f"ZIP {need.postal_code}" + (f" or {need.county} County" if need.county else "")
    if service.radius_km is not None:
        away = distance_km(need, service)
        if away is None:
            return f"serves within {service.radius_km:g} km; no location known for {where}"
        return f"does not serve {where}: {away:.1f} km away, beyond its {service.radius_km:g} km"
    return f"does not serve {where}"


def _capacity(need: NeedView, service: ServiceView, local_now: datetime) -> str | None:
    if service.capacity_status == CapacityStatus.NO_CAPACITY:
        return "reports no capacity"
    free = service.free_places
    if free is not None and free <= 0:
        return (
            f"no places free ({service.available} available, {service.reserved} held by "
            f"open offers, {service.consumed} taken since the agency last counted)"
        )
    return None


def _age(need: NeedView, service: ServiceView, local_now: datetime) -> str | None:
    low, high = service.minimum_age, service.maximum_age
    if low is None and high is None:
        return None
    limits = f"ages {low if low is not None else 0}-{high if high is not None else 'up'}"
    if need.age_years is None:
        return f"serves {limits}; the person's age is not recorded"
    if (low is not None and need.age_years < low) or (high is not None and need.age_years > high):
        return f"serves {limits}; the person is {need.age_years}"
    return None


def _gender(need: NeedView, service: ServiceView, local_now: datetime) -> str | None:
    if service.gender is None or need.gender == service.gender:
        return None
    return f"serves {service.gender.value} only"


def _medication(need: NeedView, service: ServiceView, local_now: datetime) -> str | None:
    if need.constraints.mat_friendly_required and service.mat_friendly is not True:
        return "not known to accept medication-assisted treatment"
    return None


def _insurance(need: NeedView, service: ServiceView, local_now: datetime) -> str | None:
    plan = need.constraints.insurance.value
    if service.insurance and plan not in service.insurance:
        return f"does not accept {plan} (accepts {', '.join(sorted(service.insurance))})"
    return None


def _language(need: NeedView, service: ServiceView, local_now: datetime) -> str | None:
    if set(need.languages) & service.languages:
        return None
    return f"offers no service in {', '.join(need.languages)}"


_RULES = (_consent, _area, _capacity, _age, _gender, _medication, _insurance, _language)


def covers(need: NeedView, service: ServiceView) -> str | None:
    """How the service's area reaches the person, or None."""
    if need.postal_code in service.postal_codes:
        return f"serves ZIP {need.postal_code}"
    if need.county and need.county.lower() in service.counties:
        return f"serves {need.county} County"
    away = distance_km(need, service)
    if service.radius_km is not None and away is not None and away <= service.radius_km:
        return f"within its {service.radius_km:g} km"
    return None


def distance_km(need: NeedView, service: ServiceView) -> float | None:
    if need.point is None or not service.locations:
        return None
    return min(haversine_km(need.point, location) for location in service.locations)


# --- score -------------------------------------------------------------------------------


def score(
    need: NeedView, service: ServiceView, stats: AgencyStats, local_now: datetime
) -> Candidate:
    factors = (
        MatchFactor(name="service_area", value=covers(need, service) or "", points=0.0),
        _distance_factor(need, service),
        _language_factor(need, service),
        _capacity_factor(service),
        _hours_factor(need, service, local_now),
        _acceptance_factor(stats),
        _response_factor(stats),
        *_preference_factors(need, service),
    )
    return Candidate(service, round(sum(f.points for f in factors), 2), factors)


def _distance_factor(need: NeedView, service: ServiceView) -> MatchFactor:
    away = distance_km(need, service)
    if away is None:
        return MatchFactor(name="distance", value="unknown", points=5.0)
    # Halves about every 7 km: a service across town still counts, one next door more.
    return MatchFactor(
        name="distance", value=f"{away:.1f} km", points=round(20 * math.exp(-away / 10), 2)
    )


def _language_factor(need: NeedView, service: ServiceView) -> MatchFactor:
    shared = [code for code in need.languages if code in service.languages]
    # The first language the person gave is the one they prefer.
    points = 10.0 if need.languages[0] in service.languages else 5.0
    return MatchFactor(name="language", value=", ".join(shared), points=points)


def _capacity_factor(service: ServiceView) -> MatchFactor:
    if service.capacity_status == CapacityStatus.WAITLIST:
        return MatchFactor(name="capacity", value="waitlist", points=0.0)
    free = service.free_places
    if free is None:
        return MatchFactor(name="capacity", value="open (places not counted)", points=5.0)
    return MatchFactor(name="capacity", value=f"{free} place(s) free", points=float(min(free, 10)))


def _hours_factor(need: NeedView, service: ServiceView, local_now: datetime) -> MatchFactor:
    weight = HOURS_WEIGHT[need.urgency]
    if not service.schedule:
        return MatchFactor(name="hours", value="not listed", points=round(weight / 3, 2))
    wait = hours_until_open(service.schedule, local_now)
    if wait is None:
        return MatchFactor(name="hours", value="no opening this week", points=0.0)
    value = "open now" if wait == 0 else f"opens in {wait:.1f} h"
    # An urgent need wants an agency open within the next day.
    return MatchFactor(name="hours", value=value, points=weight if wait <= 24 else 0.0)


def _acceptance_factor(stats: AgencyStats) -> MatchFactor:
    value = (
        f"{stats.acceptance_rate:.0%} of {stats.answered} recent offer(s) accepted"
        if stats.answered
        else "no offers answered yet"
    )
    return MatchFactor(
        name="acceptance_rate", value=value, points=round(10 * stats.acceptance_rate, 2)
    )


def _response_factor(stats: AgencyStats) -> MatchFactor:
    value = (
        f"answers in {stats.response_hours:.1f} h on average"
        if stats.answered
        else "no offers answered yet"
    )
    points = round(10 * math.exp(-stats.response_hours / 24), 2)
    return MatchFactor(name="response_time", value=value, points=points)


def _preference_factors(need: NeedView, service: ServiceView) -> tuple[MatchFactor, ...]:
    if need.constraints.gender_specific_preferred and service.gender is not None:
        return (MatchFactor(name="gender_specific", value=service.gender.value, points=5.0),)
    return ()


def hours_until_open(schedule: tuple[OpeningHours, ...], local_now: datetime) -> float | None:
    """Hours from now until the service is next open (0 if it is open now), within a week."""
    best: float | None = None
    for day in range(8):
        date = (local_now + timedelta(days=day)).date()
        weekday = WEEKDAYS[date.weekday()]
        for hours in schedule:
            if weekday not in hours.weekdays:
                continue
            opens = datetime.combine(date, hours.opens_at, local_now.tzinfo)
            closes = datetime.combine(date, hours.closes_at, local_now.tzinfo)
            if closes <= local_now:
                continue
            wait = max((opens - local_now).total_seconds() / 3600, 0.0)
            best = wait if best is None else min(best, wait)
        if best is not None:
            return round(best, 2)
    return None


def _best_per_agency(candidates: list[Candidate]) -> list[Candidate]:
    seen: set[str] = set()
    result = []
    for candidate in candidates:
        if candidate.service.agency_id not in seen:
            seen.add(candidate.service.agency_id)
            result.append(candidate)
    return result
