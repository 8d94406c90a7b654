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
