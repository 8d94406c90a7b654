"""When the person may be contacted: inside the hours they chose, or outside the network's
quiet hours when they chose none. Local wall-clock time in the network's zone."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo


def next_allowed(
    now: datetime,
    zone: ZoneInfo,
    window_from: time | None,
    window_until: time | None,
    quiet_from_hour: int,
    quiet_until_hour: int,
) -> datetime:
    """``now`` if a message may go now, else the start of the next allowed window (UTC)."""
    if window_from is None or window_until is None:
        window_from, window_until = time(quiet_until_hour), time(quiet_from_hour)
    local = now.astimezone(zone)
    if _inside(local.time(), window_from, window_until):
        return now
    start = datetime.combine(local.date(), window_from, tzinfo=zone)
    if start <= local:
        start = datetime.combine(local.date() + timedelta(days=1), window_from, tzinfo=zone)
    return start.astimezone(UTC)


def _inside(t: time, start: time, end: time) -> bool:
    if start == end:
        return True  # a window of the whole day
    if start < end:
        return start <= t < end
    return t >= start or t < end  # runs over midnight
