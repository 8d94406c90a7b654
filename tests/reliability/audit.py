"""What the reliability run checks, per need, once the stack is quiet: pure functions over what
was read back (the referral events as a consumer reads them, the mail the SMTP sink kept),
so they can be tested on made-up records (test_audit.py).

Words used in the report:

- a *duplicate delivery* is the same thing arriving again: a record with a ce_id already
  read, a mail with a Message-ID already kept. At-least-once allows it; it is counted.
- a *duplicated side effect* is the same thing done twice: two acceptances of one need, two
  events with one sequence number, an offer the plan does not explain, two mails with
  different Message-IDs for one message. None is allowed.
- a need is *lost* if it never reached `accepted`, or a message it should have caused never
  arrived.
- *reordered per key*: an event read after an event of the same need with a higher sequence.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# The referral state machine of docs/architecture.md, as the transitions a reader may see
# between consecutive sequence numbers. offered -> offered only happens for an urgent need
# offered to several agencies at once (URGENT_FANOUT), and is checked separately.
ALLOWED: dict[str | None, frozenset[str]] = {
    None: frozenset({"submitted"}),
    "submitted": frozenset({"offered", "unmatched", "cancelled"}),
    "offered": frozenset({"offered", "accepted", "declined", "expired", "cancelled"}),
    "declined": frozenset({"offered", "unmatched", "cancelled"}),
    "expired": frozenset({"offered", "unmatched", "cancelled"}),
    "accepted": frozenset({"in_progress", "on_hold", "completed", "failed", "cancelled"}),
    "in_progress": frozenset({"on_hold", "completed", "failed", "cancelled"}),
    "on_hold": frozenset({"in_progress", "completed", "failed", "cancelled"}),
}

# Messages counted per need at the SMTP sink.
WORKER_ACCEPTED = "worker-accepted"
WORKER_DECLINED = "worker-declined"
PERSON_ACCEPTED = "person-accepted"


def check_in(day: int) -> str:
    return f"check-in-day-{day}"


@dataclass(frozen=True)
class StatusRecord:
    """One ReferralStatusChanged record as read from refnet.referral-events.v1."""

    need_id: str
    event_id: str
    sequence: int
    status: str
    offer_id: str | None
    partition: int
    offset: int


@dataclass(frozen=True)
class Expectation:
    """What the harness asked for one need, so what must have happened."""

    need_id: str
    person_email: str
    max_offers: int  # offers the plan explains (fan-out, a first offer declined on purpose)
    fanout: bool  # urgent with URGENT_FANOUT > 1: offered -> offered is allowed
    declines: int  # offers the responder declined on purpose
    check_in_days: tuple[int, ...]


@dataclass
class NeedAudit:
    need_id: str
    redeliveries: int = 0  # same ce_id read again
    reordered: int = 0
    duplicated_transitions: int = 0  # a second event with a sequence already taken
    acceptances: int = 0  # distinct `accepted` events
    offers: set[str] = field(default_factory=set)
    final_status: str | None = None
    violations: list[str] = field(default_factory=list)  # of the state machine
    duplicates: list[str] = field(default_factory=list)  # transitions done twice


def audit_referral_events(
    records: Iterable[StatusRecord], expectations: Mapping[str, Expectation]
) -> dict[str, NeedAudit]:
    """Per need, in the order a consumer reads them (partition, then offset: a need's events
    are all on one partition, keyed by need_id)."""
    by_need: dict[str, list[StatusRecord]] = defaultdict(list)
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        by_need[record.need_id].append(record)
    audits = {}
    for need_id in set(by_need) | set(expectations):
        audits[need_id] = _audit_need(need_id, by_need.get(need_id, []), expectations.get(need_id))
    return audits


def _audit_need(
    need_id: str, records: list[StatusRecord], expected: Expectation | None
) -> NeedAudit:
    audit = NeedAudit(need_id)
    if expected is None:
        audit.violations.append("events for a need the harness never submitted")
    seen: set[str] = set()
    by_sequence: dict[int, StatusRecord] = {}
    highest = 0
    for record in records:
        if record.event_id in seen:
            audit.redeliveries += 1
            continue
        seen.add(record.event_id)
        if record.sequence in by_sequence:
            audit.duplicated_transitions += 1
            audit.duplicates.append(
                f"sequence {record.sequence} twice: {by_sequence[record.sequence].status} "
                f"and {record.status} (offsets {by_sequence[record.sequence].offset}, "
                f"{record.offset})"
            )
            continue
        if record.sequence < highest:
            audit.reordered += 1
        highest = max(highest, record.sequence)
        by_sequence[record.sequence] = record
    sequences = sorted(by_sequence)
    if sequences != list(range(1, len(sequences) + 1)):
        audit.violations.append(f"sequences not contiguous from 1: {sequences}")
    previous: str | None = None
    for sequence in sequences:
        record = by_sequence[sequence]
        if record.status not in ALLOWED.get(previous, frozenset()):
            audit.violations.append(f"{previous} -> {record.status} at sequence {sequence}")
        elif previous == record.status == "offered" and not (expected and expected.fanout):
            audit.violations.append(f"offered -> offered at sequence {sequence}, not a fan-out")
        previous = record.status
        if record.status == "offered" and record.offer_id:
            audit.offers.add(record.offer_id)
        if record.status == "accepted":
            audit.acceptances += 1
    audit.final_status = previous
    return audit


# --- mail -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mail:
    message_id: str
    to: str
    subject: str
    body: str


_NEED_REFERENCE = re.compile(r"Need reference: ([0-9a-f-]{36})")
_CHECK_IN_DAY = re.compile(r"It has been (\d+) days? since")


def classify(mail: Mail, need_by_person_email: Mapping[str, str]) -> tuple[str | None, str]:
    """(need id, kind) of a kept mail, from what its reader sees: the worker's mail names the
    need; the person's is theirs (one need per person in this run)."""
    if mail.to in need_by_person_email:
        need_id = need_by_person_email[mail.to]
        if mail.subject.endswith("will contact you"):
            return need_id, PERSON_ACCEPTED
        day = _CHECK_IN_DAY.search(mail.body)
        if mail.subject.startswith("How is it going") and day:
            return need_id, check_in(int(day.group(1)))
        return need_id, f"person: {mail.subject}"
    reference = _NEED_REFERENCE.search(mail.body)
    about = reference.group(1) if reference else None
    if mail.subject.startswith("Referral accepted"):
        return about, WORKER_ACCEPTED
    if mail.subject.startswith("Referral declined"):
        return about, WORKER_DECLINED
    return about, f"worker: {mail.subject.split(':')[0]}"


