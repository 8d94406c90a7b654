"""Who gets the next offer for a need: pure functions, no I/O.

Every agency offering the need's category is either ranked, with the factors behind its
score, or excluded with the reason, so an unmatched need explains itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from services.matching.directory import AgencyService
from shared.events import ConsentScope, ExcludedAgency, MatchFactor, NeedCategory


@dataclass(frozen=True)
class NeedView:
    category: NeedCategory
    postal_code: str
    languages: frozenset[str]
    consent: ConsentScope
    tried: frozenset[str]


@dataclass(frozen=True)
class Candidate:
    service: AgencyService
    score: float
    factors: tuple[MatchFactor, ...]


def rank(
    need: NeedView, services: list[AgencyService], today: date
) -> tuple[list[Candidate], list[ExcludedAgency]]:
    candidates: list[Candidate] = []
    excluded: list[ExcludedAgency] = []
    for service in sorted(services, key=lambda s: (s.agency_id, s.service_id)):
        if service.category != need.category:
            continue
        reason = _exclusion(need, service, today)
        if reason:
            excluded.append(ExcludedAgency(agency_id=service.agency_id, reason=reason))
        else:
            candidates.append(_score(need, service))
    candidates.sort(key=lambda c: (-c.score, c.service.agency_id, c.service.service_id))
    return _one_per_agency(candidates), excluded


def _exclusion(need: NeedView, service: AgencyService, today: date) -> str | None:
    if not need.consent.covers(need.category, today):
        return "outside the person's consent (category not covered or consent expired)"
    if not need.consent.allows_recipient(service.agency_id):
        return "not named in the person's consent"
    if service.agency_id in need.tried:
        return "already offered this need"
    if need.postal_code not in service.postal_codes:
        return f"does not serve ZIP {need.postal_code}"
    if not need.languages & service.languages:
        return f"offers no service in {', '.join(sorted(need.languages))}"
    return None


def _score(need: NeedView, service: AgencyService) -> Candidate:
    shared_languages = sorted(need.languages & service.languages)
    # A service covering fewer ZIP codes is more local to the person.
    locality = round(10 / max(len(service.postal_codes), 1), 2)
    language_points = 5.0 * len(shared_languages)
    factors = (
        MatchFactor(name="service_area", value=f"serves ZIP {need.postal_code}", points=10.0),
        MatchFactor(name="language", value=", ".join(shared_languages), points=language_points),
        MatchFactor(
            name="locality", value=f"{len(service.postal_codes)} ZIP codes served", points=locality
        ),
    )
    return Candidate(service, sum(f.points for f in factors), factors)


def _one_per_agency(candidates: list[Candidate]) -> list[Candidate]:
    seen: set[str] = set()
    result = []
    for candidate in candidates:
        if candidate.service.agency_id not in seen:
            seen.add(candidate.service.agency_id)
            result.append(candidate)
    return result
