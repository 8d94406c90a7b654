"""The HTML form and the JSON API validate the same model; these tests pin how the form's
flat field names map onto it and how errors map back onto the fields."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from services.intake.forms import FormValues, parse_intake_form
from services.intake.models import age_on
from services.intake.tracker import stuck_reasons
from shared.events import NeedCategory, Urgency

TODAY = date(2026, 11, 21)
VALID = [
    ("submission_id", "0b7f5a44-4c1e-4c36-9b1c-3f1e2d8c9a10"),
    ("person.legal_given_name", " Ana "),
    ("person.legal_family_name", "Example"),
    ("person.date_of_birth", "1990-02-03"),
    ("person.email", ""),
    ("person.phone", "(503) 555-0100"),
    ("person.preferred_channel", "sms"),
    ("person.languages", "es"),
    ("person.languages", "en"),
    ("person.postal_code", "97214-1234"),
    ("recovery.stage", "in-treatment"),
    ("needs.0.category", "housing"),
    ("needs.0.urgency", "urgent"),
    ("needs.2.category", "clothing"),
    ("needs.2.urgency", ""),
    ("constraints.needs_child_care", "yes"),
    ("constraints.insurance", "medicaid"),
    ("consent.confirmed", "yes"),
    ("consent.recipients", "network"),
    ("consent.expires_on", "2027-06-01"),
    ("consent.signature", "Ana Example"),
    ("consent.signed_on", "2026-11-21"),
]


def form(**changes: str) -> FormValues:
    names = {k.replace("__", ".") for k in changes}
    kept = [(k, v) for k, v in VALID if k not in names]
    return FormValues([*kept, *((k.replace("__", "."), v) for k, v in changes.items())])


def test_a_valid_form_is_normalised() -> None:
    request, errors = parse_intake_form(form(), TODAY)
    assert errors == {}
    assert request is not None
    assert request.person.legal_given_name == "Ana"
    assert request.person.email is None
    assert request.person.phone == "503-555-0100"
    assert request.person.zip5 == "97214"
    assert request.person.languages == ["es", "en"]
    assert [(n.category, n.urgency) for n in request.needs] == [
        (NeedCategory.HOUSING, Urgency.URGENT),
        (NeedCategory.CLOTHING, Urgency.ROUTINE),
    ]
    assert request.constraints.needs_child_care
    assert not request.constraints.has_transportation
    assert request.recovery.barc10 is None


def test_errors_are_keyed_by_the_form_field_that_caused_them() -> None:
    request, errors = parse_intake_form(
        form(
            person__legal_given_name="",
            person__phone="555",
            person__postal_code="9721",
            needs__2__urgency="whenever",
            consent__confirmed="",
        ),
        TODAY,
    )
    assert request is None
    assert set(errors) == {
        "person.legal_given_name",
        "person.phone",
        "person.postal_code",
        "needs.2.urgency",
        "consent.confirmed",
    }
    assert "10 digits" in errors["person.phone"]


def test_the_chosen_channel_needs_its_contact_detail() -> None:
    _, errors = parse_intake_form(form(person__preferred_channel="email"), TODAY)
    assert errors == {"person.email": "Enter an email address, or choose another channel."}


def test_a_partly_rated_barc10_points_at_the_first_missing_rating() -> None:
    ratings = {f"recovery__barc10__{i}": "4" for i in range(10)}
    ratings["recovery__barc10__3"] = ""
    _, errors = parse_intake_form(form(**ratings), TODAY)
    assert list(errors) == ["recovery.barc10.3"]

    ratings["recovery__barc10__3"] = "6"
    request, errors = parse_intake_form(form(**ratings), TODAY)
    assert request is not None and request.recovery.barc10_total == 42


def test_dates_are_checked_against_today() -> None:
    _, errors = parse_intake_form(
        form(
            person__date_of_birth="2030-01-01",
            consent__expires_on="2031-01-01",
            consent__signed_on="2026-11-20",
        ),
        TODAY,
    )
    assert set(errors) == {"person.date_of_birth", "consent.expires_on", "consent.signed_on"}


def test_named_recipients_need_at_least_one_agency() -> None:
    _, errors = parse_intake_form(form(consent__recipients="named"), TODAY)
    assert list(errors) == ["consent.named_agencies"]
    request, errors = parse_intake_form(
        form(consent__recipients="named", consent__named_agencies="ag-004, ag-011"), TODAY
    )
    assert request is not None and request.consent.named_agencies == ["ag-004", "ag-011"]


def test_no_need_at_all_is_an_error_on_the_first_row() -> None:
    changes = {"needs__0__category": "", "needs__2__category": ""}
    _, errors = parse_intake_form(form(**changes), TODAY)
    assert list(errors) == ["needs.0.category"]


def test_ages_above_89_travel_as_90() -> None:
    assert age_on(date(1990, 11, 22), TODAY) == 35
    assert age_on(date(1930, 1, 1), TODAY) == 90


def test_stuck_needs_are_the_ones_a_worker_must_look_at() -> None:
    now = datetime(2026, 11, 21, 12, tzinfo=UTC)
    offered = {
        "status": "offered",
        "offered_at": now - timedelta(hours=13),
        "respond_by": now + timedelta(hours=11),
        "declines": 0,
    }
    assert stuck_reasons(offered, now) == ("offer past half its deadline",)
    assert stuck_reasons({**offered, "offered_at": now - timedelta(hours=1)}, now) == ()
    assert stuck_reasons({**offered, "status": "unmatched"}, now) == ("no agency could take it",)
    twice = {**offered, "status": "declined", "declines": 2}
    assert stuck_reasons(twice, now) == ("declined 2 times",)
