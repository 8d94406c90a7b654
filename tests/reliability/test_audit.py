"""The audit finds what it is there to find: made-up event streams and mailboxes with a
redelivery, a reordering, a duplicated acceptance, a gap, a lost mail."""

from __future__ import annotations

from tests.reliability.audit import (
    PERSON_ACCEPTED,
    WORKER_ACCEPTED,
    Expectation,
    Mail,
    StatusRecord,
    audit_mail,
    audit_referral_events,
    check_in,
)

NEED = "6f1c2f0e-8f8e-4a55-9d0b-0d7c9b1f4e21"
PERSON = "someone@example.net"


def expect(**overrides: object) -> dict[str, Expectation]:
    values = {
        "need_id": NEED,
        "person_email": PERSON,
        "max_offers": 1,
        "fanout": False,
        "declines": 0,
        "check_in_days": (1,),
    }
    values.update(overrides)
    return {NEED: Expectation(**values)}  # type: ignore[arg-type]


def events(*steps: tuple[str, int, str], offer: str = "o1") -> list[StatusRecord]:
    """(event id, sequence, status) in the order read."""
    return [
        StatusRecord(NEED, event_id, sequence, status, offer, 0, offset)
        for offset, (event_id, sequence, status) in enumerate(steps)
    ]


def test_a_clean_history_passes() -> None:
    [audit] = audit_referral_events(
        events(("a", 1, "submitted"), ("b", 2, "offered"), ("c", 3, "accepted")), expect()
    ).values()
    assert (audit.final_status, audit.acceptances, audit.offers) == ("accepted", 1, {"o1"})
    assert not audit.violations and not audit.duplicates
    assert audit.redeliveries == audit.reordered == 0


def test_a_redelivery_is_counted_not_held_against_the_need() -> None:
    [audit] = audit_referral_events(
        events(
            ("a", 1, "submitted"), ("b", 2, "offered"), ("b", 2, "offered"), ("c", 3, "accepted")
        ),
        expect(),
    ).values()
    assert audit.redeliveries == 1
    assert not audit.violations and not audit.duplicates


def test_reordering_gaps_and_duplicated_transitions_are_found() -> None:
    [audit] = audit_referral_events(
        events(
            ("a", 1, "submitted"),
            ("c", 3, "accepted"),
            ("b", 2, "offered"),
            ("d", 3, "accepted"),  # a second acceptance under the same sequence
            ("e", 5, "accepted"),  # a gap, and accepted -> accepted
        ),
        expect(),
    ).values()
    assert audit.reordered == 1
    assert audit.duplicated_transitions == 1
    assert audit.acceptances == 2
    assert any("not contiguous" in v for v in audit.violations)
    assert any("accepted -> accepted" in v for v in audit.violations)


def test_offered_twice_in_a_row_only_for_a_fan_out() -> None:
    history = events(
        ("a", 1, "submitted"), ("b", 2, "offered"), ("c", 3, "offered"), ("d", 4, "accepted")
    )
    [plain] = audit_referral_events(history, expect()).values()
    [fanout] = audit_referral_events(history, expect(fanout=True, max_offers=2)).values()
    assert plain.violations and not fanout.violations


def test_a_need_with_no_events_is_not_accepted() -> None:
    [audit] = audit_referral_events([], expect()).values()
    assert audit.final_status is None and audit.acceptances == 0


def mail(message_id: str, to: str, subject: str, body: str) -> Mail:
    return Mail(f"<{message_id}@refnet.local>", to, subject, body)


def test_mail_missing_duplicated_repeated_and_unexpected() -> None:
    mails = [
        mail("w1", "worker@x", "Referral accepted: Counseling by A", f"Need reference: {NEED}"),
        mail("w2", "worker@x", "Referral accepted: Counseling by A", f"Need reference: {NEED}"),
        mail("p1", PERSON, "A will contact you", "Hello"),
        mail("s1", "worker@x", "Still waiting: Counseling", f"Need reference: {NEED}"),
    ]
    result = audit_mail(mails, ["<p1@refnet.local>"], expect())
    assert result.missing == {NEED: [check_in(1)]}
    assert result.duplicated == {NEED: [WORKER_ACCEPTED]}
    assert result.repeats == {PERSON_ACCEPTED: 1}
    assert len(result.unexpected) == 1 and "Still waiting" in result.unexpected[0]
    assert (result.expected, result.delivered) == (3, 2)


def test_check_ins_are_told_apart_by_day() -> None:
    mails = [
        mail(f"c{d}", PERSON, "How is it going with A?", f"It has been {d} {unit} since")
        for d, unit in ((1, "day"), (7, "days"))
    ]
    result = audit_mail(mails, [], expect(check_in_days=(1, 7)))
    assert result.missing == {NEED: [WORKER_ACCEPTED, PERSON_ACCEPTED]}
    assert not result.duplicated and not result.unexpected
