"""The published event contract, generated from the topic registry and the pydantic models.

``asyncapi_document()`` describes every refnet topic as an AsyncAPI 3.0.0 channel: the
messages it carries (payload JSON Schema, Kafka key, CloudEvents binary-mode headers) and
which party sends and receives them. ``event_json_schemas()`` gives one standalone JSON
Schema (draft 2020-12) per event payload. Nothing here is hand-maintained except who
produces and consumes each topic (``ROLES``), which the topic registry does not record.

``services/contract.py`` writes the documents under ``docs/contract/``; the running services
serve the AsyncAPI document through ``asyncapi_router``.
"""

from __future__ import annotations

import copy
import inspect
import re
from dataclasses import dataclass, replace
from functools import cache
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic.json_schema import (
    GenerateJsonSchema,
    JsonSchemaMode,
    JsonSchemaValue,
    models_json_schema,
)
from pydantic_core import core_schema

from shared import tracing
from shared.cloudevents import CONTENT_TYPE, SPEC_VERSION
from shared.events import (
    Event,
    OfferAccepted,
    OfferDeclined,
    OutcomeReported,
)
from shared.topics import (
    AFTERCARE,
    AGENCIES,
    CAPACITY_UPDATES,
    CO_PARTITIONED,
    CONSENT_EVENTS,
    NEEDS,
    OFFER_RESPONSES,
    PLATFORM_TOPICS,
    REFERRAL_EVENTS,
    TopicSpec,
    agency_offers,
)

ASYNCAPI_VERSION = "3.0.0"
# W3C Trace Context, version 00, lowercase hex (the ids must not be all zeros either).
TRACEPARENT_PATTERN = "^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
KAFKA_BINDING_VERSION = "0.4.0"

# 'validation', not 'serialization': the schema is the gate every record passes on the way in
# (shared/cloudevents.decode runs model_validate; a payload failing it goes to the DLQ), so
# it is exactly what an agency producing to refnet.offer-responses.v1 or
# refnet.capacity-updates.v1 must meet. It also covers everything refnet writes, because
# refnet's own consumers decode refnet's records through that same gate. For these models the
# two modes give the same schema today (defaulted fields are optional in both).
SCHEMA_MODE: JsonSchemaMode = "validation"

# A time of day, with or without a UTC offset (ISO 8601 extended format).
_TIME = r"([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9](\.[0-9]+)?)?(Z|[+-][0-9]{2}:[0-9]{2})?"


class ContractJsonSchema(GenerateJsonSchema):
    """Pydantic's schemas, except for naive times: JSON Schema's "date-time" and "time"
    formats are RFC 3339's, which require a UTC offset, but pydantic writes a naive datetime
    or time without one (a contact window's local hours, an HSDS schedule). Where the model
    allows a naive value the schema gives a pattern instead of the format."""

    def time_schema(self, schema: core_schema.TimeSchema) -> JsonSchemaValue:
        if schema.get("tz_constraint") == "aware":
            return super().time_schema(schema)
        return {"type": "string", "pattern": f"^{_TIME}$"}

    def datetime_schema(self, schema: core_schema.DatetimeSchema) -> JsonSchemaValue:
        if schema.get("tz_constraint") == "aware":
            return super().datetime_schema(schema)
        return {"type": "string", "pattern": f"^[0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}}T{_TIME}$"}


# The per-agency topic as a parameterised address, built by agency_offers() itself.
_AGENCY_PLACEHOLDER = "agency-id-placeholder"
AGENCY_OFFERS_TEMPLATE: TopicSpec = replace(
    agency_offers(_AGENCY_PLACEHOLDER),
    name=agency_offers(_AGENCY_PLACEHOLDER).name.replace(_AGENCY_PLACEHOLDER, "{agency_id}"),
)
# Every topic the contract describes: the platform's, then the agency template.
CONTRACT_TOPICS: tuple[TopicSpec, ...] = (*PLATFORM_TOPICS, AGENCY_OFFERS_TEMPLATE)