def expected_mail(expected: Expectation) -> Counter[str]:
    wanted: Counter[str] = Counter({WORKER_ACCEPTED: 1, PERSON_ACCEPTED: 1})
    if expected.declines:
        wanted[WORKER_DECLINED] = expected.declines
    for day in expected.check_in_days:
        wanted[check_in(day)] = 1
    return wanted


@dataclass
class MailAudit:
    expected: int = 0
    delivered: int = 0  # distinct Message-IDs of expected messages
    missing: dict[str, list[str]] = field(default_factory=dict)  # need -> kinds
    duplicated: dict[str, list[str]] = field(default_factory=dict)  # need -> kinds, extra ids
    unexpected: list[str] = field(default_factory=list)
    repeats: Counter[str] = field(default_factory=Counter)  # kind -> same Message-ID again


def audit_mail(
    mails: Iterable[Mail], repeats: Iterable[str], expectations: Mapping[str, Expectation]
) -> MailAudit:
    result = MailAudit()
    need_by_person = {e.person_email: e.need_id for e in expectations.values()}
    ids: dict[tuple[str | None, str], set[str]] = defaultdict(set)
    kind_of_id: dict[str, str] = {}
    for mail in mails:
        need_id, kind = classify(mail, need_by_person)
        ids[(need_id, kind)].add(mail.message_id)
        kind_of_id[mail.message_id] = kind
    for message_id in repeats:
        result.repeats[kind_of_id.get(message_id, "unknown")] += 1
    accounted: set[tuple[str | None, str]] = set()
    for need_id, expected in expectations.items():
        for kind, wanted in expected_mail(expected).items():
            accounted.add((need_id, kind))
            got = len(ids.get((need_id, kind), ()))
            result.expected += wanted
            result.delivered += min(got, wanted)
            if got < wanted:
                result.missing.setdefault(need_id, []).append(kind)
            for _ in range(got - wanted):
                result.duplicated.setdefault(need_id, []).append(kind)
    for (need_id, kind), message_ids in sorted(ids.items(), key=str):
        if (need_id, kind) not in accounted:
            result.unexpected.extend(f"{kind} (need {need_id}) {m}" for m in sorted(message_ids))
    return result


