"""One log format for every service: JSON, one object per line, with time, level, service,
logger and message, plus what the line is about while a record or an event is handled:
need_id, event_id, topic (``log_context``, set by the consume loop and the outbox relay)
and trace_id / span_id (the current span, shared/tracing.py). Exceptions go in
``exception`` as text, inside the same line.

No identifier of a person is ever logged: log ids (need_id, person_ref, consent_id), never
names, dates of birth, addresses or notes.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from types import TracebackType

from shared import tracing

# What a line may be about; set with log_context, or per call with extra={...}.
CONTEXT_FIELDS = ("need_id", "event_id", "topic", "partition", "offset", "consumer", "job_id")

_context: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "refnet_log_context", default=None
)


@contextlib.contextmanager
def log_context(**fields: object) -> Iterator[None]:
    """Every line logged in the block (in this task) carries these fields; None is left out."""
    token = _context.set(
        {**(_context.get() or {}), **{k: str(v) for k, v in fields.items() if v is not None}}
    )
    try:
        yield
    finally:
        _context.reset(token)


def current_fields() -> dict[str, str]:
    """The fields ``log_context`` has set for lines logged here now."""
    return dict(_context.get() or {})


# JSON may hold these raw in a string, but many readers (str.splitlines among them) end a
# line at them: escaped, one record stays one line whatever its message quotes.
_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(_context.get() or {})
        for name in CONTEXT_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                entry[name] = str(value)
        trace = tracing.current()
        if trace is not None:
            entry["trace_id"] = trace.trace_id
            entry["span_id"] = trace.span_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False).translate(_LINE_BREAKS)


def configure_logging(service: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Warnings and uncaught exceptions become log lines too, so the log stays JSON throughout.
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    for noisy in ("aiokafka", "faust", "mode"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, exc, tb)
        return
    logging.getLogger("refnet").critical("uncaught exception", exc_info=(kind, exc, tb))
