"""The topic registry: each topic name bound to its key field and its payload models.

Nothing else in the code base spells a topic name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from shared.events import (
    AcceptanceRefused,
    CapacityUpdated,
    CheckInAnswered,
    ConsentRevoked,
    Event,
    NeedSubmitted,
    OfferAccepted,
    OfferDeclined,
    OfferExpired,
    OfferWithdrawn,
    OutcomeReported,
    ReferralOffered,
    ReferralStatusChanged,
)
from shared.hsds import AGENCY_ID_PATTERN, AgencyProfile

DLQ_SUFFIX = ".dlq"
_AGENCY_ID = re.compile(AGENCY_ID_PATTERN)


@dataclass(frozen=True)
class TopicSpec:
    name: str
    key_field: str
    events: tuple[type[Event], ...]
    # Compacted topics keep the latest record per key; a null value (tombstone) deletes it.
    compacted: bool = False

    def event_class(self, ce_type: str) -> type[Event] | None:
        return next((cls for cls in self.events if cls.ce_type == ce_type), None)

    def key_of(self, event: Event) -> str:
        return str(getattr(event, self.key_field))

    @property
    def dlq(self) -> str:
        return self.name + DLQ_SUFFIX


NEEDS = TopicSpec("refnet.needs.v1", "need_id", (NeedSubmitted,))
OFFER_RESPONSES = TopicSpec(
    "refnet.offer-responses.v1",
    "need_id",
    (OfferAccepted, OfferDeclined, OfferExpired, OutcomeReported),
)
REFERRAL_EVENTS = TopicSpec("refnet.referral-events.v1", "need_id", (ReferralStatusChanged,))

CONSENT_EVENTS = TopicSpec("refnet.consent-events.v1", "person_ref", (ConsentRevoked,))
AGENCIES = TopicSpec("refnet.agencies.v1", "agency_id", (AgencyProfile,), compacted=True)
# Agencies' own capacity reports (Kafka), and those made through the agency HTTP API.
CAPACITY_UPDATES = TopicSpec("refnet.capacity-updates.v1", "agency_id", (CapacityUpdated,))

# Aftercare check-in answers, from notifications to intake (the worker's tracker).
AFTERCARE = TopicSpec("refnet.aftercare.v1", "need_id", (CheckInAnswered,))

# Topics whose partitions must line up: one matching worker sees everything about a need.
CO_PARTITIONED: tuple[TopicSpec, ...] = (NEEDS, OFFER_RESPONSES, REFERRAL_EVENTS)
# Every fixed-name topic the platform creates (agency topics are created per agency).
PLATFORM_TOPICS: tuple[TopicSpec, ...] = (
    *CO_PARTITIONED,
    CONSENT_EVENTS,
    AGENCIES,
    CAPACITY_UPDATES,
    AFTERCARE,
)


# Every agency's offers topic, as a regular expression (for pattern subscriptions).
AGENCY_OFFERS_PATTERN = r"^refnet\.agency\..+\.offers$"


def agency_offers(agency_id: str) -> TopicSpec:
    if not _AGENCY_ID.match(agency_id):
        raise ValueError(f"agency id {agency_id!r} must be lowercase letters, digits and '-'")
    return TopicSpec(
        f"refnet.agency.{agency_id}.offers",
        "need_id",
        (ReferralOffered, OfferWithdrawn, AcceptanceRefused),
    )


def is_agency_offers(topic: str) -> bool:
    return re.match(AGENCY_OFFERS_PATTERN, topic) is not None