# --- who produces and consumes what (the one hand-written part) ---------------------------

PARTIES: dict[str, str] = {
    "intake": "services/intake: the intake workers' app (ce_source /refnet/intake)",
    "matching": "services/matching: the matching worker (ce_source /refnet/matching)",
    "notifications": (
        "services/notifications: the agency HTTP API, one-click link pages and the scheduler "
        "(ce_source /refnet/notifications)"
    ),
    "directory": (
        "the directory's owner: `refnet directory import` and matching's capacity bookkeeping, "
        "published through matching's outbox (ce_source /refnet/directory)"
    ),
    "agency": (
        "an agency's own system, over Kafka (ce_source of its choosing, such as "
        "/agencies/<agency_id>)"
    ),
}


@dataclass(frozen=True)
class Send:
    party: str
    # The events this party sends on the topic; None: every event the topic carries.
    events: tuple[type[Event], ...] | None = None


@dataclass(frozen=True)
class Roles:
    senders: tuple[Send, ...]
    receivers: tuple[str, ...]


_AGENCY_ANSWERS = (OfferAccepted, OfferDeclined, OutcomeReported)
ROLES: dict[str, Roles] = {
    NEEDS.name: Roles((Send("intake"),), ("matching", "notifications")),
    OFFER_RESPONSES.name: Roles(
        (Send("agency", _AGENCY_ANSWERS), Send("notifications")), ("matching",)
    ),
    REFERRAL_EVENTS.name: Roles((Send("matching"),), ("intake", "notifications")),
    CONSENT_EVENTS.name: Roles((Send("intake"),), ("matching", "notifications")),
    AGENCIES.name: Roles((Send("directory"),), ("matching",)),
    # Agencies report capacity through the agency API: their Kafka ACLs allow writing only
    # offer responses (shared/kafka_acls.py).
    CAPACITY_UPDATES.name: Roles((Send("notifications"),), ("matching",)),
    AFTERCARE.name: Roles((Send("notifications"),), ("intake",)),
    AGENCY_OFFERS_TEMPLATE.name: Roles((Send("matching"),), ("agency",)),
}
# Topics whose consumers dead-letter what they cannot process (refnet consumes them).
DLQ_TOPICS: tuple[TopicSpec, ...] = PLATFORM_TOPICS

# --- names ----------------------------------------------------------------------------------

TOMBSTONE_MESSAGE = "AgencyRemoved"
DEAD_LETTER_MESSAGE = "DeadLetter"
HEADERS_SCHEMA = "CloudEventHeaders"
DLQ_HEADERS_SCHEMA = "DeadLetterHeaders"
_REF = "#/components/schemas/{model}"


def channel_id(name: str) -> str:
    """A topic's channel id: its name without the refnet. prefix, dots as dashes."""
    if name == AGENCY_OFFERS_TEMPLATE.name:
        return "agency-offers"
    return re.sub(r"[^A-Za-z0-9_-]+", "-", name.removeprefix("refnet."))


def event_models() -> tuple[type[Event], ...]:
    """Every event payload model a refnet topic carries, in registry order."""
    seen: dict[type[Event], None] = {}
    for spec in CONTRACT_TOPICS:
        seen.update(dict.fromkeys(spec.events))
    return tuple(seen)


def schema_id(cls: type[Event]) -> str:
    return f"urn:refnet:schema:{cls.ce_type}:{cls.schema_version}"


# --- standalone JSON Schemas ------------------------------------------------------------------


def event_json_schema(cls: type[Event]) -> dict[str, Any]:
    schema = cls.model_json_schema(mode=SCHEMA_MODE, schema_generator=ContractJsonSchema)
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "$id": schema_id(cls),
        "$comment": (
            f"Payload of {cls.ce_type} events, schema version {cls.schema_version}. Generated "
            "from shared/events.py by `python -m services.contract`; do not edit."
        ),
        **schema,
        "title": cls.__name__,
    }


