from __future__ import annotations

from datetime import UTC, datetime
from uuid import uuid4

import pytest

from shared.cloudevents import MAX_VALUE_BYTES, EventTooLarge, PoisonMessage, decode, encode
from shared.events import (
    ExcludedAgency,
    NeedCategory,
    NeedSubmitted,
    ReferralStatus,
    ReferralStatusChanged,
)
from shared.topics import NEEDS, OFFER_RESPONSES, REFERRAL_EVENTS
from tests.factories import need_submitted

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def a_need() -> NeedSubmitted:
    return need_submitted(NeedCategory.CLOTHING, at=NOW)


def encoded(need: NeedSubmitted) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    headers, value = encode(need, event_id=uuid4(), source="/tests", time=NOW)
    return str(need.need_id).encode(), value, headers


def test_an_encoded_event_decodes_to_the_same_event_with_its_context() -> None:
    need = a_need()
    key, value, headers = encoded(need)
    envelope = decode(NEEDS, key, value, headers)
    assert envelope.event == need
    assert envelope.type == "org.refnet.need.submitted"
    assert envelope.schema_version == 1
    assert envelope.time == NOW
    assert dict(headers)["content-type"] == b"application/json"


def test_readers_tolerate_unknown_fields() -> None:
    need = a_need()
    key, value, headers = encoded(need)
    value = value[:-1] + b',"added_in_a_later_minor":true}'
    assert decode(NEEDS, key, value, headers).event == need


def replace_header(
    headers: list[tuple[str, bytes]], name: str, value: bytes
) -> list[tuple[str, bytes]]:
    return [(k, value if k == name else v) for k, v in headers]


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (lambda k, v, h: (k, b"{oops", h), "not valid JSON"),
        (
            lambda k, v, h: (k, v, replace_header(h, "ce_type", b"org.example.other")),
            "not carried by",
        ),
        (
            lambda k, v, h: (k, v, replace_header(h, "ce_schemaversion", b"2")),
            "newer than this reader",
        ),
        (
            lambda k, v, h: (k, v, replace_header(h, "ce_schemaversion", b"one")),
            "not an integer",
        ),
        (
            lambda k, v, h: (k, v, replace_header(h, "ce_schemaversion", b"0")),
            "not a schema version",
        ),
        (lambda k, v, h: (None, v, h), "has no key"),
        (lambda k, v, h: (b"someone-else", v, h), "does not match"),
        (
            lambda k, v, h: (k, v, [x for x in h if x[0] != "ce_id"]),
            "missing CloudEvents header ce_id",
        ),
        (lambda k, v, h: (k, b'{"need_id": "x"}', h), "failed validation"),
        (lambda k, v, h: (k, b" " * (MAX_VALUE_BYTES + 1), h), "exceeds"),
        (lambda k, v, h: (k, v, replace_header(h, "ce_id", b" ")), "ce_id is empty"),
        (lambda k, v, h: (k, v, replace_header(h, "ce_time", b"2026-11-21")), "RFC 3339"),
        (lambda k, v, h: (k, v, replace_header(h, "ce_time", b"2026-11-21T10:00:00")), "offset"),
    ],
)
def test_a_broken_record_is_poison_with_a_reason(mangle, reason) -> None:  # type: ignore[no-untyped-def]
    key, value, headers = mangle(*encoded(a_need()))
    with pytest.raises(PoisonMessage, match=reason):
        decode(NEEDS, key, value, headers)


def test_an_event_on_the_wrong_topic_is_poison() -> None:
    key, value, headers = encoded(a_need())
    with pytest.raises(PoisonMessage, match="not carried by refnet.offer-responses.v1"):
        decode(OFFER_RESPONSES, key, value, headers)


def unmatched(exclusions: int) -> ReferralStatusChanged:
    return ReferralStatusChanged(
        need_id=uuid4(),
        status=ReferralStatus.UNMATCHED,
        sequence=2,
        occurred_at=NOW,
        reason="no eligible agency left",
        excluded=tuple(
            ExcludedAgency(agency_id=f"ag-{i:05d}", service_id=f"svc-{i:05d}", reason="full")
            for i in range(exclusions)
        ),
    )


def test_a_writer_cannot_make_an_event_larger_than_its_readers_accept() -> None:
    """Readers dead-letter a value over MAX_VALUE_BYTES, so the writer refuses to make one,
    saying which event and how large, instead of every reader finding out on its own."""
    with pytest.raises(EventTooLarge, match=r"ReferralStatusChanged of [\d,]+ bytes is over"):
        encode(unmatched(5_000), event_id=uuid4(), source="/tests", time=NOW)

    largest = unmatched(3_000)
    headers, value = encode(largest, event_id=uuid4(), source="/tests", time=NOW)
    assert MAX_VALUE_BYTES / 2 < len(value) <= MAX_VALUE_BYTES
    assert decode(REFERRAL_EVENTS, str(largest.need_id).encode(), value, headers).event == largest
