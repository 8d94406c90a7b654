"""Event payloads: the single source of truth for what travels on refnet topics.

Events are past tense. Each carries its CloudEvents type and schema version as class
attributes; readers ignore unknown fields, and a field is never removed within a version.

No payload may carry a direct identifier of the person (name, phone, email, address, date
of birth, free text): only the opaque ``person_ref`` and coarse, decision-relevant facts.
"""

from __future__ import annotations

from datetime import date, time
from enum import StrEnum
from typing import ClassVar
from uuid import NAMESPACE_URL, UUID, uuid5

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field


class NeedCategory(StrEnum):
    PEER_SUPPORT = "peer-support"
    RECOVERY_COACHING = "recovery-coaching"
    COUNSELING = "counseling"
    CASE_MANAGEMENT = "case-management"
    EMPLOYMENT = "employment"
    INTERVIEW_COACHING = "interview-coaching"
    CHILD_CARE = "child-care"
    CLOTHING = "clothing"
    TRANSPORTATION = "transportation"
    HOUSING = "housing"
    MEDICAL_CARE = "medical-care"
    MENTAL_HEALTH = "mental-health"
    AFTERCARE = "aftercare"
    FAMILY_SUPPORT = "family-support"

    @property
    def label(self) -> str:
        return CATEGORY_LABELS[self]


CATEGORY_LABELS: dict[NeedCategory, str] = {
    NeedCategory.PEER_SUPPORT: "Peer support group",
    NeedCategory.RECOVERY_COACHING: "Recovery coaching / emotional support",
    NeedCategory.COUNSELING: "Counseling and therapy",
    NeedCategory.CASE_MANAGEMENT: "Case management",
    NeedCategory.EMPLOYMENT: "Employment / job referral",
    NeedCategory.INTERVIEW_COACHING: "Interview coaching",
    NeedCategory.CHILD_CARE: "Child care",
    NeedCategory.CLOTHING: "Clothing",
    NeedCategory.TRANSPORTATION: "Transportation",
    NeedCategory.HOUSING: "Housing / sober living",
    NeedCategory.MEDICAL_CARE: "Medical care",
    NeedCategory.MENTAL_HEALTH: "Mental health services",
    NeedCategory.AFTERCARE: "Aftercare program",
    NeedCategory.FAMILY_SUPPORT: "Family support",
}


class Urgency(StrEnum):
    ROUTINE = "routine"
    SOON = "soon"
    URGENT = "urgent"


class ReferralStatus(StrEnum):
    """Per-need referral states (see the state machine in docs/architecture.md)."""

    SUBMITTED = "submitted"
    OFFERED = "offered"
    ACCEPTED = "accepted"
    DECLINED = "declined"
    EXPIRED = "expired"
    UNMATCHED = "unmatched"
    IN_PROGRESS = "in_progress"
    ON_HOLD = "on_hold"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class DeclineReason(StrEnum):
    NO_CAPACITY = "no-capacity"
    NOT_ELIGIBLE = "not-eligible"
    CANT_REACH = "cant-reach"
    OTHER = "other"