def event_json_schemas() -> dict[str, dict[str, Any]]:
    """One JSON Schema per event payload model, by ce_type."""
    return {cls.ce_type: event_json_schema(cls) for cls in event_models()}


# --- the AsyncAPI document ------------------------------------------------------------------


def _headers_schema() -> dict[str, Any]:
    """The context attributes shared/cloudevents.encode writes, as Kafka record headers."""
    sources = ", ".join(f"/refnet/{p}" for p in ("intake", "matching", "notifications"))
    return {
        "type": "object",
        "description": (
            "CloudEvents 1.0, Kafka protocol binding, binary mode: the context attributes "
            "travel as UTF-8 record headers and the record value is the JSON payload. refnet "
            "writes all eight headers; a reader requires the five listed as required, takes "
            "a missing ce_schemaversion as 1 and refuses a version newer than it knows. The "
            "optional W3C traceparent lets one need be followed across services. No header "
            "ever holds an identifier of the person."
        ),
        "properties": {
            "ce_specversion": {"type": "string", "const": SPEC_VERSION},
            "ce_id": {
                "type": "string",
                "minLength": 1,
                "description": "Unique per event and source; consumers deduplicate on "
                "ce_source + ce_id.",
            },
            "ce_source": {
                "type": "string",
                "minLength": 1,
                "description": f"The producer: {sources}, /refnet/directory, or an agency's "
                "own source.",
            },
            "ce_type": {"type": "string", "description": "The event type; names the payload."},
            "ce_time": {
                "type": "string",
                "format": "date-time",
                "description": "RFC 3339 with an offset.",
            },
            "ce_schemaversion": {
                "type": "string",
                "pattern": "^[0-9]+$",
                "description": "Extension attribute: the payload's schema version.",
            },
            "content-type": {"type": "string", "const": CONTENT_TYPE},
            tracing.HEADER: {
                "type": "string",
                "pattern": TRACEPARENT_PATTERN,
                "description": "Optional. W3C Trace Context (version 00): "
                "00-<trace-id>-<parent-id>-<trace-flags>, neither id all zeros. A consumer "
                "continues the trace of the record it handles: what it produces carries the "
                "same trace id with a new parent id. A reader may ignore it; an invalid one "
                "is ignored, never refused.",
            },
        },
        "required": ["ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time"],
    }


def _dlq_headers_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "The original record's headers, unchanged, plus these.",
        "properties": {
            "dlq_reason": {"type": "string", "description": "Why the consumer gave up."},
            "dlq_consumer": {"type": "string", "description": "The consumer (group) that did."},
            "dlq_topic": {"type": "string", "description": "The topic the record came from."},
            "dlq_partition": {"type": "string", "pattern": "^[0-9]+$"},
            "dlq_offset": {"type": "string", "pattern": "^[0-9]+$"},
        },
        "required": ["dlq_reason", "dlq_consumer", "dlq_topic", "dlq_partition", "dlq_offset"],
    }


def _payload_schemas() -> dict[str, Any]:
    """Every payload model and the models and enums inside them, each once."""
    _, top = models_json_schema(
        [(cls, SCHEMA_MODE) for cls in event_models()],
        ref_template=_REF,
        schema_generator=ContractJsonSchema,
    )
    schemas: dict[str, Any] = top["$defs"]
    return schemas


def _key_schema(spec: TopicSpec, payloads: dict[str, Any]) -> dict[str, Any]:
    field = payloads[spec.events[0].__name__]["properties"][spec.key_field]
    key: dict[str, Any] = {
        "type": "string",
        "description": f"The payload's `{spec.key_field}`, UTF-8.",
    }
    key.update({k: field[k] for k in ("format", "pattern") if k in field})
    return key


