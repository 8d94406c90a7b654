from __future__ import annotations

from datetime import date

from services.intake.forms import parse_intake_form
from shared.events import NeedCategory, Urgency

TODAY = date(2026, 11, 21)
VALID = {
    "given_name": " Ana ",
    "family_name": "Example",
    "email": "",
    "phone": "(503) 555-0100",
    "postal_code": "97214-1234",
    "preferred_language": "es",
    "needs-0-category": "housing",
    "needs-0-urgency": "urgent",
    "needs-2-category": "clothing",
    "needs-2-urgency": "",
    "consent_given": "yes",
    "consent_expires_on": "2027-06-01",
}


def test_a_valid_form_is_normalised() -> None:
    form, errors = parse_intake_form(VALID, TODAY)
    assert errors == {}
    assert form is not None
    assert form.given_name == "Ana"
    assert form.email is None
    assert form.phone == "503-555-0100"
    assert form.zip5 == "97214"
    assert [(n.category, n.urgency) for n in form.needs] == [
        (NeedCategory.HOUSING, Urgency.URGENT),
        (NeedCategory.CLOTHING, Urgency.ROUTINE),
    ]
    assert form.categories == {NeedCategory.HOUSING, NeedCategory.CLOTHING}


def test_errors_are_keyed_by_the_form_field_that_caused_them() -> None:
    bad = {
        **VALID,
        "given_name": "  ",
        "postal_code": "972",
        "needs-2-category": "tarot",
        "phone": "12",
        "consent_given": "",
        "preferred_language": "xx",
    }
    form, errors = parse_intake_form(bad, TODAY)
    assert form is None
    assert set(errors) == {
        "given_name",
        "postal_code",
        "needs-2-category",
        "phone",
        "consent_given",
        "preferred_language",
    }


def test_a_consent_that_has_already_expired_is_refused() -> None:
    _, errors = parse_intake_form({**VALID, "consent_expires_on": "2026-11-21"}, TODAY)
    assert "consent_expires_on" in errors


def test_a_person_must_be_reachable_somehow() -> None:
    _, errors = parse_intake_form({**VALID, "phone": "", "email": ""}, TODAY)
    assert errors == {"email": "Enter an email address or a phone number."}
