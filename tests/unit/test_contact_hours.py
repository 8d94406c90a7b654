"""The person is contacted inside the hours they chose, else outside the quiet hours."""

from __future__ import annotations

from datetime import UTC, datetime, time
from zoneinfo import ZoneInfo

from services.notifications.hours import next_allowed

PORTLAND = ZoneInfo("America/Los_Angeles")


def at(local: str) -> datetime:
    return datetime.fromisoformat(local).replace(tzinfo=PORTLAND).astimezone(UTC)


def test_inside_the_chosen_hours_it_goes_now() -> None:
    now = at("2026-11-23T10:30")
    assert next_allowed(now, PORTLAND, time(9), time(17, 30), 21, 9) == now


def test_before_the_chosen_hours_it_waits_for_their_start() -> None:
    assert next_allowed(at("2026-11-23T07:00"), PORTLAND, time(9), time(17), 21, 9) == at(
        "2026-11-23T09:00"
    )


def test_after_the_chosen_hours_it_waits_for_the_next_day() -> None:
    assert next_allowed(at("2026-11-23T18:00"), PORTLAND, time(9), time(17), 21, 9) == at(
        "2026-11-24T09:00"
    )


def test_hours_over_midnight_are_honoured() -> None:
    night_owl = (time(20), time(2))
    assert next_allowed(at("2026-11-23T23:30"), PORTLAND, *night_owl, 21, 9) == at(
        "2026-11-23T23:30"
    )
    assert next_allowed(at("2026-11-23T03:00"), PORTLAND, *night_owl, 21, 9) == at(
        "2026-11-23T20:00"
    )


def test_without_chosen_hours_quiet_hours_hold_back_a_night_message() -> None:
    assert next_allowed(at("2026-11-23T22:15"), PORTLAND, None, None, 21, 9) == at(
        "2026-11-24T09:00"
    )
    assert next_allowed(at("2026-11-23T12:00"), PORTLAND, None, None, 21, 9) == at(
        "2026-11-23T12:00"
    )


def test_local_time_not_utc_decides() -> None:
    # 17:00 UTC is 09:00 in Portland (PST): the window has just opened there.
    now = datetime(2026, 11, 23, 17, 0, tzinfo=UTC)
    assert next_allowed(now, PORTLAND, time(9), time(10), 21, 9) == now
