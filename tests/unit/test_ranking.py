"""Eligibility and ranking as pure functions: who may be offered a need, in what order,
and why each of the others was left out."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, time
from uuid import uuid4
from zoneinfo import ZoneInfo

import pytest

from services.matching.geo import load_centroids
from services.matching.ranking import (
    AgencyStats,
    NeedView,
    OpeningHours,
    ServiceView,
    exclusion,
    hours_until_open,
    rank,
)
from shared.events import (
    CapacityStatus,
    ConsentRecipients,
    ConsentScope,
    Constraints,
    Gender,
    Insurance,
    NeedCategory,
    Urgency,
)

ZONE = ZoneInfo("America/Los_Angeles")
# A Saturday, 10:00 in Portland.
NOW = datetime(2026, 11, 21, 18, 0, tzinfo=UTC)
PLACES = load_centroids()
HAWTHORNE = PLACES["97214"].point


def consent(**changes: object) -> ConsentScope:
    fields: dict[str, object] = {
        "consent_id": uuid4(),
        "categories": {NeedCategory.PEER_SUPPORT},
        "expires_on": date(2027, 11, 21),
    }
    return ConsentScope.model_validate({**fields, **changes})


def a_need(**changes: object) -> NeedView:
    need = NeedView(
        category=NeedCategory.PEER_SUPPORT,
        urgency=Urgency.SOON,
        postal_code="97214",
        county="Multnomah",
        point=HAWTHORNE,
        languages=("es", "en"),
        age_years=30,
        gender=None,
        constraints=Constraints(insurance=Insurance.MEDICAID),
        consent=consent(),
    )
    return replace(need, **changes)  # type: ignore[arg-type]


def a_service(agency: str = "ag-a", **changes: object) -> ServiceView:
    service = ServiceView(
        service_id=f"svc-{agency}",
        agency_id=agency,
        agency_name=agency.title(),
        name="Peer group",
        category=NeedCategory.PEER_SUPPORT,
        postal_codes=frozenset({"97214"}),
        locations=(HAWTHORNE,),
        languages=frozenset({"en", "es"}),
    )
    return replace(service, **changes)  # type: ignore[arg-type]


def reason(need: NeedView, service: ServiceView) -> str | None:
    return exclusion(need, service, NOW.astimezone(ZONE))


@pytest.mark.parametrize(
    ("need_changes", "service_changes", "expected"),
    [
        ({}, {"postal_codes": frozenset({"97202"})}, "does not serve ZIP 97214 or Multnomah"),
        ({}, {"postal_codes": frozenset(), "counties": frozenset({"multnomah"})}, None),
        ({}, {"postal_codes": frozenset(), "radius_km": 5.0}, None),
        ({}, {"postal_codes": frozenset(), "radius_km": 5.0, "locations": ((45.63, -122.67),)},
         "km away, beyond its 5 km"),
        ({}, {"capacity_status": CapacityStatus.NO_CAPACITY}, "reports no capacity"),
        ({}, {"available": 2, "reserved": 1, "consumed": 1}, "no places free (2 available, 1 held"),
        ({}, {"available": 3, "reserved": 1, "consumed": 1}, None),
        ({}, {"maximum_age": 24}, "serves ages 0-24; the person is 30"),
        ({"age_years": None}, {"minimum_age": 18}, "the person's age is not recorded"),
        ({}, {"gender": Gender.WOMAN}, "serves woman only"),
        ({"gender": Gender.WOMAN}, {"gender": Gender.WOMAN}, None),
        ({"constraints": Constraints(mat_friendly_required=True)}, {"mat_friendly": None},
         "not known to accept medication-assisted treatment"),
        ({}, {"insurance": frozenset({"private"})}, "does not accept medicaid (accepts private)"),
        ({}, {"languages": frozenset({"vi"})}, "offers no service in es, en"),
        ({"tried": frozenset({"ag-a"})}, {}, "already offered this need"),
        ({"consent": consent(expires_on=date(2026, 11, 20))}, {}, "outside the person's consent"),
        ({"consent": consent(recipients=ConsentRecipients.NAMED, named_agencies={"ag-b"})}, {},
         "not named in the person's consent"),
    ],
)  # fmt: skip
def test_each_eligibility_rule_excludes_with_a_reason_a_worker_can_read(
    need_changes: dict[str, object], service_changes: dict[str, object], expected: str | None
) -> None:
    found = reason(a_need(**need_changes), a_service(**service_changes))

    if expected is None:
        assert found is None
    else:
        assert found is not None and expected in found


def test_candidates_rank_by_distance_language_and_room_with_every_factor_explained() -> None:
    near = a_service("ag-near", available=8)
    far = a_service("ag-far", locations=((45.43, -122.57),), available=8)
    english_only = a_service("ag-english", languages=frozenset({"en"}), available=8)

    ranking = rank(a_need(), [far, english_only, near], {}, NOW, ZONE)

    assert [c.service.agency_id for c in ranking.candidates] == ["ag-near", "ag-english", "ag-far"]
    factors = {f.name: f for f in ranking.candidates[0].factors}
    assert factors["distance"].value == "0.0 km"
    assert factors["language"].value == "es, en"
    assert factors["capacity"].value == "8 place(s) free"
    assert ranking.candidates[0].score == round(sum(f.points for f in factors.values()), 2)
    assert ranking.excluded == []


def test_an_agency_that_accepts_more_and_answers_sooner_ranks_higher() -> None:
    reliable, slow = a_service("ag-reliable"), a_service("ag-slow")
    stats = {
        "ag-reliable": AgencyStats(answered=10, acceptance_rate=0.9, response_hours=2.0),
        "ag-slow": AgencyStats(answered=10, acceptance_rate=0.2, response_hours=60.0),
    }

    ranking = rank(a_need(), [slow, reliable], stats, NOW, ZONE)

    assert [c.service.agency_id for c in ranking.candidates] == ["ag-reliable", "ag-slow"]
    values = {f.name: f.value for f in ranking.candidates[0].factors}
    assert values["acceptance_rate"] == "90% of 10 recent offer(s) accepted"
    assert values["response_time"] == "answers in 2.0 h on average"


def test_an_urgent_need_prefers_an_agency_open_within_the_next_day() -> None:
    weekdays = a_service("ag-weekdays", schedule=(
        OpeningHours(frozenset({"MO", "TU"}), time(9), time(17)),))  # fmt: skip
    weekend = a_service("ag-weekend", schedule=(
        OpeningHours(frozenset({"SA", "SU"}), time(12), time(20)),))  # fmt: skip

    ranking = rank(a_need(urgency=Urgency.URGENT), [weekdays, weekend], {}, NOW, ZONE)

    assert [c.service.agency_id for c in ranking.candidates] == ["ag-weekend", "ag-weekdays"]
    hours = [next(f for f in c.factors if f.name == "hours") for c in ranking.candidates]
    assert (hours[0].value, hours[0].points) == ("opens in 2.0 h", 15.0)
    assert (hours[1].value, hours[1].points) == ("opens in 47.0 h", 0.0)


def test_opening_hours_count_from_local_time_and_wrap_into_next_week() -> None:
    saturday_10am = NOW.astimezone(ZONE)
    friday_only = (OpeningHours(frozenset({"FR"}), time(9), time(17)),)

    assert hours_until_open(friday_only, saturday_10am) == 6 * 24 - 1
    assert (
        hours_until_open((OpeningHours(frozenset({"SA"}), time(8), time(11)),), saturday_10am) == 0
    )


def test_an_agency_is_one_candidate_and_not_also_listed_as_excluded() -> None:
    good = a_service("ag-a", service_id="svc-1")
    full = a_service("ag-a", service_id="svc-2", capacity_status=CapacityStatus.NO_CAPACITY)
    elsewhere = a_service("ag-b", postal_codes=frozenset({"97202"}), locations=())

    ranking = rank(a_need(), [full, good, elsewhere], {}, NOW, ZONE)

    assert [c.service.service_id for c in ranking.candidates] == ["svc-1"]
    assert [(e.agency_id, e.service_id) for e in ranking.excluded] == [("ag-b", "svc-ag-b")]


def test_a_waitlisted_service_is_offered_after_one_with_room() -> None:
    waitlist = a_service("ag-a", capacity_status=CapacityStatus.WAITLIST)
    room = a_service("ag-b", available=5)

    ranking = rank(a_need(), [waitlist, room], {}, NOW, ZONE)

    assert [c.service.agency_id for c in ranking.candidates] == ["ag-b", "ag-a"]
