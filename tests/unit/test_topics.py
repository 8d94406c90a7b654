import pytest

from shared.topics import CO_PARTITIONED, CONSENT_EVENTS, PLATFORM_TOPICS, agency_offers


def test_co_partitioned_topics_share_the_need_key() -> None:
    assert {spec.key_field for spec in CO_PARTITIONED} == {"need_id"}


def test_consent_events_are_keyed_by_person_and_created_with_the_platform() -> None:
    assert CONSENT_EVENTS.name == "refnet.consent-events.v1"
    assert CONSENT_EVENTS.key_field == "person_ref"
    assert CONSENT_EVENTS in PLATFORM_TOPICS
    assert set(CO_PARTITIONED) <= set(PLATFORM_TOPICS)


def test_agency_topic_names_follow_the_contract() -> None:
    spec = agency_offers("ag-007")
    assert spec.name == "refnet.agency.ag-007.offers"
    assert spec.dlq == "refnet.agency.ag-007.offers.dlq"


@pytest.mark.parametrize("bad", ["", "AG-1", "ag.1", "ag/1", "x" * 80])
def test_an_agency_id_that_would_make_a_strange_topic_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="agency id"):
        agency_offers(bad)
