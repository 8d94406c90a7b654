"""The submission endpoint's memory of tokens found good: it forgets them in time, holds
them only for the address that presented them, and never holds more than its bound."""

from __future__ import annotations

from services.intake.auth import RecentTokens

HERE = "198.51.100.7"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_token_is_remembered_only_for_its_time() -> None:
    clock = Clock()
    recent = RecentTokens(ttl_s=10, clock=clock)
    recent.put(b"a", HERE, {"worker_id": 1})

    clock.now += 10
    assert recent.get(b"a", HERE) == {"worker_id": 1}
    clock.now += 0.001
    assert recent.get(b"a", HERE) is None
    assert recent.get(b"never seen", HERE) is None


def test_a_token_remembered_for_one_address_is_not_for_another() -> None:
    # Another address goes to the database and the throttle, which may have blocked it.
    recent = RecentTokens(ttl_s=10, clock=Clock())
    recent.put(b"a", HERE, {"worker_id": 1})

    assert recent.get(b"a", "192.0.2.99") is None
    assert recent.get(b"a", HERE) == {"worker_id": 1}


def test_it_keeps_at_most_its_size_forgetting_the_oldest_first() -> None:
    recent = RecentTokens(ttl_s=10, size=2, clock=Clock())
    for digest in (b"a", b"b", b"a", b"c"):  # a is found good again: now the newest
        recent.put(digest, HERE, {"digest": digest})

    assert [recent.get(d, HERE) is not None for d in (b"a", b"b", b"c")] == [True, False, True]


def test_an_address_that_fails_is_forgotten_with_every_token_it_had_found_good() -> None:
    recent = RecentTokens(ttl_s=10, clock=Clock())
    recent.put(b"a", HERE, {"worker_id": 1})
    recent.put(b"b", HERE, {"worker_id": 2})
    recent.put(b"c", "192.0.2.99", {"worker_id": 3})

    recent.forget_address(HERE)

    assert [recent.get(b"a", HERE), recent.get(b"b", HERE)] == [None, None]
    assert recent.get(b"c", "192.0.2.99") == {"worker_id": 3}
