"""The submission endpoint's memory of tokens found good: it forgets them in time and never
holds more than its bound."""

from __future__ import annotations

from services.intake.auth import RecentTokens


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_token_is_remembered_only_for_its_time() -> None:
    clock = Clock()
    recent = RecentTokens(ttl_s=10, clock=clock)
    recent.put(b"a", {"worker_id": 1})

    clock.now += 10
    assert recent.get(b"a") == {"worker_id": 1}
    clock.now += 0.001
    assert recent.get(b"a") is None
    assert recent.get(b"never seen") is None


def test_it_keeps_at_most_its_size_forgetting_the_oldest_first() -> None:
    recent = RecentTokens(ttl_s=10, size=2, clock=Clock())
    for digest in (b"a", b"b", b"a", b"c"):  # a is found good again: now the newest
        recent.put(digest, {"digest": digest})

    assert [recent.get(d) is not None for d in (b"a", b"b", b"c")] == [True, False, True]
