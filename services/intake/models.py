"""The intake as a request body: one pydantic model that both the HTML form and the JSON API
validate against, so the two can never disagree about what a complete intake is."""

from __future__ import annotations

from datetime import date, time
from typing import Annotated, Any, Literal, Self
from uuid import UUID

from pydantic import (
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from shared.events import (
    CATEGORY_LABELS,
    ConsentRecipients,
    Constraints,
    ContactChannel,
    Gender,
    Insurance,
    NeedCategory,
    RecoveryStage,
    Urgency,
)

LANGUAGES = {
    "en": "English",
    "es": "Spanish",
    "vi": "Vietnamese",
    "ru": "Russian",
    "zh": "Chinese",
    "so": "Somali",
    "ar": "Arabic",
}
GENDER_LABELS = {Gender.WOMAN: "Woman", Gender.MAN: "Man", Gender.NONBINARY: "Nonbinary"}
STAGE_LABELS = {
    RecoveryStage.SEEKING_TREATMENT: "Seeking treatment",
    RecoveryStage.IN_TREATMENT: "In treatment",
    RecoveryStage.EARLY_RECOVERY: "Early recovery (under a year)",
    RecoveryStage.SUSTAINED_RECOVERY: "Sustained recovery (a year or more)",
    RecoveryStage.AFTERCARE: "Aftercare",
}
INSURANCE_LABELS = {
    Insurance.MEDICAID: "Medicaid (Oregon Health Plan)",
    Insurance.MEDICARE: "Medicare",
    Insurance.PRIVATE: "Private insurance",
    Insurance.NONE: "None",
}
# The Brief Assessment of Recovery Capital (Vilsaint et al., 2017), each rated 1-6.
BARC10_ITEMS = (
    "There are more important things to me in life than using substances.",
    "In general I am happy with my life.",
    "I have enough energy to complete the tasks I set for myself.",
    "I am proud of the community I live in and feel part of it.",
    "I get lots of support from friends.",
    "I regard my life as challenging and fulfilling without the need for using drugs or alcohol.",
    "My living space has helped to drive my recovery journey.",
    "I take full responsibility for my actions.",
    "I am happy dealing with a range of professional people.",
    "I am making good progress on my recovery journey.",
)
BARC10_SCALE = {
    1: "Strongly disagree",
    2: "Disagree",
    3: "Somewhat disagree",
    4: "Somewhat agree",
    5: "Agree",
    6: "Strongly agree",
}
# Events on which a consent ends before its expiry date; chosen, not typed, so that no
# free text about the person lands in the consent record.
EXPIRY_EVENTS = {
    "referrals-closed": "When every referral from this intake is closed",
    "treatment-ends": "When the person's current treatment episode ends",
    "leaves-program": "When the person leaves the referring program",
}
# How a person may revoke (the consent text tells them): any of these, to their worker.
REVOCATION_METHODS = {
    "in-person": "In person, to me",
    "phone": "By phone",
    "in-writing": "In writing",
}
CONSENT_FORM_VERSION = "refnet-part2-consent-2026-11"
CONSENT_PURPOSE = "Referral to recovery support services and follow-up on those referrals"
CONSENT_INFORMATION = (
    "The de-identified need (category, urgency, ZIP code and county, languages, age, recovery "
    "stage and the constraints below) to candidate agencies; then name and contact details to "
    "the one agency that accepts."
)
MAX_CONSENT_YEARS = 3
MAX_AGE_YEARS = 120

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
AgencyId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")]


# One definition of the channels: the person's choice travels on NeedSubmitted as is.
Channel = ContactChannel


FIELD_ERROR_PREFIX = "refnet."


def _field_error(field: str, message: str) -> PydanticCustomError:
    """An error with a message a worker can act on, pinned to ``field`` of the model being
    validated (a model-level rule would otherwise point at the whole section)."""
    return PydanticCustomError(FIELD_ERROR_PREFIX + field, message)


class _Strict(BaseModel):
    # Unknown fields are an error in a request (a typo must not silently drop data).
    model_config = ConfigDict(str_strip_whitespace=True, extra="forbid")


class PersonIn(_Strict):
    legal_given_name: Name
    legal_family_name: Name
    preferred_name: Annotated[str, StringConstraints(max_length=100)] | None = None
    date_of_birth: date
    email: EmailStr | None = None
    phone: str | None = Field(default=None, examples=["503-555-0142"])
    preferred_channel: Channel
    contact_from: time | None = Field(default=None, description="Earliest time to contact.")
    contact_until: time | None = Field(default=None, description="Latest time to contact.")
    languages: list[Literal["en", "es", "vi", "ru", "zh", "so", "ar"]] = Field(min_length=1)
    postal_code: str = Field(pattern=r"^\d{5}(-\d{4})?$", examples=["97214"])
    # A place name only: the county travels to agencies, so it must not carry free text.
    county: Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z .'-]{0,39}$")] | None = None
    gender: Gender | None = Field(
        default=None, description="Asked only to match gender-specific services."
    )

    @field_validator("preferred_name", "email", "phone", "county", "gender", mode="before")
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("phone")
    @classmethod
    def _ten_digits(cls, value: str | None) -> str | None:
        if value is None:
            return None
        digits = "".join(ch for ch in value if ch.isdigit())
        if len(digits) == 11 and digits.startswith("1"):
            digits = digits[1:]
        if len(digits) != 10:
            raise _field_error("phone", "Enter a phone number with 10 digits, like 503-555-0100.")
        return f"{digits[:3]}-{digits[3:6]}-{digits[6:]}"

    @field_validator("languages")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))

    @model_validator(mode="after")
    def _reachable_by_chosen_channel(self) -> Self:
        if self.email is None and self.phone is None:
            raise _field_error("email", "Enter an email address or a phone number.")
        if self.preferred_channel == Channel.EMAIL and self.email is None:
            raise _field_error("email", "Enter an email address, or choose another channel.")
        if self.preferred_channel in (Channel.SMS, Channel.PHONE) and self.phone is None:
            raise _field_error("phone", "Enter a phone number, or choose another channel.")
        if (self.contact_from is None) != (self.contact_until is None):
            raise _field_error("contact_from", "Enter both contact times, or neither.")
        return self

    @property
    def zip5(self) -> str:
        return self.postal_code[:5]


