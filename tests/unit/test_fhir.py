import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import UUID

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.servicerequest import ServiceRequest
from fhir.resources.R4B.task import Task

from services.notifications import fhir
from services.notifications.fhir import (
    REFNET_STATUSES,
    FHIRExportError,
    ReferralRecord,
    referral_bundle,
)
from shared.events import NeedCategory, Urgency

BASE = "https://refnet.example.org"
NEED = UUID("3f2b8c1e-5a7d-4e21-9c0b-8d6f1a2e4b70")
OFFER = UUID("a1c9e7d2-6b3f-5e18-8a4c-2f0d9b7e6c15")
OFFERED_AT = datetime(2025, 3, 4, 15, 0, tzinfo=UTC)

EXPECTED_TASK_STATUS = {
    "offered": "requested",
    "accepted": "accepted",
    "declined": "rejected",
    "expired": "rejected",
    "cancelled": "cancelled",
    "withdrawn": "cancelled",
    "placed_elsewhere": "cancelled",
    "in_progress": "in-progress",
    "on_hold": "on-hold",
    "completed": "completed",
    "failed": "failed",
}
EXPECTED_SR_STATUS = {
    "offered": "active",
    "accepted": "active",
    "declined": "active",
    "expired": "active",
    "placed_elsewhere": "active",
    "in_progress": "active",
    "on_hold": "active",
    "completed": "completed",
    "cancelled": "revoked",
    "withdrawn": "revoked",
    "failed": "revoked",
}
PERSON_KEYS = {"name", "telecom", "address", "birthDate", "gender", "photo", "contact"}


def record(**changes: Any) -> ReferralRecord:
    base = ReferralRecord(
        need_id=NEED,
        offer_id=OFFER,
        agency_id="ag-007",
        agency_name="Harbor Light Housing",
        attempt=2,
        category=NeedCategory.HOUSING.value,
        urgency=Urgency.SOON.value,
        postal_code="97201",
        offered_at=OFFERED_AT,
        respond_by=OFFERED_AT + timedelta(hours=24),
        status="offered",
        reason=None,
        updated_at=OFFERED_AT + timedelta(hours=2),
    )
    return replace(base, **changes)


