"""How the tracker presents a need: time in status and whether it is stuck. Pure functions,
so the rules are tested without a browser."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from shared.events import CATEGORY_LABELS, CheckInAnswer, NeedCategory

STATUS_LABELS = {
    "submitted": "Finding an agency",
    "offered": "Offered",
    "declined": "Declined, asking the next agency",
    "expired": "No answer, asking the next agency",
    "accepted": "Accepted",
    "in_progress": "In progress",
    "on_hold": "On hold",
    "unmatched": "No agency found",
    "completed": "Completed",
    "failed": "Closed without help",
    "cancelled": "Cancelled",
}
# Statuses where the network is still looking for an agency: the page keeps refreshing.
SEARCHING = frozenset({"submitted", "offered", "declined", "expired"})
DECLINES_BEFORE_STUCK = 2


@dataclass(frozen=True)
class NeedView:
    need_id: str
    category: str
    category_label: str
    urgency: str
    status: str
    status_label: str
    agency_id: str | None
    agency_name: str | None
    attempt: int
    in_status: str
    respond_by: datetime | None
    reason: str | None
    excluded: list[dict[str, str]]
    stuck: tuple[str, ...]
    # The person's latest aftercare check-in answer, if any, and how the tracker says it.
    check_in_answer: str | None
    check_in_day: int | None
    check_in: str | None
    asked_for_help: bool  # and no worker has followed it up yet


def need_view(row: Any, now: datetime) -> NeedView:
    status = row["status"]
    return NeedView(
        need_id=str(row["need_id"]),
        category=row["category"],
        category_label=CATEGORY_LABELS[NeedCategory(row["category"])],
        urgency=row["urgency"],
        status=status,
        status_label=STATUS_LABELS.get(status, status),
        agency_id=row["agency_id"],
        agency_name=row["agency_name"],
        attempt=row["attempt"],
        in_status=humanise(now - row["status_at"]),
        respond_by=row["respond_by"],
        reason=row["status_reason"],
        excluded=list(row["excluded"] if isinstance(row["excluded"], list) else []),
        stuck=stuck_reasons(row, now),
        check_in_answer=row.get("check_in_answer"),
        check_in_day=row.get("check_in_day"),
        check_in=check_in_label(row),
        asked_for_help=asked_for_help(row),
    )


def stuck_reasons(row: Any, now: datetime) -> tuple[str, ...]:
    """Why a worker should look at this need now; empty when it is moving on its own."""
    reasons = []
    if row["status"] == "unmatched":
        reasons.append("no agency could take it")
    if row["status"] == "offered" and _past_half_deadline(row, now):
        reasons.append("offer past half its deadline")
    if row["declines"] >= DECLINES_BEFORE_STUCK and row["status"] in SEARCHING:
        reasons.append(f"declined {row['declines']} times")
    if asked_for_help(row):
        reasons.append(f"asked for help at the day-{row['check_in_day']} check-in")
    return tuple(reasons)


def asked_for_help(row: Any) -> bool:
    """The latest check-in answer asks the worker to step in, and nobody has yet."""
    return bool(
        row.get("check_in_answer") == CheckInAnswer.NEED_HELP
        and row.get("check_in_followed_up_at") is None
    )


def check_in_label(row: Any) -> str | None:
    answer, day = row.get("check_in_answer"), row.get("check_in_day")
    if answer == CheckInAnswer.NEED_HELP:
        label = f"Asked for help at the day-{day} check-in"
        followed_up = row.get("check_in_followed_up_at")
        return f"{label}; followed up {followed_up:%Y-%m-%d}" if followed_up else label
    if answer == CheckInAnswer.CONNECTED:
        return f"Connected (day {day} check-in)"
    if answer == CheckInAnswer.STOP:
        return "Stopped aftercare reminders"
    return None


def _past_half_deadline(row: Any, now: datetime) -> bool:
    offered_at, respond_by = row["offered_at"], row["respond_by"]
    if offered_at is None or respond_by is None:
        return False
    return bool(now >= offered_at + (respond_by - offered_at) / 2)


def humanise(elapsed: timedelta) -> str:
    minutes = max(int(elapsed.total_seconds() // 60), 0)
    if minutes < 1:
        return "under a minute"
    if minutes < 60:
        return f"{minutes} min"
    hours = minutes // 60
    if hours < 48:
        return f"{hours} h {minutes % 60} min"
    return f"{hours // 24} days"
