"""Read-only export of one referral, as one agency sees it, as an HL7 FHIR R4 Bundle.

``referral_bundle(record, base_url)`` returns a ``collection`` Bundle holding a
ServiceRequest (the need's referral) and a Task (this agency's offer), with statuses mapped
the way the SDOH Clinical Care IG (Gravity Project, STU 2.x) uses them in its
*SDOHCC ServiceRequest* and *SDOHCC Task For Referral Management* profiles. The mapping is
in docs/fhir.md. The profiles are followed, not claimed: ``meta.profile`` is not set,
because refnet has no US Core procedure code for ``ServiceRequest.code`` and the subject is
not a US Core Patient (it is a pseudonym, below).

De-identified. Nothing about the person leaves here: no name, telecom, address, birth
date, postal code or free text. The subject of both resources is a *logical* reference of
type Patient whose only content is an opaque identifier, the need id (system
``urn:refnet:need``): a random per-need UUID the agency already holds from its offer, so it
tells the agency nothing new and does not link the person's other needs (``person_ref``
would). A contained Patient was the alternative (R4 ``ServiceRequest.subject`` is 1..1,
``Task.for`` 0..1, 1..1 in the SDOHCC profile), but it would be an empty resource copied
into both the ServiceRequest and the Task, each its own, and says no more. The person's
contact details reach an agency only through the audited contact release path.

Validation. Every resource is parsed through the FHIR model classes of ``fhir.resources``
(structure, cardinality, required elements, data types, no unknown elements) and any
failure raises ``FHIRExportError``. That library does not check terminology bindings, so
the required bindings of the coded elements set here (Task.status and intent,
ServiceRequest.status, intent and priority, Bundle.type, the SDOHCC category codes) are
checked against the R4 value sets below.

Why R4B models for an R4 export: no maintained release of fhir.resources has R4 (4.0.1)
models on pydantic 2. 6.4.0 (R4 by default) needs pydantic 1, and the project uses
pydantic 2; 7.x and 8.x ship R5 by default plus ``R4B`` and ``STU3``. R4B (4.3.0) is an
R4-compatible release, and for what this module uses it is identical to R4: the generated
models of ServiceRequest, Task, Bundle and of the data types used here (Reference,
Identifier, CodeableConcept, Coding, Period, Meta, Narrative) have the same elements,
types, cardinalities and choice groups in fhir.resources 6.4.0 (R4 4.0.1) and 8.3.0
(R4B 4.3.0); Extension differs (valueCodeableReference and valueRatioRange added,
valueMeta removed), and no extension is used. The value sets of the codes set here are the
same in both releases, and the output is held to the R4 lists regardless.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.servicerequest import ServiceRequest
from fhir.resources.R4B.task import Task
from pydantic import ValidationError

from shared.events import CATEGORY_LABELS, NeedCategory, Urgency

FHIR_VERSION = "4.0.1"

SDOHCC_CODES = "http://hl7.org/fhir/us/sdoh-clinicalcare/CodeSystem/SDOHCC-CodeSystemTemporaryCodes"
TASK_CODE = "http://hl7.org/fhir/CodeSystem/task-code"

NEED_SYSTEM = "urn:refnet:need"
REFERRAL_SYSTEM = "urn:refnet:referral"
OFFER_SYSTEM = "urn:refnet:offer"
AGENCY_SYSTEM = "urn:refnet:agency"

# The refnet referral status as seen by one agency (its offer's fate, then the referral's).
REFNET_STATUSES = (
    "offered",
    "accepted",
    "declined",
    "expired",
    "cancelled",
    "in_progress",
    "on_hold",
    "completed",
    "failed",
    "placed_elsewhere",
    "withdrawn",
)

# Task.status, as SDOHCC Task For Referral Management uses it.
TASK_STATUS: dict[str, str] = {
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

# ServiceRequest.status: the request itself, which the requester (refnet) controls. A
# decline, an expiry or a placement elsewhere leaves it active (the need moves on); a
# cancelled referral or a withdrawn offer revokes it; a failed outcome is final in refnet
# (nobody else is asked), so the request is revoked rather than completed.
SERVICE_REQUEST_STATUS: dict[str, str] = {
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

# Task.statusReason.text when refnet has no reason of its own; placed_elsewhere always says
# this, whatever reason the record carries.
DEFAULT_STATUS_REASON: dict[str, str] = {
    "declined": "declined by the agency",
    "expired": "no answer before the deadline",
    "cancelled": "referral cancelled",
    "withdrawn": "offer withdrawn",
    "on_hold": "on hold",
    "failed": "the referral did not succeed",
}
PLACED_ELSEWHERE_REASON = "placed with another agency"

# ServiceRequest/Task.priority (R4 request-priority). The SDOHCC Task profile uses priority
# to tell urgent from routine; refnet's middle step "soon" is FHIR's "urgent".
PRIORITY: dict[str, str] = {
    Urgency.ROUTINE: "routine",
    Urgency.SOON: "urgent",
    Urgency.URGENT: "asap",
}

# ServiceRequest.category from SDOHCC ValueSet SDOH Category, where a refnet category is an
# SDOH domain. Clothing and child care are coded material-hardship as in the IG's own PRAPARE
# examples. Recovery, clinical and family services are not SDOH domains: text only.
SDOH_CATEGORY: dict[str, tuple[str, str]] = {
    NeedCategory.HOUSING: ("housing-instability", "Housing Instability"),
    NeedCategory.TRANSPORTATION: ("transportation-insecurity", "Transportation Insecurity"),
    NeedCategory.EMPLOYMENT: ("employment-status", "Employment Status"),
    NeedCategory.INTERVIEW_COACHING: ("employment-status", "Employment Status"),
    NeedCategory.CLOTHING: ("material-hardship", "Material Hardship"),
    NeedCategory.CHILD_CARE: ("material-hardship", "Material Hardship"),
}

# Required bindings, FHIR R4 (4.0.1).
R4_TASK_STATUS = frozenset(
    {
        "draft",
        "requested",
        "received",
        "accepted",
        "rejected",
        "ready",
        "cancelled",
        "in-progress",
        "on-hold",
        "failed",
        "completed",
        "entered-in-error",
    }
)
R4_TASK_INTENT = frozenset(
    {
        "unknown",
        "proposal",
        "plan",
        "order",
        "original-order",
        "reflex-order",
        "filler-order",
        "instance-order",
        "option",
    }
)
R4_REQUEST_STATUS = frozenset(
    {"draft", "active", "on-hold", "revoked", "completed", "entered-in-error", "unknown"}
)
R4_REQUEST_INTENT = frozenset(
    {
        "proposal",
        "plan",
        "directive",
        "order",
        "original-order",
        "reflex-order",
        "filler-order",
        "instance-order",
        "option",
    }
)
R4_REQUEST_PRIORITY = frozenset({"routine", "urgent", "asap", "stat"})
R4_BUNDLE_TYPE = frozenset(
    {
        "document",
        "message",
        "transaction",
        "transaction-response",
        "batch",
        "batch-response",
        "history",
        "searchset",
        "collection",
    }
)
# SDOHCC ValueSet Referral Task Status: R4 task-status without ready and received.
SDOHCC_REFERRAL_TASK_STATUS = R4_TASK_STATUS - {"ready", "received"}
# SDOHCC ValueSet SDOH Category (STU 2.3).
SDOHCC_SDOH_CATEGORY = frozenset(
    {
        "sdoh-category-unspecified",
        "food-insecurity",
        "housing-instability",
        "homelessness",
        "inadequate-housing",
        "transportation-insecurity",
        "financial-insecurity",
        "material-hardship",
        "educational-attainment",
        "employment-status",
        "veteran-status",
        "stress",
        "social-connection",
        "intimate-partner-violence",
        "elder-abuse",
        "personal-health-literacy",
        "health-insurance-coverage-status",
        "medical-cost-burden",
        "digital-literacy",
        "digital-access",
        "utility-insecurity",
        "incarceration-status",
        "language-access",
    }
)
# Task statuses after which the SDOHCC profile expects Task.statusReason.text.
STATUS_REASON_REQUIRED = frozenset({"rejected", "cancelled", "on-hold", "failed"})


@dataclass(frozen=True)
class ReferralRecord:
    """What the notifications service knows of one offer of one need."""

    need_id: UUID
    offer_id: UUID
    agency_id: str
    agency_name: str | None
    attempt: int
    category: str  # a NeedCategory value
    urgency: str  # an Urgency value
    postal_code: str  # not exported (see the module docstring)
    offered_at: datetime
    respond_by: datetime
    status: str  # one of REFNET_STATUSES
    reason: str | None  # decline, cancellation or outcome reason
    updated_at: datetime


class FHIRExportError(ValueError):
    """The record cannot be exported, or what was built is not valid FHIR R4."""


def referral_bundle(record: ReferralRecord, base_url: str) -> dict[str, Any]:
    """The referral as a FHIR R4 ``collection`` Bundle: one ServiceRequest, one Task.

    Validated before it is returned (``FHIRExportError`` if not); JSON-serialisable, with
    every date-time in UTC with its offset. ``base_url`` is refnet's public base URL; the
    entries' fullUrls are ``{base_url}/fhir/ServiceRequest/sr-{need_id}`` and
    ``{base_url}/fhir/Task/task-{offer_id}``, and the Task's focus is the former.
    """
    _check_record(record)
    base = base_url.rstrip("/")
    if not base.startswith(("https://", "http://")):
        raise FHIRExportError(f"base_url must be an absolute http(s) URL, not {base_url!r}")

    sr_id = f"sr-{record.need_id}"
    task_id = f"task-{record.offer_id}"
    sr_url = f"{base}/fhir/ServiceRequest/{sr_id}"
    task_url = f"{base}/fhir/Task/{task_id}"
    priority = PRIORITY[record.urgency]

    service_request: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "id": sr_id,
        "identifier": [{"system": REFERRAL_SYSTEM, "value": str(record.need_id)}],
        "status": SERVICE_REQUEST_STATUS[record.status],
        "intent": "order",
        "category": [_category(record.category)],
        "priority": priority,
        "code": {"text": CATEGORY_LABELS[NeedCategory(record.category)]},
        "subject": _subject(record),
        "authoredOn": _datetime(record.offered_at, "offered_at"),
        "requester": _refnet(),
        "performer": [_agency(record)],
    }

    task_status = TASK_STATUS[record.status]
    task: dict[str, Any] = {
        "resourceType": "Task",
        "id": task_id,
        "identifier": [{"system": OFFER_SYSTEM, "value": str(record.offer_id)}],
        "status": task_status,
    }
    reason = _status_reason(record)
    if reason is not None:
        task["statusReason"] = {"text": reason}
    task |= {
        "businessStatus": {"text": record.status},
        "intent": "order",
        "priority": priority,
        "code": {
            "coding": [
                {"system": TASK_CODE, "code": "fulfill", "display": "Fulfill the focal request"}
            ]
        },
        "focus": {"type": "ServiceRequest", "reference": sr_url},
        "for": _subject(record),
        "authoredOn": _datetime(record.offered_at, "offered_at"),
        "lastModified": _datetime(record.updated_at, "updated_at"),
        "requester": _refnet(),
        "owner": _agency(record),
    }
    if task_status == "requested":
        task["restriction"] = {"period": {"end": _datetime(record.respond_by, "respond_by")}}

    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "id": f"referral-{record.offer_id}",
        "type": "collection",
        "entry": [
            {"fullUrl": sr_url, "resource": service_request},
            {"fullUrl": task_url, "resource": task},
        ],
    }
    validate_bundle(bundle)
    return bundle


def validate_bundle(bundle: dict[str, Any]) -> None:
    """Raise ``FHIRExportError`` unless ``bundle`` is a valid export: the R4 structure
    (through the model classes) and the required bindings of the codes this module sets."""
    problems: list[str] = []
    _bound(problems, "Bundle.type", bundle.get("type"), R4_BUNDLE_TYPE)
    for entry in bundle.get("entry", []):
        resource = entry.get("resource", {})
        kind = resource.get("resourceType")
        if kind == "ServiceRequest":
            _bound(problems, "ServiceRequest.status", resource.get("status"), R4_REQUEST_STATUS)
            _bound(problems, "ServiceRequest.intent", resource.get("intent"), R4_REQUEST_INTENT)
            _bound(
                problems, "ServiceRequest.priority", resource.get("priority"), R4_REQUEST_PRIORITY
            )
            for concept in resource.get("category", []):
                for coding in concept.get("coding", []):
                    if coding.get("system") == SDOHCC_CODES:
                        _bound(
                            problems,
                            "ServiceRequest.category",
                            coding.get("code"),
                            SDOHCC_SDOH_CATEGORY,
                        )
        elif kind == "Task":
            status = resource.get("status")
            _bound(problems, "Task.status", status, SDOHCC_REFERRAL_TASK_STATUS)
            _bound(problems, "Task.intent", resource.get("intent"), R4_TASK_INTENT)
            _bound(problems, "Task.priority", resource.get("priority"), R4_REQUEST_PRIORITY)
            if status in STATUS_REASON_REQUIRED and not resource.get("statusReason", {}).get(
                "text"
            ):
                problems.append(f"Task.status {status!r} needs Task.statusReason.text")
        try:
            if kind == "ServiceRequest":
                ServiceRequest.model_validate(resource)
            elif kind == "Task":
                Task.model_validate(resource)
            else:
                problems.append(f"unexpected resource {kind!r} in the export")
        except ValidationError as exc:
            problems.append(f"{kind}: {exc}")
    try:
        Bundle.model_validate(bundle)
    except ValidationError as exc:
        problems.append(f"Bundle: {exc}")
    if problems:
        raise FHIRExportError("invalid FHIR R4 export: " + "; ".join(problems))


def _check_record(record: ReferralRecord) -> None:
    if record.status not in TASK_STATUS:
        raise FHIRExportError(f"unknown referral status {record.status!r}")
    if record.category not in {c.value for c in NeedCategory}:
        raise FHIRExportError(f"unknown need category {record.category!r}")
    if record.urgency not in PRIORITY:
        raise FHIRExportError(f"unknown urgency {record.urgency!r}")
    for name in ("offered_at", "respond_by", "updated_at"):
        _datetime(getattr(record, name), name)


def _subject(record: ReferralRecord) -> dict[str, Any]:
    """A logical reference to the person behind the need: an opaque identifier, nothing else."""
    return {
        "type": "Patient",
        "identifier": {
            "type": {"text": "opaque"},
            "system": NEED_SYSTEM,
            "value": str(record.need_id),
        },
    }


def _agency(record: ReferralRecord) -> dict[str, Any]:
    agency: dict[str, Any] = {
        "type": "Organization",
        "identifier": {"system": AGENCY_SYSTEM, "value": record.agency_id},
    }
    if record.agency_name:
        agency["display"] = record.agency_name
    return agency


def _refnet() -> dict[str, Any]:
    return {"type": "Organization", "display": "refnet"}


def _category(category: str) -> dict[str, Any]:
    sdoh = SDOH_CATEGORY.get(category)
    if sdoh is None:
        return {"text": CATEGORY_LABELS[NeedCategory(category)]}
    code, display = sdoh
    return {"coding": [{"system": SDOHCC_CODES, "code": code, "display": display}], "text": display}


def _status_reason(record: ReferralRecord) -> str | None:
    if TASK_STATUS[record.status] not in STATUS_REASON_REQUIRED:
        return None
    if record.status == "placed_elsewhere":
        return PLACED_ELSEWHERE_REASON
    return record.reason or DEFAULT_STATUS_REASON[record.status]


def _datetime(value: datetime, name: str) -> str:
    if value.tzinfo is None or value.utcoffset() is None:
        raise FHIRExportError(f"{name} must be timezone-aware")
    return value.astimezone(UTC).isoformat()


def _bound(problems: list[str], element: str, code: Any, allowed: frozenset[str]) -> None:
    if code not in allowed:
        problems.append(f"{element} {code!r} is not in its required value set")