def resources(bundle: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    sr, task = (entry["resource"] for entry in bundle["entry"])
    assert sr["resourceType"] == "ServiceRequest"
    assert task["resourceType"] == "Task"
    return sr, task


def keys(node: Any) -> set[str]:
    if isinstance(node, dict):
        return set(node) | {k for value in node.values() for k in keys(value)}
    if isinstance(node, list):
        return {k for item in node for k in keys(item)}
    return set()


def test_the_brief_s_statuses_are_all_mapped() -> None:
    assert set(REFNET_STATUSES) == set(EXPECTED_TASK_STATUS)
    assert set(fhir.TASK_STATUS) == set(REFNET_STATUSES)
    assert set(fhir.SERVICE_REQUEST_STATUS) == set(REFNET_STATUSES)


@pytest.mark.parametrize("status", REFNET_STATUSES)
def test_every_status_exports_a_bundle_that_parses_as_fhir_from_json(status: str) -> None:
    bundle = referral_bundle(record(status=status, reason="no-capacity"), BASE)
    text = json.dumps(bundle)

    parsed = Bundle.model_validate_json(text)
    assert parsed.type == "collection"
    assert len(parsed.entry) == 2
    sr, task = resources(json.loads(text))
    ServiceRequest.model_validate(sr)
    Task.model_validate(task)

    assert task["status"] == EXPECTED_TASK_STATUS[status]
    assert sr["status"] == EXPECTED_SR_STATUS[status]
    assert task["businessStatus"] == {"text": status}
    assert task["intent"] == sr["intent"] == "order"


@pytest.mark.parametrize("status", REFNET_STATUSES)
def test_status_reason_is_there_exactly_where_the_sdohcc_profile_expects_it(status: str) -> None:
    _, task = resources(referral_bundle(record(status=status, reason=None), BASE))
    if task["status"] in {"rejected", "cancelled", "on-hold", "failed"}:
        assert task["statusReason"]["text"].strip()
    else:
        assert "statusReason" not in task


def test_status_reason_carries_refnet_s_reason() -> None:
    _, declined = resources(referral_bundle(record(status="declined", reason="no-capacity"), BASE))
    _, failed = resources(referral_bundle(record(status="failed", reason="couldnt-contact"), BASE))
    _, cancelled = resources(
        referral_bundle(record(status="cancelled", reason="consent revoked"), BASE)
    )
    _, placed = resources(
        referral_bundle(record(status="placed_elsewhere", reason="whatever"), BASE)
    )
    assert declined["statusReason"] == {"text": "no-capacity"}
    assert failed["statusReason"] == {"text": "couldnt-contact"}
    assert cancelled["statusReason"] == {"text": "consent revoked"}
    assert placed["statusReason"] == {"text": "placed with another agency"}


@pytest.mark.parametrize("status", REFNET_STATUSES)
def test_nothing_identifies_the_person(status: str) -> None:
    bundle = referral_bundle(record(status=status, reason="consent revoked"), BASE)
    text = json.dumps(bundle)

    assert not keys(bundle) & PERSON_KEYS
    assert "97201" not in text  # the postal code stays out
    assert "contained" not in keys(bundle)
    sr, task = resources(bundle)
    expected_subject = {
        "type": "Patient",
        "identifier": {"type": {"text": "opaque"}, "system": "urn:refnet:need", "value": str(NEED)},
    }
    assert sr["subject"] == task["for"] == expected_subject


def test_the_task_points_at_the_service_request_and_the_agency_owns_it() -> None:
    bundle = referral_bundle(record(), BASE + "/")
    sr_entry, task_entry = bundle["entry"]
    sr, task = resources(bundle)

    assert sr_entry["fullUrl"] == f"{BASE}/fhir/ServiceRequest/sr-{NEED}"
    assert task_entry["fullUrl"] == f"{BASE}/fhir/Task/task-{OFFER}"
    assert sr["id"] == f"sr-{NEED}" and task["id"] == f"task-{OFFER}"
    assert task["focus"]["reference"] == sr_entry["fullUrl"]
    assert task["identifier"] == [{"system": "urn:refnet:offer", "value": str(OFFER)}]
    agency = {
        "type": "Organization",
        "identifier": {"system": "urn:refnet:agency", "value": "ag-007"},
        "display": "Harbor Light Housing",
    }
    assert task["owner"] == agency
    assert sr["performer"] == [agency]
    assert task["code"]["coding"][0]["code"] == "fulfill"


def test_dates_are_iso_with_timezone_and_the_deadline_shows_only_while_requested() -> None:
    pacific = timezone(timedelta(hours=-8))
    offered = record(updated_at=datetime(2025, 3, 4, 9, 30, tzinfo=pacific))
    _, task = resources(referral_bundle(offered, BASE))
    assert task["authoredOn"] == "2025-03-04T15:00:00+00:00"
    assert task["lastModified"] == "2025-03-04T17:30:00+00:00"
    assert task["restriction"] == {"period": {"end": "2025-03-05T15:00:00+00:00"}}

    _, accepted = resources(referral_bundle(record(status="accepted"), BASE))
    assert "restriction" not in accepted


@pytest.mark.parametrize("field", ["offered_at", "respond_by", "updated_at"])
def test_a_naive_datetime_is_refused(field: str) -> None:
    naive = record(status="accepted", **{field: datetime(2025, 3, 4, 15, 0)})
    with pytest.raises(FHIRExportError, match=f"{field} must be timezone-aware"):
        referral_bundle(naive, BASE)


@pytest.mark.parametrize(
    ("category", "code"),
    [
        (NeedCategory.HOUSING, "housing-instability"),
        (NeedCategory.TRANSPORTATION, "transportation-insecurity"),
        (NeedCategory.EMPLOYMENT, "employment-status"),
        (NeedCategory.CLOTHING, "material-hardship"),
    ],
)
def test_sdoh_categories_are_coded(category: NeedCategory, code: str) -> None:
    sr, _ = resources(referral_bundle(record(category=category.value), BASE))
    (coding,) = sr["category"][0]["coding"]
    assert coding["system"] == fhir.SDOHCC_CODES
    assert coding["code"] == code
    assert sr["code"] == {"text": category.label}


def test_a_category_with_no_sdoh_domain_is_text_only() -> None:
    sr, _ = resources(referral_bundle(record(category=NeedCategory.PEER_SUPPORT.value), BASE))
    assert sr["category"] == [{"text": "Peer support group"}]


@pytest.mark.parametrize("category", list(NeedCategory))
def test_every_category_exports(category: NeedCategory) -> None:
    sr, _ = resources(referral_bundle(record(category=category.value), BASE))
    assert sr["code"]["text"] == category.label


@pytest.mark.parametrize(
    ("urgency", "priority"),
    [(Urgency.ROUTINE, "routine"), (Urgency.SOON, "urgent"), (Urgency.URGENT, "asap")],
)
def test_priority_follows_urgency(urgency: Urgency, priority: str) -> None:
    sr, task = resources(referral_bundle(record(urgency=urgency.value), BASE))
    assert sr["priority"] == task["priority"] == priority


def test_an_out_of_value_set_task_status_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    # A well-formed code the structure accepts, but not a task-status: only the binding check
    # catches it (fhir.resources does not check value sets).
    monkeypatch.setitem(fhir.TASK_STATUS, "accepted", "approved")
    with pytest.raises(FHIRExportError, match=r"Task\.status 'approved'"):
        referral_bundle(record(status="accepted"), BASE)


def test_a_status_the_sdohcc_referral_task_excludes_is_rejected(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(fhir.TASK_STATUS, "accepted", "received")
    with pytest.raises(FHIRExportError, match=r"Task\.status 'received'"):
        referral_bundle(record(status="accepted"), BASE)


def test_a_malformed_code_is_rejected_by_the_model_classes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Whitespace is not allowed around a FHIR code: the R4 structure check refuses it.
    monkeypatch.setitem(fhir.SERVICE_REQUEST_STATUS, "offered", " active")
    monkeypatch.setattr(fhir, "R4_REQUEST_STATUS", fhir.R4_REQUEST_STATUS | {" active"})
    with pytest.raises(FHIRExportError, match="ServiceRequest: "):
        referral_bundle(record(), BASE)


def test_a_missing_status_reason_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(fhir.DEFAULT_STATUS_REASON, "declined", "")
    with pytest.raises(FHIRExportError, match="statusReason"):
        referral_bundle(record(status="declined", reason=None), BASE)


def test_an_unknown_element_is_rejected_by_the_model_classes() -> None:
    bundle = referral_bundle(record(), BASE)
    bundle["entry"][1]["resource"]["respondBy"] = "2025-03-05T15:00:00+00:00"
    with pytest.raises(FHIRExportError, match="Task"):
        fhir.validate_bundle(bundle)


@pytest.mark.parametrize(
    "changes",
    [{"status": "unmatched"}, {"category": "food"}, {"urgency": "stat"}],
)
def test_an_unknown_input_value_is_refused(changes: dict[str, str]) -> None:
    with pytest.raises(FHIRExportError):
        referral_bundle(record(**changes), BASE)


def test_a_relative_base_url_is_refused() -> None:
    with pytest.raises(FHIRExportError, match="base_url"):
        referral_bundle(record(), "/refnet")


@pytest.mark.parametrize(
    ("model", "element", "ours"),
    [
        (Task, "intent", fhir.R4_TASK_INTENT),
        (Task, "priority", fhir.R4_REQUEST_PRIORITY),
        (ServiceRequest, "status", fhir.R4_REQUEST_STATUS),
        (ServiceRequest, "intent", fhir.R4_REQUEST_INTENT),
        (ServiceRequest, "priority", fhir.R4_REQUEST_PRIORITY),
        (Bundle, "type", fhir.R4_BUNDLE_TYPE),
    ],
)
def test_our_value_sets_agree_with_the_library_s_where_it_lists_them_in_full(
    model: Any, element: str, ours: frozenset[str]
) -> None:
    extra = model.model_fields[element].json_schema_extra
    assert set(extra["enum_values"]) == ours
