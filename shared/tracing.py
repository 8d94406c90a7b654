"""W3C Trace Context for refnet: one ``traceparent`` follows a need across the services.

    traceparent: 00-<trace-id: 32 hex>-<parent-id: 16 hex>-<flags: 2 hex>

Intake starts a trace for each HTTP request (or continues the request's own
``traceparent``); every event encoded while that request is handled carries a child of it
(same trace id, a new span id) as a Kafka record header, stored with the event in the
outbox. A consumer continues the trace of the record it handles, so the events it produces
carry the same trace id again, and its log lines name it (``trace_id``).

No dependency. If ``OTEL_ENABLED`` is true and opentelemetry-sdk with an OTLP exporter is
importable, the spans are also exported (OTLP, configured by the usual ``OTEL_*``
variables); otherwise nothing is exported.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import os
import re
import secrets
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

HEADER = "traceparent"
SAMPLED = "01"
_HEX = re.compile(r"^[0-9a-f]+$")


@dataclass(frozen=True)
class TraceContext:
    trace_id: str  # 32 lowercase hex digits, not all zero
    span_id: str  # 16 lowercase hex digits, not all zero: this span, the parent of the next
    flags: str = SAMPLED

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"

    def child(self) -> TraceContext:
        """The same trace, a new span."""
        return TraceContext(self.trace_id, _new_id(8), self.flags)


def new_trace() -> TraceContext:
    return TraceContext(_new_id(16), _new_id(8))


def _new_id(n_bytes: int) -> str:
    while True:
        value = secrets.token_hex(n_bytes)
        if value.strip("0"):
            return value


def parse(value: str | bytes | None) -> TraceContext | None:
    """A ``traceparent`` as the W3C spec reads it, or None when it is missing or invalid.
    Version 00 is exactly four fields; a later version may append fields, which are
    ignored; version ff is invalid."""
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    parts = value.strip().split("-")
    if len(parts) < 4:
        return None
    version, trace_id, span_id, flags = parts[:4]
    if not all(_is_hex(p, n) for p, n in ((version, 2), (trace_id, 32), (span_id, 16), (flags, 2))):
        return None
    if version == "ff" or (version == "00" and len(parts) != 4):
        return None
    if not trace_id.strip("0") or not span_id.strip("0"):
        return None
    return TraceContext(trace_id, span_id, flags)


def _is_hex(value: str, length: int) -> bool:
    return len(value) == length and bool(_HEX.match(value))


def from_headers(headers: Iterable[tuple[str, bytes]] | None) -> TraceContext | None:
    for name, raw in headers or ():
        if name == HEADER:
            return parse(raw)
    return None


# --- the current span ---------------------------------------------------------------------

_current: contextvars.ContextVar[TraceContext | None] = contextvars.ContextVar(
    "refnet_trace", default=None
)


def current() -> TraceContext | None:
    return _current.get()


@contextlib.contextmanager
def span(
    name: str, parent: TraceContext | None = None, kind: str = "CONSUMER"
) -> Iterator[TraceContext]:
    """Handle something as a span of ``parent``'s trace (a new trace without one): while
    the block runs, log lines carry its trace id and events encoded in it carry a child."""
    tracer = _otel_tracer()
    if tracer is None:
        ctx = parent.child() if parent else new_trace()
        token = _current.set(ctx)
        try:
            yield ctx
        finally:
            _current.reset(token)
        return
    with _otel_span(tracer, name, parent, kind) as ctx:
        token = _current.set(ctx)
        try:
            yield ctx
        finally:
            _current.reset(token)


def outgoing(name: str = "publish") -> str:
    """The ``traceparent`` for an event produced now: a child of the current span, or the
    start of a new trace when nothing is being traced."""
    parent = current()
    tracer = _otel_tracer()
    if tracer is None:
        return (parent.child() if parent else new_trace()).traceparent
    with _otel_span(tracer, name, parent, kind="PRODUCER") as ctx:
        return ctx.traceparent


# --- HTTP: an ASGI middleware ---------------------------------------------------------------

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class TraceMiddleware:
    """Each HTTP request is a span: of the caller's trace when it sends a valid
    ``traceparent`` header, else of a new trace."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw = dict(scope.get("headers") or ()).get(HEADER.encode())
        with span(f"HTTP {scope.get('method', '')}", parse(raw), kind="SERVER"):
            await self.app(scope, receive, send)


# --- optional OpenTelemetry export ----------------------------------------------------------


@functools.cache
def _otel_tracer() -> Any:
    if os.environ.get("OTEL_ENABLED", "").strip().lower() not in ("1", "true", "yes", "on"):
        return None
    try:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("OTEL_ENABLED is set but opentelemetry-sdk is not installed: no export")
        return None
    exporter = _otlp_exporter()
    if exporter is None:
        log.warning("OTEL_ENABLED is set but no OTLP exporter is installed: no export")
        return None
    provider = TracerProvider()  # service.name from OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider.get_tracer("refnet")


def _otlp_exporter() -> Any:
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                OTLPSpanExporter,
            )
        except ImportError:
            return None
    return OTLPSpanExporter()


@contextlib.contextmanager
def _otel_span(
    tracer: Any, name: str, parent: TraceContext | None, kind: str = "CONSUMER"
) -> Iterator[TraceContext]:
    """An exported span whose ids are the ones refnet passes on."""
    from opentelemetry import trace

    context = None
    if parent is not None:
        remote = trace.SpanContext(
            int(parent.trace_id, 16),
            int(parent.span_id, 16),
            is_remote=True,
            trace_flags=trace.TraceFlags(int(parent.flags, 16)),
        )
        context = trace.set_span_in_context(trace.NonRecordingSpan(remote))
    # An exception's message may quote what the handler was given: it stays out of spans.
    with tracer.start_as_current_span(
        name,
        context=context,
        kind=getattr(trace.SpanKind, kind),
        record_exception=False,
        set_status_on_exception=True,
    ) as otel_span:
        ids = otel_span.get_span_context()
        yield TraceContext(f"{ids.trace_id:032x}", f"{ids.span_id:016x}", f"{ids.trace_flags:02x}")