def _kafka_key(key: dict[str, Any]) -> dict[str, Any]:
    return {"kafka": {"key": key, "bindingVersion": KAFKA_BINDING_VERSION}}


def _doc(cls: type[Any]) -> str | None:
    own = cls.__dict__.get("__doc__")
    return inspect.cleandoc(own) if own else None


def _event_message(cls: type[Event], key: dict[str, Any]) -> dict[str, Any]:
    message: dict[str, Any] = {
        "name": cls.__name__,
        "title": cls.ce_type,
        "contentType": CONTENT_TYPE,
        "headers": {
            "allOf": [
                {"$ref": _REF.format(model=HEADERS_SCHEMA)},
                {
                    "properties": {
                        "ce_type": {"const": cls.ce_type},
                        "ce_schemaversion": {"const": str(cls.schema_version)},
                    }
                },
            ]
        },
        "payload": {"$ref": _REF.format(model=cls.__name__)},
        "bindings": _kafka_key(key),
    }
    if doc := _doc(cls):
        message["description"] = doc
    return message


def _tombstone_message(key: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": TOMBSTONE_MESSAGE,
        "title": "tombstone",
        "description": (
            "A record with a null value and no headers: the agency has left the directory. "
            "Compaction later deletes every record for the key."
        ),
        "payload": {"type": "null"},
        "bindings": _kafka_key(key),
    }


def _dead_letter_message() -> dict[str, Any]:
    return {
        "name": DEAD_LETTER_MESSAGE,
        "title": "dead letter",
        "description": (
            "A record a consumer gave up on (it could not be decoded, or its handler kept "
            "failing), with the original key and value unchanged. The value may be anything, "
            "including not JSON; a null value is written as empty."
        ),
        "contentType": "application/octet-stream",
        "headers": {"$ref": _REF.format(model=DLQ_HEADERS_SCHEMA)},
        "payload": {"description": "The original record's value, byte for byte."},
        "bindings": _kafka_key(
            {"type": ["string", "null"], "description": "The original record's key."}
        ),
    }


def _channel_description(spec: TopicSpec) -> str:
    parts = [f"Keyed by the payload's `{spec.key_field}`."]
    if spec.compacted:
        parts.append(
            "Compacted: the latest record per key is kept, and a tombstone (null value) "
            "deletes the key."
        )
    if spec in CO_PARTITIONED:
        others = ", ".join(f"`{o.name}`" for o in CO_PARTITIONED if o is not spec)
        parts.append(
            f"Co-partitioned with {others}: the same key and partition count, so one "
            "matching worker sees everything about a need."
        )
    if spec in DLQ_TOPICS:
        parts.append(f"Records a consumer cannot process go to `{spec.dlq}`.")
    else:
        parts.append("Read by the agency; refnet does not consume it, so it has no DLQ.")
    return " ".join(parts)