class RecoveryIn(_Strict):
    stage: RecoveryStage
    barc10: list[Annotated[int, Field(ge=1, le=6)]] | None = Field(
        default=None,
        min_length=10,
        max_length=10,
        description="The ten BARC-10 items in order, each rated 1 (strongly disagree) to 6.",
    )

    @property
    def barc10_total(self) -> int | None:
        return sum(self.barc10) if self.barc10 else None


class ConstraintsIn(Constraints):
    # Strict as a request: a misspelt constraint must not silently drop a requirement.
    model_config = ConfigDict(extra="forbid", frozen=True)

    def as_event(self) -> Constraints:
        return Constraints.model_validate(self.model_dump())


class NeedIn(_Strict):
    category: NeedCategory
    urgency: Urgency = Urgency.ROUTINE
    # Stays in intake (encrypted): never published, never shown to agencies.
    note: Annotated[str, StringConstraints(max_length=500)] | None = None


class ConsentIn(_Strict):
    confirmed: bool = Field(
        description="The person has read, or been read, the consent; must be true.",
        json_schema_extra={"const": True},
    )
    recipients: ConsentRecipients = ConsentRecipients.NETWORK
    named_agencies: list[AgencyId] = Field(default_factory=list, max_length=20)
    expires_on: date
    expiry_event: Literal["referrals-closed", "treatment-ends", "leaves-program"] | None = None
    signature: Name = Field(description="The person's full name, typed by them or for them.")
    signed_on: date

    @field_validator("expiry_event", mode="before")
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("confirmed")
    @classmethod
    def _must_confirm(cls, value: bool) -> bool:
        if not value:
            raise _field_error(
                "confirmed", "The person must consent before their needs can be shared."
            )
        return value

    @model_validator(mode="after")
    def _named_means_some(self) -> Self:
        if self.recipients == ConsentRecipients.NAMED and not self.named_agencies:
            raise _field_error("named_agencies", "Name at least one agency, or choose all.")
        if self.recipients == ConsentRecipients.NETWORK and self.named_agencies:
            raise _field_error(
                "named_agencies", "Leave named agencies empty when sharing with every agency."
            )
        return self


class IntakeRequest(_Strict):
    """A complete intake. ``submission_id`` makes a retry safe: the same id always yields the
    same intake, however many times it is sent."""

    submission_id: UUID
    person: PersonIn
    recovery: RecoveryIn
    needs: list[NeedIn] = Field(min_length=1, max_length=20)
    constraints: ConstraintsIn = ConstraintsIn()
    consent: ConsentIn
    reuse_person_id: UUID | None = Field(
        default=None,
        description="A known person with the same name and date of birth, to reuse.",
    )
    new_person: bool = Field(
        default=False, description="Create a new person even if one with this name and DOB exists."
    )

    @property
    def categories(self) -> frozenset[NeedCategory]:
        return frozenset(need.category for need in self.needs)


def check_dates(request: IntakeRequest, today: date) -> dict[str, str]:
    """The rules that depend on today's date, keyed by the dotted field path."""
    errors: dict[str, str] = {}
    dob = request.person.date_of_birth
    if not today.replace(year=today.year - MAX_AGE_YEARS) <= dob < today:
        errors["person.date_of_birth"] = "Enter a date of birth in the past, like 1985-04-23."
    consent = request.consent
    if not today < consent.expires_on <= _years_after(today, MAX_CONSENT_YEARS):
        errors["consent.expires_on"] = "Enter an expiry date after today and at most 3 years ahead."
    if consent.signed_on != today:
        errors["consent.signed_on"] = "The consent is signed today; enter today's date."
    return errors


def age_on(dob: date, today: date) -> int:
    years = today.year - dob.year - ((today.month, today.day) < (dob.month, dob.day))
    return min(years, 90)


def _years_after(day: date, years: int) -> date:
    try:
        return day.replace(year=day.year + years)
    except ValueError:  # 29 February
        return day.replace(year=day.year + years, day=28)


CATEGORY_CHOICES = [(c.value, CATEGORY_LABELS[c]) for c in NeedCategory]
URGENCY_CHOICES = [(u.value, u.value.capitalize()) for u in Urgency]
