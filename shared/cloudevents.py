"""CloudEvents 1.0, Kafka protocol binding, binary mode.

The payload is the record value (JSON); the context attributes travel as ``ce_*`` headers,
plus ``content-type`` and the ``ce_schemaversion`` extension, and the W3C ``traceparent``
(shared/tracing.py) that lets one need be followed across services. No identifying data goes
in headers or keys.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from pydantic import ValidationError

from shared import tracing
from shared.events import Event
from shared.topics import TopicSpec

SPEC_VERSION = "1.0"
CONTENT_TYPE = "application/json"
MAX_VALUE_BYTES = 256 * 1024

Headers = list[tuple[str, bytes]]


class PoisonMessage(Exception):
    """The record can never be processed as it is; it belongs in the DLQ with this reason."""


class EventTooLarge(ValueError):
    """An event larger than every reader accepts (MAX_VALUE_BYTES): refused when it is made,
    where the writer can say what made it so, instead of dead-lettered by each reader."""


@dataclass(frozen=True)
class Envelope:
    id: str
    source: str
    type: str
    time: datetime
    schema_version: int
    event: Event


def encode(
    event: Event,
    *,
    event_id: UUID,
    source: str,
    time: datetime,
    traceparent: str | None = None,
) -> tuple[Headers, bytes]:
    """The headers and value of ``event``. ``traceparent`` defaults to a child of the span
    being handled now (a new trace outside any): W3C Trace Context, not a CloudEvents
    attribute, and optional for readers."""
    headers: Headers = [
        ("ce_specversion", SPEC_VERSION.encode()),
        ("ce_id", str(event_id).encode()),
        ("ce_source", source.encode()),
        ("ce_type", event.ce_type.encode()),
        ("ce_time", time.isoformat().encode()),
        ("ce_schemaversion", str(event.schema_version).encode()),
        ("content-type", CONTENT_TYPE.encode()),
        (tracing.HEADER, (traceparent or tracing.outgoing(f"{event.ce_type} send")).encode()),
    ]
    value = event.model_dump_json().encode()
    if len(value) > MAX_VALUE_BYTES:
        raise EventTooLarge(
            f"{type(event).__name__} of {len(value):,} bytes is over the {MAX_VALUE_BYTES:,} "
            "bytes every reader accepts; no reader could take it"
        )
    return headers, value


def decode(
    spec: TopicSpec,
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes]] | Iterable[tuple[str, bytes]],
) -> Envelope:
    """Validate a record against the topic's contract, or raise PoisonMessage saying why."""
    attrs = _header_map(headers)
    for required in ("ce_id", "ce_source", "ce_type", "ce_time", "ce_specversion"):
        if required not in attrs:
            raise PoisonMessage(f"missing CloudEvents header {required}")
    for non_empty in ("ce_id", "ce_source"):
        if not attrs[non_empty].strip():
            raise PoisonMessage(f"CloudEvents header {non_empty} is empty")
    if attrs["ce_specversion"] != SPEC_VERSION:
        raise PoisonMessage(f"unsupported ce_specversion {attrs['ce_specversion']!r}")
    cls = spec.event_class(attrs["ce_type"])
    if cls is None:
        raise PoisonMessage(f"event type {attrs['ce_type']!r} is not carried by {spec.name}")
    version = _schema_version(attrs.get("ce_schemaversion", "1"), cls)
    event = _payload(cls, value)
    if key is None:
        raise PoisonMessage(f"record has no key; {spec.name} is keyed by {spec.key_field}")
    if key.decode(errors="replace") != spec.key_of(event):
        raise PoisonMessage(f"record key does not match the payload's {spec.key_field}")
    time = _rfc3339(attrs["ce_time"])
    return Envelope(attrs["ce_id"], attrs["ce_source"], cls.ce_type, time, version, event)


def _rfc3339(raw: str) -> datetime:
    try:
        time = datetime.fromisoformat(raw)
    except ValueError:
        time = None
    if time is None or "T" not in raw.upper() or time.tzinfo is None:
        raise PoisonMessage(f"ce_time {raw!r} is not an RFC 3339 timestamp with an offset")
    return time


def _header_map(headers: Iterable[tuple[str, bytes]]) -> dict[str, str]:
    result = {}
    for name, raw in headers or ():
        try:
            result[name] = raw.decode() if raw is not None else ""
        except UnicodeDecodeError:
            raise PoisonMessage(f"header {name} is not UTF-8") from None
    return result


def _schema_version(raw: str, cls: type[Event]) -> int:
    try:
        version = int(raw)
    except ValueError:
        raise PoisonMessage(f"ce_schemaversion {raw!r} is not an integer") from None
    if version < 1:  # versions count from 1; no writer sends 0 or less
        raise PoisonMessage(f"ce_schemaversion {version} is not a schema version (from 1 up)")
    if version > cls.schema_version:
        raise PoisonMessage(
            f"{cls.ce_type} schema version {version} is newer than this reader "
            f"understands ({cls.schema_version})"
        )
    return version


def _payload(cls: type[Event], value: bytes | None) -> Event:
    if value is None:
        raise PoisonMessage("record has no value")
    if len(value) > MAX_VALUE_BYTES:
        raise PoisonMessage(f"value of {len(value)} bytes exceeds {MAX_VALUE_BYTES}")
    try:
        data = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PoisonMessage(f"value is not valid JSON: {exc}") from None
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}" for e in exc.errors()
        )
        raise PoisonMessage(f"{cls.__name__} failed validation: {problems}") from None
