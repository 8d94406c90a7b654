"""Valid events to start tests from; override what the test is about."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any
from uuid import uuid4

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
