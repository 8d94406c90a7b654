"""Time is injected: every timer, deadline and reminder asks a Clock, never datetime.now()."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class ManualClock:
    """A clock that moves only when told to; for unit tests."""

    def __init__(self, start: datetime) -> None:
        self._now = start

    def now(self) -> datetime:
        return self._now

    def advance(self, delta: timedelta) -> None:
        self._now += delta


class OffsetFileClock:
    """Real time plus an offset (seconds) read from a file, so a test can move a running
    service's clock forward without restarting it. Local mode only (see settings)."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def now(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self._offset())

    def _offset(self) -> float:
        try:
            return float(self._path.read_text().strip() or 0)
        except FileNotFoundError:
            return 0.0

    def advance(self, delta: timedelta) -> None:
        tmp = self._path.with_suffix(".tmp")
        tmp.write_text(str(self._offset() + delta.total_seconds()))
        tmp.replace(self._path)


def clock_for(offset_file: Path | None) -> Clock:
    return OffsetFileClock(offset_file) if offset_file else SystemClock()
