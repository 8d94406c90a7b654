"""The local stack's movable clock: a service sees every move of the offset file at once,
though it reads the file only when the file changed."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from shared.clock import OffsetFileClock


def offset_of(clock: OffsetFileClock) -> float:
    return clock._offset()


def test_a_service_sees_each_advance_made_by_another_process_at_once(tmp_path: Path) -> None:
    path = tmp_path / "clock-offset"
    service, test = OffsetFileClock(path), OffsetFileClock(path)
    assert offset_of(service) == 0.0

    stamps = []
    for step in range(1, 6):  # quicker than the filesystem's clock ticks
        test.advance(timedelta(seconds=1))
        assert offset_of(service) == float(step)
        stamps.append(path.stat().st_mtime_ns)
    assert stamps == sorted(set(stamps)), "each advance leaves a later modification time"


def test_advances_unseen_in_between_are_all_seen(tmp_path: Path) -> None:
    path = tmp_path / "clock-offset"
    service, test = OffsetFileClock(path), OffsetFileClock(path)
    test.advance(timedelta(seconds=1))
    assert offset_of(service) == 1.0
    for _ in range(3):  # the middle file's inode number may come back for the last
        test.advance(timedelta(seconds=1))
    assert offset_of(service) == 4.0


def test_a_rewrite_by_hand_and_a_removal_are_seen_too(tmp_path: Path) -> None:
    path = tmp_path / "clock-offset"
    service = OffsetFileClock(path)
    path.write_text("60")
    assert offset_of(service) == 60.0
    path.write_text("3600")
    assert offset_of(service) == 3600.0
    path.unlink()
    assert offset_of(service) == 0.0
    path.write_text("60")
    assert offset_of(service) == 60.0


def test_now_includes_the_offset(tmp_path: Path) -> None:
    path = tmp_path / "clock-offset"
    before = OffsetFileClock(path).now()
    path.write_text(str(timedelta(days=2).total_seconds()))
    assert OffsetFileClock(path).now() - before >= timedelta(days=2)
