"""W3C traceparent: parsing and formatting per the spec, and how the current span flows into
the events encoded while it is handled."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import uuid4

import pytest

from shared import tracing
from shared.cloudevents import decode, encode
from shared.topics import NEEDS
from tests.factories import need_submitted

EXAMPLE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_a_valid_traceparent_parses_and_formats_back() -> None:
    ctx = tracing.parse(EXAMPLE)
    assert ctx == tracing.TraceContext("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", "01")
    assert ctx.traceparent == EXAMPLE
    assert tracing.parse(EXAMPLE.encode()) == ctx


@pytest.mark.parametrize(
    "value",
    [
        "",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",  # three fields
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # uppercase
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # zero parent id
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",  # short trace id
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # forbidden version
        EXAMPLE + "-extra",  # version 00 has exactly four fields
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
    ],
)
def test_an_invalid_traceparent_is_ignored(value: str) -> None:
    assert tracing.parse(value) is None


def test_a_later_version_may_carry_more_fields() -> None:
    ctx = tracing.parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-next")
    assert ctx is not None and ctx.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"


def test_a_child_keeps_the_trace_with_a_new_span() -> None:
    parent = tracing.new_trace()
    child = parent.child()
    assert child.trace_id == parent.trace_id and child.span_id != parent.span_id
    assert tracing.parse(child.traceparent) == child


def test_events_encoded_while_handling_a_record_continue_its_trace() -> None:
    incoming = tracing.parse(EXAMPLE)
    with tracing.span("handling", incoming) as handling:
        assert tracing.current() == handling
        assert handling.trace_id == incoming.trace_id  # type: ignore[union-attr]
        headers, value = encode(
            need_submitted(), event_id=uuid4(), source="/tests", time=datetime.now(UTC)
        )
    assert tracing.current() is None
    sent = tracing.from_headers(headers)
    assert sent is not None
    assert sent.trace_id == incoming.trace_id  # type: ignore[union-attr]
    assert sent.span_id not in (incoming.span_id, handling.span_id)  # type: ignore[union-attr]
    # and a reader that knows nothing of tracing still decodes the record
    need = need_submitted()
    headers, value = encode(need, event_id=uuid4(), source="/tests", time=datetime.now(UTC))
    assert decode(NEEDS, str(need.need_id).encode(), value, headers).event == need


def test_outside_any_span_an_event_starts_its_own_trace() -> None:
    first = tracing.parse(tracing.outgoing())
    second = tracing.parse(tracing.outgoing())
    assert first is not None and second is not None
    assert first.trace_id != second.trace_id


async def test_an_http_request_continues_the_callers_trace_or_starts_one() -> None:
    seen: list[tracing.TraceContext | None] = []

    async def app(scope: object, receive: object, send: object) -> None:
        seen.append(tracing.current())

    middleware = tracing.TraceMiddleware(app)  # type: ignore[arg-type]
    scope = {"type": "http", "method": "POST", "headers": [(b"traceparent", EXAMPLE.encode())]}
    await middleware(scope, None, None)  # type: ignore[arg-type]
    await middleware({"type": "http", "method": "GET", "headers": []}, None, None)  # type: ignore[arg-type]
    continued, started = seen
    assert continued is not None and continued.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert started is not None and started.trace_id != continued.trace_id


def test_otel_enabled_without_the_sdk_exports_nothing_and_still_traces(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("opentelemetry")  # the API alone comes with a dependency
    try:
        import opentelemetry.sdk  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("opentelemetry-sdk is installed here")
    monkeypatch.setenv("OTEL_ENABLED", "true")
    tracing._otel_tracer.cache_clear()
    try:
        with tracing.span("handling", tracing.parse(EXAMPLE)) as ctx:
            assert tracing.parse(tracing.outgoing()).trace_id == ctx.trace_id  # type: ignore[union-attr]
    finally:
        tracing._otel_tracer.cache_clear()
