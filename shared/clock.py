"""Time is injected: every timer, deadline and reminder asks a Clock, never datetime.now()."""

from __future__ import annotations

import os
import time
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
    service's clock forward without restarting it. Local mode only (see settings).

    The file is read again only when it changed: a service asks the time several times per
    request, and reading the file each time cost a few percent of its CPU under load."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._seen: tuple[int, int, int] | None = None
        self._offset_s = 0.0

    def now(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self._offset())

    def _offset(self) -> float:
        try:
            found = os.stat(self._path)
        except FileNotFoundError:
            self._seen = None
            return 0.0
        # advance() replaces the file with a later modification time, always.
        version = (found.st_ino, found.st_mtime_ns, found.st_size)
        if version != self._seen:
            self._offset_s = self._read()
            self._seen = version
        return self._offset_s

    def _read(self) -> float:
        try:
            return float(self._path.read_text().strip() or 0)
        except FileNotFoundError:
            return 0.0

    def advance(self, delta: timedelta) -> None:
        tmp = self._path.with_suffix(".tmp")
        tmp.write_text(str(self._offset() + delta.total_seconds()))
        # A later modification time than the file it replaces, even within one tick of the
        # filesystem's clock: readers compare it, and a freed inode number may come back.
        try:
            replaced = os.stat(self._path).st_mtime_ns
        except FileNotFoundError:
            replaced = 0
        stamp = max(time.time_ns(), replaced + 1)
        os.utime(tmp, ns=(stamp, stamp))
        tmp.replace(self._path)


def clock_for(offset_file: Path | None) -> Clock:
    return OffsetFileClock(offset_file) if offset_file else SystemClock()