class Event(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    ce_type: ClassVar[str]
    schema_version: ClassVar[int] = 1


class RecoveryStage(StrEnum):
    SEEKING_TREATMENT = "seeking-treatment"
    IN_TREATMENT = "in-treatment"
    EARLY_RECOVERY = "early-recovery"  # under a year
    SUSTAINED_RECOVERY = "sustained-recovery"
    AFTERCARE = "aftercare"


class Insurance(StrEnum):
    MEDICAID = "medicaid"
    MEDICARE = "medicare"
    PRIVATE = "private"
    NONE = "none"


class Gender(StrEnum):
    """Asked only so gender-specific services can be matched; never required."""

    WOMAN = "woman"
    MAN = "man"
    NONBINARY = "nonbinary"


class CapacityStatus(StrEnum):
    CAPACITY = "capacity"
    NO_CAPACITY = "no-capacity"
    WAITLIST = "waitlist"


class Constraints(BaseModel):
    """What agencies use to decide whether they can serve the person. Coarse on purpose."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    has_transportation: bool = False
    needs_child_care: bool = False
    gender_specific_preferred: bool = False
    mat_friendly_required: bool = False  # a provider that accepts medication-assisted treatment
    insurance: Insurance = Insurance.NONE


class ContactChannel(StrEnum):
    """How the person agreed to be contacted by refnet and the agency that takes them on."""

    EMAIL = "email"
    SMS = "sms"
    PHONE = "phone"  # a person calls them: refnet sends nothing itself, the worker is prompted
    NONE = "none"


class ContactPreferences(BaseModel):
    """The person's choice of channel and hours, never the address itself: notifications asks
    intake for that, audited, only when it is about to send."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    channel: ContactChannel
    # Local wall-clock times (the network's time zone); both or neither. A window that ends
    # before it starts runs over midnight.
    window_from: time | None = None
    window_until: time | None = None


class ConsentRecipients(StrEnum):
    NETWORK = "network"  # every network agency offering the consented categories
    NAMED = "named"  # only the agencies in named_agencies


class ConsentScope(BaseModel):
    """What the person agreed to share and with whom; enough for matching to gate offers."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    consent_id: UUID
    version: int = 1
    categories: frozenset[NeedCategory]
    recipients: ConsentRecipients = ConsentRecipients.NETWORK
    named_agencies: frozenset[str] = frozenset()
    expires_on: date

    def covers(self, category: NeedCategory, on: date) -> bool:
        return category in self.categories and on <= self.expires_on

    def allows_recipient(self, agency_id: str) -> bool:
        return self.recipients == ConsentRecipients.NETWORK or agency_id in self.named_agencies


class Referrer(BaseModel):
    """The intake worker to keep informed. Staff contact, not the person's."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    worker_ref: UUID
    notify_email: str


class NeedSubmitted(Event):
    ce_type: ClassVar[str] = "org.refnet.need.submitted"

    need_id: UUID
    person_ref: UUID
    category: NeedCategory
    urgency: Urgency
    postal_code: str = Field(pattern=r"^\d{5}$")
    county: str | None = None
    languages: tuple[str, ...]
    # Whole years; 90 stands for 90 or older (HIPAA safe harbor never sends a higher age).
    age_years: int | None = Field(default=None, ge=0, le=90)
    recovery_stage: RecoveryStage | None = None
    gender: Gender | None = None
    constraints: Constraints = Constraints()
    consent: ConsentScope
    referrer: Referrer
    submitted_at: AwareDatetime
    # Absent from needs submitted before contact preferences travelled: treated as no contact.
    contact: ContactPreferences | None = None


class MatchFactor(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str
    value: str
    points: float


class ReferralOffered(Event):
    ce_type: ClassVar[str] = "org.refnet.referral.offered"

    offer_id: UUID
    need_id: UUID
    agency_id: str
    service_id: str | None = None  # the agency's HSDS service the need was matched to
    attempt: int
    category: NeedCategory
    urgency: Urgency
    postal_code: str
    county: str | None = None
    languages: tuple[str, ...]
    age_years: int | None = None
    recovery_stage: RecoveryStage | None = None
    gender: Gender | None = None
    constraints: Constraints = Constraints()
    respond_by: AwareDatetime
    # Why this agency: the ranking's score and each factor behind it.
    score: float | None = None
    explanation: tuple[MatchFactor, ...] = ()


class OfferWithdrawn(Event):
    ce_type: ClassVar[str] = "org.refnet.referral.offer-withdrawn"

    offer_id: UUID
    need_id: UUID
    agency_id: str
    reason: str


class AcceptanceRefused(Event):
    """Tells an agency its acceptance did not take: the need was already placed with
    another agency, the offer had expired, or it was withdrawn."""

    ce_type: ClassVar[str] = "org.refnet.referral.acceptance-refused"

    offer_id: UUID
    need_id: UUID
    agency_id: str
    reason: str


class OfferAccepted(Event):
    ce_type: ClassVar[str] = "org.refnet.offer.accepted"

    offer_id: UUID
    need_id: UUID
    agency_id: str
    accepted_at: AwareDatetime


class OfferDeclined(Event):
    ce_type: ClassVar[str] = "org.refnet.offer.declined"

    offer_id: UUID
    need_id: UUID
    agency_id: str
    reason: DeclineReason
    declined_at: AwareDatetime


class OfferExpired(Event):
    ce_type: ClassVar[str] = "org.refnet.offer.expired"

    offer_id: UUID
    need_id: UUID
    agency_id: str
    expired_at: AwareDatetime


class Outcome(StrEnum):
    """What came of an accepted referral, as the agency reports it: the closed loop."""

    GOT_HELP = "got-help"
    COULDNT_CONTACT = "couldnt-contact"
    NOT_ELIGIBLE = "not-eligible"
    NO_LONGER_INTERESTED = "no-longer-interested"
    REFERRED_ELSEWHERE = "referred-elsewhere"

    @property
    def label(self) -> str:
        return OUTCOME_LABELS[self]


OUTCOME_LABELS: dict[Outcome, str] = {
    Outcome.GOT_HELP: "Got help",
    Outcome.COULDNT_CONTACT: "Couldn't contact the person",
    Outcome.NOT_ELIGIBLE: "Not eligible after all",
    Outcome.NO_LONGER_INTERESTED: "No longer interested",
    Outcome.REFERRED_ELSEWHERE: "Referred elsewhere",
}


class OutcomeReported(Event):
    """The accepting agency's word on how the referral ended: got-help completes it, any
    other outcome fails it with that reason."""

    ce_type: ClassVar[str] = "org.refnet.offer.outcome-reported"

    offer_id: UUID
    need_id: UUID
    agency_id: str
    outcome: Outcome
    reported_at: AwareDatetime


class CheckInAnswer(StrEnum):
    CONNECTED = "connected"
    NEED_HELP = "need-help"
    STOP = "stop"


class CheckInAnswered(Event):
    """The person answered an aftercare check-in. need-help asks the intake worker to step
    in again; stop ends the reminders for this need."""

    ce_type: ClassVar[str] = "org.refnet.aftercare.check-in-answered"

    need_id: UUID
    day: int
    answer: CheckInAnswer
    answered_at: AwareDatetime


class ExcludedAgency(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    agency_id: str
    service_id: str | None = None
    reason: str


class ReferralStatusChanged(Event):
    """Every state change of a need's referral. ``sequence`` grows by one per change, so a
    reader can drop a stale or repeated update."""

    ce_type: ClassVar[str] = "org.refnet.referral.status-changed"

    need_id: UUID
    status: ReferralStatus
    sequence: int
    occurred_at: AwareDatetime
    agency_id: str | None = None
    agency_name: str | None = None
    offer_id: UUID | None = None
    attempt: int | None = None
    respond_by: AwareDatetime | None = None
    reason: str | None = None
    excluded: tuple[ExcludedAgency, ...] = ()
    # On the change that makes an offer: the offer exactly as the agency's topic carries it
    # (de-identified), so the agency API and inbox can show what the agency decides on.
    offer: ReferralOffered | None = None


# ReferralStatusChanged.reason when matching cancels a referral because its consent was
# revoked; notifications tells the worker of other cancellations only (they revoked it).
CANCELLED_CONSENT_REVOKED = "consent revoked"


class ConsentRevoked(Event):
    """The person withdrew a consent: every open referral under it is to be cancelled, and
    nothing more may be disclosed under it."""

    ce_type: ClassVar[str] = "org.refnet.consent.revoked"

    consent_id: UUID
    person_ref: UUID
    revoked_at: AwareDatetime


class CapacityUpdated(Event):
    """An agency's own word on a service's room, by Kafka or the agency API. ``available``
    counts free places now, so it replaces whatever refnet had counted as taken."""

    ce_type: ClassVar[str] = "org.refnet.agency.capacity-updated"

    agency_id: str
    service_id: str
    status: CapacityStatus
    available: int | None = Field(default=None, ge=0)
    maximum: int | None = Field(default=None, ge=0)
    updated_at: AwareDatetime


def offer_id_for(need_id: UUID, attempt: int) -> UUID:
    """Deterministic, so a re-processed need yields the same offer id downstream."""
    return uuid5(NAMESPACE_URL, f"urn:refnet:offer:{need_id}:{attempt}")