def _ref(*path: str) -> dict[str, str]:
    return {"$ref": "#/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in path)}


def _operation(
    party: str, action: str, channel: str, messages: list[str], summary: str
) -> dict[str, Any]:
    return {
        "action": action,
        "channel": _ref("channels", channel),
        "messages": [_ref("channels", channel, "messages", m) for m in messages],
        "summary": summary,
        "tags": [{"name": party}],
    }


@cache
def _document() -> dict[str, Any]:
    payloads = _payload_schemas()
    schemas = {
        **payloads,
        HEADERS_SCHEMA: _headers_schema(),
        DLQ_HEADERS_SCHEMA: _dlq_headers_schema(),
    }
    messages: dict[str, Any] = {DEAD_LETTER_MESSAGE: _dead_letter_message()}
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}

    for spec in CONTRACT_TOPICS:
        cid = channel_id(spec.name)
        key = _key_schema(spec, payloads)
        names = [cls.__name__ for cls in spec.events]
        for cls in spec.events:
            messages[cls.__name__] = _event_message(cls, key)
        if spec.compacted:
            messages[TOMBSTONE_MESSAGE] = _tombstone_message(key)
            names.append(TOMBSTONE_MESSAGE)
        channel: dict[str, Any] = {
            "address": spec.name,
            "title": spec.name,
            "description": _channel_description(spec),
            "messages": {name: _ref("components", "messages", name) for name in names},
        }
        if spec is AGENCY_OFFERS_TEMPLATE:
            channel["parameters"] = {
                "agency_id": {
                    "description": "The agency's id in the directory: lowercase letters, "
                    "digits and '-'.",
                    "examples": ["ag-001"],
                    "location": "$message.payload#/agency_id",
                }
            }
        else:
            topic_config = {"cleanup.policy": ["compact"]} if spec.compacted else {}
            channel["bindings"] = {
                "kafka": {
                    "topic": spec.name,
                    **({"topicConfiguration": topic_config} if topic_config else {}),
                    "bindingVersion": KAFKA_BINDING_VERSION,
                }
            }
        channels[cid] = channel

        roles = ROLES[spec.name]
        for send in roles.senders:
            sent = [c.__name__ for c in send.events] if send.events is not None else names
            operations[f"{send.party}-sends-{cid}"] = _operation(
                send.party, "send", cid, sent, f"{send.party} publishes {', '.join(sent)}."
            )
        for party in roles.receivers:
            operations[f"{party}-receives-{cid}"] = _operation(
                party, "receive", cid, names, f"{party} consumes {spec.name}."
            )

        if spec in DLQ_TOPICS:
            dlq_id = channel_id(spec.dlq)
            channels[dlq_id] = {
                "address": spec.dlq,
                "title": spec.dlq,
                "description": (
                    f"Dead letters of `{spec.name}`: what its consumers could not process, "
                    "with the reason. For operators; no service consumes it."
                ),
                "messages": {
                    DEAD_LETTER_MESSAGE: _ref("components", "messages", DEAD_LETTER_MESSAGE)
                },
                "bindings": {"kafka": {"topic": spec.dlq, "bindingVersion": KAFKA_BINDING_VERSION}},
            }
            for party in roles.receivers:
                operations[f"{party}-sends-{dlq_id}"] = _operation(
                    party,
                    "send",
                    dlq_id,
                    [DEAD_LETTER_MESSAGE],
                    f"{party} dead-letters what it cannot process from {spec.name}.",
                )

    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "refnet events",
            "version": "1",
            "description": (
                "Every topic of the refnet referral network. Records follow CloudEvents 1.0 "
                "in Kafka binary mode: the value is the JSON payload, the context attributes "
                "are `ce_*` headers. Readers ignore unknown payload fields, and a field is "
                "never removed within a schema version. Operations are tagged with the party "
                "that performs them. Generated from shared/topics.py and the pydantic models "
                "by `python -m services.contract`; do not edit."
            ),
            "tags": [{"name": party, "description": text} for party, text in PARTIES.items()],
        },
        "defaultContentType": CONTENT_TYPE,
        "servers": {
            "production": {
                "host": "{bootstrap_server}",
                "protocol": "kafka",
                "description": (
                    "The network's Kafka cluster (KAFKA_BOOTSTRAP_SERVERS). No schema "
                    "registry: payloads are plain JSON, described by this document."
                ),
                "variables": {
                    "bootstrap_server": {
                        "description": "A broker's host:port.",
                        "default": "127.0.0.1:9092",
                    }
                },
                "bindings": {"kafka": {"bindingVersion": KAFKA_BINDING_VERSION}},
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"schemas": schemas, "messages": messages},
    }


def asyncapi_document() -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document for every refnet topic."""
    return copy.deepcopy(_document())


asyncapi_router = APIRouter()


@asyncapi_router.get("/asyncapi.json", include_in_schema=False)
async def get_asyncapi() -> JSONResponse:
    return JSONResponse(_document())
