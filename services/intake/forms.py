"""The intake form: parsing the posted fields into a validated model, or into errors keyed
by the form field's name so each can be shown beside its field."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from shared.events import CATEGORY_LABELS, NeedCategory, Urgency

NEED_ROWS = 4
LANGUAGES = {
    "en": "English",
    "es": "Spanish",
    "vi": "Vietnamese",
    "ru": "Russian",
    "zh": "Chinese",
    "so": "Somali",
    "ar": "Arabic",
}
CONSENT_PURPOSE = "Referral to recovery support services and follow-up on those referrals"
MAX_CONSENT_YEARS = 3

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]

# What to tell the worker, per field, instead of the validator's generic wording.
FIELD_MESSAGES = {
    "given_name": "Enter the person's first name.",
    "family_name": "Enter the person's last name.",
    "email": "Enter an email address like name@example.org, or leave it empty.",
    "phone": "Enter a phone number with 10 digits, like 503-555-0100, or leave it empty.",
    "postal_code": "Enter a 5-digit ZIP code, like 97214.",
    "preferred_language": "Choose a language from the list.",
    "consent_given": "The person must consent before their needs can be shared with agencies.",
    "consent_expires_on": "Enter an expiry date after today and at most 3 years ahead.",
    "category": "Choose a category from the list.",
    "urgency": "Choose routine, soon or urgent.",
}


class NeedInput(BaseModel):
    category: NeedCategory
    urgency: Urgency


class IntakeForm(BaseModel):
    model_config = ConfigDict(str_strip_whitespace=True)

    given_name: Name
    family_name: Name
    email: EmailStr | None = None
    phone: str | None = None
    street_address: Annotated[str, StringConstraints(max_length=200)] | None = None
    postal_code: str = Field(pattern=r"^\d{5}(-\d{4})?$")
    preferred_language: str
    needs: list[NeedInput] = Field(min_length=1)
    consent_given: bool
    consent_expires_on: date
    today: date = Field(exclude=True)

    @field_validator("email", "phone", "street_address", mode="before")
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
            raise ValueError("a US phone number has 10 digits")
        return f"{digits[:3]}-{digits[3:6]}-{digits[6:]}"

    @field_validator("preferred_language")
    @classmethod
    def _known_language(cls, value: str) -> str:
        if value not in LANGUAGES:
            raise ValueError("unknown language")
        return value

    @field_validator("consent_given")
    @classmethod
    def _consent_required(cls, value: bool) -> bool:
        if not value:
            raise ValueError("consent is required")
        return value

    @model_validator(mode="after")
    def _cross_field_rules(self) -> IntakeForm:
        latest = self.today + timedelta(days=366 * MAX_CONSENT_YEARS)
        if not self.today < self.consent_expires_on <= latest:
            raise _FieldError("consent_expires_on")
        if self.email is None and self.phone is None:
            raise _FieldError("email", "Enter an email address or a phone number.")
        return self

    @property
    def zip5(self) -> str:
        return self.postal_code[:5]

    @property
    def categories(self) -> frozenset[NeedCategory]:
        return frozenset(need.category for need in self.needs)


class _FieldError(ValueError):
    def __init__(self, field: str, message: str | None = None) -> None:
        super().__init__(message or FIELD_MESSAGES[field])
        self.field = field


def need_rows(form: dict[str, str]) -> list[tuple[int, dict[str, str]]]:
    """The need rows the worker filled in: (row number, fields). A row counts when it names a
    category; its urgency defaults to routine."""
    rows = []
    for i in range(NEED_ROWS):
        category = form.get(f"needs-{i}-category", "").strip()
        if category:
            urgency = form.get(f"needs-{i}-urgency") or "routine"
            rows.append((i, {"category": category, "urgency": urgency}))
    return rows


def parse_intake_form(
    form: dict[str, str], today: date
) -> tuple[IntakeForm | None, dict[str, str]]:
    """Return the validated form, or None and {form field name: message}."""
    rows = need_rows(form)
    data = {
        **{k: v for k, v in form.items() if not k.startswith("needs-")},
        "needs": [fields for _, fields in rows],
        "consent_given": form.get("consent_given") == "yes",
        "consent_expires_on": form.get("consent_expires_on") or None,
        "today": today,
    }
    try:
        return IntakeForm.model_validate(data), {}
    except ValidationError as exc:
        return None, _errors_by_field(exc, [i for i, _ in rows])


def _errors_by_field(exc: ValidationError, row_numbers: list[int]) -> dict[str, str]:
    errors: dict[str, str] = {}
    for err in exc.errors():
        loc = err["loc"]
        ctx_error = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_error, _FieldError):
            errors.setdefault(ctx_error.field, str(ctx_error))
        elif loc and loc[0] == "needs" and len(loc) >= 3:
            field = f"needs-{row_numbers[int(loc[1])]}-{loc[2]}"
            errors.setdefault(field, FIELD_MESSAGES[str(loc[2])])
        elif loc and loc[0] == "needs":
            errors.setdefault("needs-0-category", "Add at least one need.")
        elif loc:
            name = str(loc[0])
            errors.setdefault(name, FIELD_MESSAGES.get(name, err["msg"]))
    return errors


CATEGORY_CHOICES = [(c.value, CATEGORY_LABELS[c]) for c in NeedCategory]
URGENCY_CHOICES = [(u.value, u.value.capitalize()) for u in Urgency]
