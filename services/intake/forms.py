"""The HTML intake form: its flat, dotted field names mapped onto the IntakeRequest model,
and the model's errors mapped back onto those names so each shows beside its field."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date
from typing import Any
from uuid import UUID

from pydantic import ValidationError

from services.intake.models import FIELD_ERROR_PREFIX, IntakeRequest, check_dates

MIN_NEED_ROWS = 3
MAX_NEED_ROWS = 20
CHECKED = "yes"
CONSTRAINT_FLAGS = (
    "has_transportation",
    "needs_child_care",
    "gender_specific_preferred",
    "mat_friendly_required",
)

# What to tell the worker, by the field's own name, instead of the validator's wording.
FIELD_MESSAGES = {
    "submission_id": "The form was damaged. Reload the page and start again.",
    "legal_given_name": "Enter the person's legal first name.",
    "legal_family_name": "Enter the person's legal last name.",
    "preferred_name": "Keep the preferred name under 100 characters.",
    "date_of_birth": "Enter a date of birth in the past, like 1985-04-23.",
    "email": "Enter an email address like name@example.org, or leave it empty.",
    "phone": "Enter a phone number with 10 digits, like 503-555-0100, or leave it empty.",
    "preferred_channel": "Choose how the person wants to be contacted.",
    "contact_from": "Enter a time like 09:00, or leave both contact times empty.",
    "contact_until": "Enter a time like 17:00, or leave both contact times empty.",
    "languages": "Choose at least one language.",
    "postal_code": "Enter a 5-digit ZIP code, like 97214.",
    "county": "Keep the county under 60 characters.",
    "stage": "Choose where the person is in recovery.",
    "barc10": "Rate every BARC-10 statement from 1 to 6, or leave all ten unrated.",
    "needs": "Add at least one need.",
    "category": "Choose a category from the list.",
    "urgency": "Choose routine, soon or urgent.",
    "note": "Keep the note under 500 characters.",
    "insurance": "Choose the person's insurance, or None.",
    "confirmed": "The person must consent before their needs can be shared.",
    "recipients": "Choose who may receive the needs.",
    "named_agencies": "Enter agency ids like ag-004, separated by commas.",
    "expires_on": "Enter an expiry date after today and at most 3 years ahead.",
    "expiry_event": "Choose an event from the list, or none.",
    "signature": "The person signs by typing their full name.",
    "signed_on": "The consent is signed today; enter today's date.",
}


class FormValues:
    """Posted values by field name; a name may repeat (checkbox groups)."""

    def __init__(self, pairs: Iterable[tuple[str, Any]]) -> None:
        self._values: dict[str, list[str]] = {}
        for name, value in pairs:
            if isinstance(value, str):
                self._values.setdefault(name, []).append(value)

    def get(self, name: str, default: str = "") -> str:
        return self.raw(name, default).strip()

    def raw(self, name: str, default: str = "") -> str:
        """As sent, spaces included (a password's spaces are part of it)."""
        values = self._values.get(name)
        return values[0] if values else default

    def all(self, name: str) -> list[str]:
        return self._values.get(name, [])

    def checked(self, name: str) -> bool:
        return self.get(name) == CHECKED

    def need_row_count(self) -> int:
        rows = self.get("need_rows")
        wanted = _small_int(rows, MAX_NEED_ROWS) if rows.isascii() and rows.isdigit() else 0
        return max(MIN_NEED_ROWS, min(wanted, MAX_NEED_ROWS))


def to_request_data(form: FormValues) -> tuple[dict[str, Any], list[int]]:
    """The nested dict IntakeRequest validates, and the form row number of each need kept."""
    need_rows = [i for i in range(form.need_row_count()) if form.get(f"needs.{i}.category")]
    data: dict[str, Any] = {
        "submission_id": form.get("submission_id"),
        "person": {
            **_section(form, "person", PERSON_TEXT_FIELDS),
            "languages": form.all("person.languages"),
        },
        "recovery": {"stage": form.get("recovery.stage"), "barc10": _barc10(form)},
        "needs": [_section(form, f"needs.{i}", ("category", "urgency", "note")) for i in need_rows],
        "constraints": {
            **{flag: form.checked(f"constraints.{flag}") for flag in CONSTRAINT_FLAGS},
            # Unanswered is an error on the form: a guess here would mislead agencies.
            "insurance": form.get("constraints.insurance") or None,
        },
        "consent": {
            **_section(form, "consent", CONSENT_TEXT_FIELDS),
            "confirmed": form.checked("consent.confirmed"),
            "named_agencies": [
                a.strip() for a in form.get("consent.named_agencies").split(",") if a.strip()
            ],
        },
        **_person_choice(form.get("person_match")),
    }
    for row in data["needs"]:
        row["urgency"] = row["urgency"] or "routine"
    return data, need_rows


PERSON_TEXT_FIELDS = (
    "legal_given_name",
    "legal_family_name",
    "preferred_name",
    "date_of_birth",
    "email",
    "phone",
    "preferred_channel",
    "contact_from",
    "contact_until",
    "postal_code",
    "county",
)
CONSENT_TEXT_FIELDS = (
    "recipients",
    "expires_on",
    "expiry_event",
    "signature",
    "signed_on",
)


def _section(form: FormValues, prefix: str, names: Iterable[str]) -> dict[str, Any]:
    # An empty optional field is absent, so the model's default (None) applies.
    return {name: form.get(f"{prefix}.{name}") or None for name in names}


def _barc10(form: FormValues) -> list[str] | None:
    ratings = [form.get(f"recovery.barc10.{i}") for i in range(10)]
    return None if not any(ratings) else ratings


def _person_choice(choice: str) -> dict[str, Any]:
    if choice == "new":
        return {"new_person": True}
    if choice.startswith("reuse:"):
        try:
            return {"reuse_person_id": UUID(choice.removeprefix("reuse:"))}
        except ValueError:
            return {}
    return {}


def parse_intake_form(form: FormValues, today: date) -> tuple[IntakeRequest | None, dict[str, str]]:
    """Return the validated request, or None and {form field name: message}."""
    data, need_rows = to_request_data(form)
    try:
        request = IntakeRequest.model_validate(data)
    except ValidationError as exc:
        return None, errors_by_field(exc, need_rows)
    errors = check_dates(request, today)
    return (None, errors) if errors else (request, {})


def errors_by_field(exc: ValidationError, need_rows: list[int] | None = None) -> dict[str, str]:
    errors: dict[str, str] = {}
    for err in exc.errors():
        path = [str(part) for part in err["loc"]]
        if err["type"].startswith(FIELD_ERROR_PREFIX):
            field = err["type"].removeprefix(FIELD_ERROR_PREFIX)
            if path[-1:] != [field]:  # a model-level rule names its field itself
                path.append(field)
            message = err["msg"]
        else:
            message = _message_for(path, err["msg"])
        errors.setdefault(_form_field(path, need_rows), message)
    return errors


def _message_for(path: list[str], default: str) -> str:
    names = [p for p in path if not p.isdigit()]
    return FIELD_MESSAGES.get(names[-1], default) if names else default


def _form_field(path: list[str], need_rows: list[int] | None) -> str:
    """The form field an error belongs to: need indexes become form row numbers, and a
    BARC-10 error points at the first rating."""
    if path[:1] == ["needs"] and len(path) >= 3 and need_rows is not None:
        path = ["needs", str(need_rows[int(path[1])]), *path[2:]]
    elif path == ["needs"]:
        path = ["needs", "0", "category"]
    elif path == ["recovery", "barc10"]:
        path = ["recovery", "barc10", "0"]
    return ".".join(path)


def submission_of(form: FormValues) -> UUID | None:
    try:
        return UUID(form.get("submission_id"))
    except ValueError:
        return None


def barc10_total(form: FormValues) -> int | None:
    ratings = [form.get(f"recovery.barc10.{i}") for i in range(10)]
    if all(r.isascii() and r.isdigit() for r in ratings):
        return sum(_small_int(r, 99) for r in ratings)
    return None


def _small_int(digits: str, cap: int) -> int:
    """ASCII ``digits`` as a number, at most ``cap``. int() itself refuses a string of more
    than 4300 digits (ValueError), and a posted field can be any length."""
    significant = digits.lstrip("0") or "0"
    return min(int(significant), cap) if len(significant) <= len(str(cap)) else cap


def field_id(name: str) -> str:
    """An HTML id for a dotted field name (dots would need escaping in CSS selectors)."""
    return name.replace(".", "-")
