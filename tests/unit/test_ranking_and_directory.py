from __future__ import annotations

from datetime import date
from uuid import uuid4

from services.matching.directory import AgencyService, load_directory
from services.matching.ranking import NeedView, rank
from services.matching.settings import DEMO_DIRECTORY
from shared.events import ConsentRecipients, ConsentScope, NeedCategory

TODAY = date(2026, 11, 21)


def service(agency: str, zips: set[str], langs: set[str], sid: str | None = None) -> AgencyService:
    return AgencyService(
        service_id=sid or f"svc-{agency}",
        agency_id=agency,
        name=f"{agency} peer group",
        category=NeedCategory.PEER_SUPPORT,
        postal_codes=frozenset(zips),
        languages=frozenset(langs),
    )


def need(
    tried: frozenset[str] = frozenset(),
    expires: date = date(2027, 1, 1),
    languages: frozenset[str] = frozenset({"es"}),
    named: frozenset[str] | None = None,
) -> NeedView:
    """A need whose consent covers the whole network, or only the ``named`` agencies."""
    return NeedView(
        category=NeedCategory.PEER_SUPPORT,
        postal_code="97214",
        languages=frozenset(languages),
        consent=ConsentScope(
            consent_id=uuid4(),
            categories=frozenset({NeedCategory.PEER_SUPPORT}),
            expires_on=expires,
            recipients=ConsentRecipients.NETWORK if named is None else ConsentRecipients.NAMED,
            named_agencies=named or frozenset(),
        ),
        tried=frozenset(tried),
    )


def test_eligible_agencies_rank_local_first_and_the_rest_say_why_not() -> None:
    services = [
        service("ag-a", {"97214", "97202", "97206"}, {"en", "es"}),
        service("ag-b", {"97214"}, {"en", "es"}),
        service("ag-c", {"97202"}, {"en", "es"}),
        service("ag-d", {"97214"}, {"en"}),
    ]
    candidates, excluded = rank(need(), services, TODAY)
    assert [c.service.agency_id for c in candidates] == ["ag-b", "ag-a"]
    assert {e.agency_id: e.reason for e in excluded} == {
        "ag-c": "does not serve ZIP 97214",
        "ag-d": "offers no service in es",
    }
    assert {f.name for f in candidates[0].factors} == {"service_area", "language", "locality"}


def test_an_agency_already_asked_is_not_asked_again() -> None:
    candidates, excluded = rank(
        need(tried=frozenset({"ag-b"})), [service("ag-b", {"97214"}, {"es"})], TODAY
    )
    assert candidates == []
    assert excluded[0].reason == "already offered this need"


def test_nothing_is_offered_outside_an_expired_consent() -> None:
    candidates, excluded = rank(
        need(expires=date(2026, 11, 20)), [service("ag-b", {"97214"}, {"es"})], TODAY
    )
    assert candidates == []
    assert "consent" in excluded[0].reason


def test_a_consent_naming_agencies_leaves_every_other_agency_out_and_says_why() -> None:
    services = [
        service("ag-a", {"97214"}, {"es"}),
        service("ag-b", {"97214", "97202"}, {"es"}),
        service("ag-c", {"97214", "97202", "97206"}, {"es"}),
    ]
    candidates, excluded = rank(need(named=frozenset({"ag-b", "ag-c"})), services, TODAY)
    assert [c.service.agency_id for c in candidates] == ["ag-b", "ag-c"]
    assert {e.agency_id: e.reason for e in excluded} == {
        "ag-a": "not named in the person's consent"
    }


def test_a_consent_naming_no_agency_allows_none() -> None:
    candidates, excluded = rank(
        need(named=frozenset()), [service("ag-b", {"97214"}, {"es"})], TODAY
    )
    assert candidates == []
    assert [e.reason for e in excluded] == ["not named in the person's consent"]


def test_a_network_consent_allows_every_agency_that_serves_the_need() -> None:
    services = [service("ag-a", {"97214"}, {"es"}), service("ag-b", {"97214"}, {"es"})]
    candidates, excluded = rank(need(), services, TODAY)
    assert {c.service.agency_id for c in candidates} == {"ag-a", "ag-b"}
    assert excluded == []


def test_an_agency_with_two_eligible_services_is_one_candidate() -> None:
    services = [
        service("ag-b", {"97214"}, {"es"}, sid="svc-1"),
        service("ag-b", {"97214", "97202"}, {"es"}, sid="svc-2"),
    ]
    candidates, _ = rank(need(), services, TODAY)
    assert [c.service.service_id for c in candidates] == ["svc-1"]


def test_the_demo_directory_covers_every_category_in_two_languages() -> None:
    agencies, services = load_directory(DEMO_DIRECTORY)
    assert len(agencies) >= 25
    assert {s.category for s in services} == set(NeedCategory)
    assert {"en", "es"} <= {lang for s in services for lang in s.languages}
    assert len({z for s in services for z in s.postal_codes}) >= 5