# --- the report ------------------------------------------------------------------------------


@dataclass
class Report:
    needs: int
    rounds: int
    accepted: int = 0
    lost: int = 0
    duplicated_side_effects: int = 0
    duplicate_deliveries: int = 0
    reordered_per_key: int = 0
    state_machine_violations: int = 0
    unexpected_mail: int = 0
    dead_lettered: int = 0
    outbox_unpublished: dict[str, int] = field(default_factory=dict)
    failed_jobs: int = 0
    intake_view_wrong: int = 0
    duplicate_deliveries_by_kind: dict[str, int] = field(default_factory=dict)
    duplicated_side_effects_by_kind: dict[str, int] = field(default_factory=dict)
    mail: dict[str, int] = field(default_factory=dict)
    faults: list[dict[str, Any]] = field(default_factory=list)
    phases_s: dict[str, float] = field(default_factory=dict)
    duration_s: float = 0.0
    problems: list[str] = field(default_factory=list)  # the first few, for the reader
    notes: list[str] = field(default_factory=list)

    @property
    def failures(self) -> list[str]:
        """What the test asserts is zero."""
        checks = {
            "lost": self.lost,
            "duplicated side effects": self.duplicated_side_effects,
            "state machine violations": self.state_machine_violations,
            "unexpected mail": self.unexpected_mail,
            "dead-lettered records": self.dead_lettered,
            "unpublished outbox rows": sum(self.outbox_unpublished.values()),
            "failed jobs": self.failed_jobs,
            "needs intake shows wrongly": self.intake_view_wrong,
        }
        return [f"{name}: {value}" for name, value in checks.items() if value]

    def table(self) -> str:
        columns = [
            ("needs", self.needs),
            ("lost", self.lost),
            ("duplicated side effects", self.duplicated_side_effects),
            ("duplicate deliveries", self.duplicate_deliveries),
            ("reordered per key", self.reordered_per_key),
        ]
        widths = [max(len(name), len(str(value))) for name, value in columns]
        rule = "+-" + "-+-".join("-" * w for w in widths) + "-+"
        header = "| " + " | ".join(n.ljust(w) for (n, _), w in zip(columns, widths, strict=True))
        values = "| " + " | ".join(
            str(v).rjust(w) for (_, v), w in zip(columns, widths, strict=True)
        )
        fault_counts = Counter(f["kind"] for f in self.faults)
        lines = [
            f"refnet reliability: {self.needs} needs, {len(self.faults)} faults "
            f"({self.rounds} round(s)), {self.duration_s:.0f} s",
            rule,
            header + " |",
            rule,
            values + " |",
            rule,
            f"accepted: {self.accepted}/{self.needs}; state machine violations: "
            f"{self.state_machine_violations}; unexpected mail: {self.unexpected_mail}; "
            f"dead-lettered: {self.dead_lettered}; failed jobs: {self.failed_jobs}; "
            f"intake view wrong: {self.intake_view_wrong}",
            "unpublished outbox rows: "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.outbox_unpublished.items())),
            "mail: " + ", ".join(f"{k} {v}" for k, v in self.mail.items()),
            "duplicate deliveries (allowed): "
            + (", ".join(f"{k} {v}" for k, v in self.duplicate_deliveries_by_kind.items()) or "-"),
            "duplicated side effects: "
            + (
                ", ".join(f"{k} {v}" for k, v in self.duplicated_side_effects_by_kind.items())
                or "-"
            ),
            "faults: " + ", ".join(f"{k} x{v}" for k, v in sorted(fault_counts.items())),
            "phases: " + ", ".join(f"{k} {v:.0f} s" for k, v in self.phases_s.items()),
        ]
        lines += [f"note: {n}" for n in self.notes]
        lines += [f"problem: {p}" for p in self.problems[:20]]
        if len(self.problems) > 20:
            lines.append(f"... and {len(self.problems) - 20} more problems in the JSON report")
        return "\n".join(lines)
