"""The published contract under docs/contract/ is what the code generates, it covers every
topic, and real events validate against it."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Any
from uuid import uuid4

import jsonschema_rs
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from services.contract import COMMAND, CONTRACT_DIR, differences, documents
from shared.cloudevents import encode
from shared.contract import (
    AGENCY_OFFERS_TEMPLATE,
    DEAD_LETTER_MESSAGE,
    HEADERS_SCHEMA,
    PARTIES,
    ROLES,
    TOMBSTONE_MESSAGE,
    asyncapi_document,
    asyncapi_router,
    event_json_schemas,
    event_models,
)
from shared.events import (
    AcceptanceRefused,
    CapacityStatus,
    CapacityUpdated,
    CheckInAnswer,
    CheckInAnswered,
    ConsentRevoked,
    ContactChannel,
    ContactPreferences,
    DeclineReason,
    Event,
    ExcludedAgency,
    MatchFactor,
    OfferAccepted,
    OfferDeclined,
    OfferExpired,
    OfferWithdrawn,
    Outcome,
    OutcomeReported,
    ReferralOffered,
    ReferralStatus,
    ReferralStatusChanged,
    offer_id_for,
)
from shared.topics import PLATFORM_TOPICS, TopicSpec, agency_offers
from tests.factories import ServiceSpec, agency_profile, need_submitted

DOC = asyncapi_document()
NOW = datetime(2025, 3, 14, 9, 30, tzinfo=UTC)


def examples() -> list[Event]:
    """One real event of every payload model, with the optional parts filled in."""
    need = need_submitted(
        at=NOW, contact=ContactPreferences(channel=ContactChannel.SMS, window_from=time(9))
    )
    offer = offer_id_for(need.need_id, 1)
    ids = {"offer_id": offer, "need_id": need.need_id, "agency_id": "ag-001"}
    return [
        need,
        ReferralOffered(
            **ids,
            service_id="svc-1",
            attempt=1,
            category=need.category,
            urgency=need.urgency,
            postal_code=need.postal_code,
            languages=need.languages,
            age_years=need.age_years,
            constraints=need.constraints,
            respond_by=NOW + timedelta(hours=36),
            score=12.5,
            explanation=(MatchFactor(name="distance", value="2 km", points=4.0),),
        ),
        OfferWithdrawn(**ids, reason="offer expired"),
        AcceptanceRefused(**ids, reason="already placed"),
        OfferAccepted(**ids, accepted_at=NOW),
        OfferDeclined(**ids, reason=DeclineReason.NO_CAPACITY, declined_at=NOW),
        OfferExpired(**ids, expired_at=NOW),
        OutcomeReported(**ids, outcome=Outcome.GOT_HELP, reported_at=NOW),
        ReferralStatusChanged(
            need_id=need.need_id,
            status=ReferralStatus.UNMATCHED,
            sequence=3,
            occurred_at=NOW,
            reason="no eligible agency left",
            excluded=(ExcludedAgency(agency_id="ag-002", reason="offers no service in so"),),
        ),
        ConsentRevoked(
            consent_id=need.consent.consent_id, person_ref=need.person_ref, revoked_at=NOW
        ),
        agency_profile(
            "ag-001",
            ServiceSpec(
                "svc-1",
                counties=("Multnomah",),
                radius_km=10,
                insurance=("medicaid",),
                mat_friendly=True,
                available=3,
                capacity_as_of=NOW,
                hours=(("MO,TU", "09:00", "17:00"),),
            ),
        ),
        CapacityUpdated(
            agency_id="ag-001",
            service_id="svc-1",
            status=CapacityStatus.WAITLIST,
            available=0,
            maximum=12,
            updated_at=NOW,
        ),
        CheckInAnswered(
            need_id=need.need_id, day=7, answer=CheckInAnswer.NEED_HELP, answered_at=NOW
        ),
    ]


EXAMPLES = examples()


def _spec_of(cls: type[Event]) -> TopicSpec:
    for spec in (*PLATFORM_TOPICS, AGENCY_OFFERS_TEMPLATE):
        if cls in spec.events:
            return spec
    raise AssertionError(f"{cls.__name__} is on no topic")


def _channel(address: str) -> dict[str, Any]:
    found = [c for c in DOC["channels"].values() if c["address"] == address]
    assert len(found) == 1, f"{len(found)} channels for {address}"
    return found[0]


def _resolve(ref: str) -> Any:
    assert ref.startswith("#/"), f"only local references: {ref}"
    node: Any = DOC
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"{ref} does not resolve"
        node = node[part]
    return node


def _deref(node: Any) -> Any:
    while isinstance(node, dict) and set(node) == {"$ref"}:
        node = _resolve(node["$ref"])
    return node


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for value in node.values() for r in _refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in _refs(value)]
    return []


def _validator(schema: dict[str, Any]) -> Any:
    """A validator for a schema inside the AsyncAPI document: AsyncAPI schemas are a
    superset of JSON Schema draft-07, and their $refs point into the document."""
    root = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "allOf": [schema],
        "components": DOC["components"],
    }
    return jsonschema_rs.validator_for(root, validate_formats=True)


def _message(cls: type[Event]) -> dict[str, Any]:
    spec = _spec_of(cls)
    channel = _channel(spec.name)
    message: dict[str, Any] = _deref(channel["messages"][cls.__name__])
    return message


# --- drift ----------------------------------------------------------------------------------


def test_the_committed_contract_is_what_the_code_generates() -> None:
    problems = differences()
    assert not problems, (
        "docs/contract/ is out of date with the code: "
        + "; ".join(f"{name} {problem}" for name, problem in problems.items())
        + f". Run `{COMMAND}` and commit the result."
    )


def test_the_contract_directory_holds_a_schema_per_event_and_both_api_documents() -> None:
    names = set(documents())
    assert {"asyncapi.json", "agency-openapi.json"} <= names
    assert {f"schemas/{cls.ce_type}.json" for cls in event_models()} <= names
    assert (CONTRACT_DIR / "README.md").is_file()


# --- coverage -------------------------------------------------------------------------------


def test_every_platform_topic_its_dlq_and_the_agency_template_are_channels() -> None:
    for spec in PLATFORM_TOPICS:
        channel = _channel(spec.name)
        assert set(channel["messages"]) >= {cls.__name__ for cls in spec.events}
        assert _channel(spec.dlq)["messages"].keys() == {DEAD_LETTER_MESSAGE}
    template = _channel("refnet.agency.{agency_id}.offers")
    assert set(template["parameters"]) == {"agency_id"}
    assert template["address"].replace("{agency_id}", "ag-007") == agency_offers("ag-007").name
    assert set(template["messages"]) == {c.__name__ for c in agency_offers("ag-007").events}
    assert {c["address"] for c in DOC["channels"].values()} == {
        *(s.name for s in PLATFORM_TOPICS),
        *(s.dlq for s in PLATFORM_TOPICS),
        AGENCY_OFFERS_TEMPLATE.name,
    }


def test_the_compacted_topic_documents_its_tombstone() -> None:
    for spec in PLATFORM_TOPICS:
        names = set(_channel(spec.name)["messages"])
        assert (TOMBSTONE_MESSAGE in names) == spec.compacted


def test_every_topic_has_a_sender_and_a_receiver_among_the_known_parties() -> None:
    assert set(ROLES) == {spec.name for spec in (*PLATFORM_TOPICS, AGENCY_OFFERS_TEMPLATE)}
    for spec in (*PLATFORM_TOPICS, AGENCY_OFFERS_TEMPLATE):
        ops = [
            op
            for op in DOC["operations"].values()
            if _resolve(op["channel"]["$ref"])["address"] == spec.name
        ]
        assert {op["action"] for op in ops} == {"send", "receive"}, spec.name
        sent = {_deref(m)["name"] for op in ops if op["action"] == "send" for m in op["messages"]}
        assert sent >= {cls.__name__ for cls in spec.events}, f"nobody sends some of {spec.name}"
    for op in DOC["operations"].values():
        assert [t["name"] for t in op["tags"]][0] in PARTIES


def test_an_agency_receives_its_offers_and_sends_its_answers() -> None:
    ops = DOC["operations"]
    assert ops["agency-receives-agency-offers"]["action"] == "receive"
    answers = {
        m["$ref"].rsplit("/", 1)[1] for m in ops["agency-sends-offer-responses-v1"]["messages"]
    }
    assert answers == {"OfferAccepted", "OfferDeclined", "OutcomeReported"}
    # Capacity goes through the agency API: an agency's Kafka ACLs allow no other topic.
    assert "agency-sends-capacity-updates-v1" not in ops
    assert ops["notifications-sends-capacity-updates-v1"]["action"] == "send"


# --- structure ------------------------------------------------------------------------------


def test_the_asyncapi_document_has_the_required_structure_and_every_ref_resolves() -> None:
    assert DOC["asyncapi"] == "3.0.0"
    assert DOC["info"]["title"] and DOC["info"]["version"]
    server = DOC["servers"]["production"]
    assert server["protocol"] == "kafka" and server["host"] == "{bootstrap_server}"
    assert set(server["variables"]) == {"bootstrap_server"}
    for cid, channel in DOC["channels"].items():
        assert jsonschema_rs.validator_for({"pattern": "^[A-Za-z0-9_-]+$"}).is_valid(cid)
        assert channel["address"] and channel["messages"]
    for name, op in DOC["operations"].items():
        assert op["action"] in {"send", "receive"}, name
        channel_ref = op["channel"]["$ref"]
        for message in op["messages"]:
            assert message["$ref"].startswith(channel_ref + "/messages/"), (
                f"{name}: an operation's messages must be its channel's"
            )
    for name, message in DOC["components"]["messages"].items():
        assert message["name"] == name and "payload" in message
        assert message["bindings"]["kafka"]["key"]["type"]
    refs = _refs(DOC)
    assert refs
    for ref in refs:
        _resolve(ref)
    # each payload schema appears once, under components/schemas, and is referenced
    for cls in event_models():
        assert _message(cls)["payload"] == {"$ref": f"#/components/schemas/{cls.__name__}"}
        assert cls.__name__ in DOC["components"]["schemas"]


def test_the_headers_schema_names_exactly_the_headers_the_codec_writes() -> None:
    headers, _ = encode(EXAMPLES[0], event_id=uuid4(), source="/refnet/intake", time=NOW)
    described = DOC["components"]["schemas"][HEADERS_SCHEMA]["properties"]
    assert set(described) == {name for name, _ in headers}


def test_each_standalone_schema_is_a_valid_2020_12_schema_with_an_id() -> None:
    schemas = event_json_schemas()
    assert set(schemas) == {cls.ce_type for cls in event_models()}
    for ce_type, schema in schemas.items():
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["$id"].startswith("urn:refnet:schema:" + ce_type)
        assert schema["title"]
        jsonschema_rs.meta.validate(schema)
    assert len({s["$id"] for s in schemas.values()}) == len(schemas)


# --- real events ----------------------------------------------------------------------------


def test_the_examples_cover_every_payload_model() -> None:
    assert {type(e) for e in EXAMPLES} == set(event_models())


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda e: e.ce_type)
def test_a_real_event_validates_against_its_message_in_the_contract(event: Event) -> None:
    cls = type(event)
    spec = _spec_of(cls)
    message = _message(cls)
    payload = event.model_dump(mode="json")
    headers, value = encode(event, event_id=uuid4(), source="/refnet/matching", time=NOW)

    _validator(message["payload"]).validate(payload)
    _validator(message["headers"]).validate({k: v.decode() for k, v in headers})
    key = spec.key_of(event)
    _validator(message["bindings"]["kafka"]["key"]).validate(key)
    jsonschema_rs.validator_for(event_json_schemas()[cls.ce_type], validate_formats=True).validate(
        payload
    )

    # and the validators do refuse: a wrong type, a missing field, another event's type
    wrong_headers = {k: v.decode() for k, v in headers} | {"ce_type": "org.refnet.other"}
    assert not _validator(message["headers"]).is_valid(wrong_headers)
    required = DOC["components"]["schemas"][cls.__name__]["required"]
    assert not _validator(message["payload"]).is_valid(
        {k: v for k, v in payload.items() if k != required[0]}
    )


def test_a_payload_breaking_a_constraint_is_refused() -> None:
    need = need_submitted(at=NOW).model_dump(mode="json")
    validator = _validator(_message(type(EXAMPLES[0]))["payload"])
    assert validator.is_valid(need)
    assert not validator.is_valid(need | {"postal_code": "9721"})
    assert not validator.is_valid(need | {"category": "astrology"})
    assert not validator.is_valid(need | {"age_years": 91})
    assert not validator.is_valid(need | {"submitted_at": "2025-03-14T09:30:00"}), "no offset"
    assert not validator.is_valid(need | {"contact": {"channel": "sms", "window_from": "9am"}})
    # draft-07 has no uuid format; the standalone 2020-12 schema checks it
    standalone = event_json_schemas()["org.refnet.need.submitted"]
    strict = jsonschema_rs.validator_for(standalone, validate_formats=True)
    assert strict.is_valid(need)
    assert not strict.is_valid(need | {"need_id": "not-a-uuid"})
    # unknown fields are allowed: readers ignore them
    assert validator.is_valid(need | {"added_in_a_later_release": True})


# --- served ---------------------------------------------------------------------------------


def test_the_router_serves_the_document_outside_the_openapi() -> None:
    app = FastAPI()
    app.include_router(asyncapi_router)
    with TestClient(app) as client:
        response = client.get("/asyncapi.json")
        assert response.status_code == 200
        assert response.json() == DOC
        assert "/asyncapi.json" not in client.get("/openapi.json").json()["paths"]
