"""CloudEvents 1.0 over Kafka, binary content mode: the one encode/decode path.

Attributes travel as `ce_*` headers, the event's JSON is the record value, the referral id
is the record key, and W3C trace context travels in `traceparent` / `tracestate` headers.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pydantic import ValidationError

from pathway_schemas.base import EVENT_TYPES, PathwayEvent
from pathway_schemas.events import FAMILIES, family_of_topic
from pathway_schemas.values import FieldError

SPECVERSION = "1.0"
CONTENT_TYPE = "application/json"
MAX_RECORD_BYTES = 1_000_000
# Relative URI: the JSON Schema files committed beside the models.
SCHEMA_BASE = "schemas/jsonschema/"

Headers = tuple[tuple[str, bytes], ...]


@dataclass(frozen=True)
class KafkaRecord:
    topic: str
    key: bytes
    value: bytes
    headers: Headers


@dataclass(frozen=True)
class Envelope:
    """The CloudEvents attributes of one record, plus our `occurredat` extension."""

    id: str
    source: str
    type: str
    time: datetime
    subject: str
    occurredat: datetime
    specversion: str = SPECVERSION
    datacontenttype: str = CONTENT_TYPE
    dataschema: str | None = None
    trace: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Received:
    envelope: Envelope
    event: PathwayEvent


class InvalidEvent(ValueError):
    """A record that is not a valid event; `errors` are field-level and never echo values."""

    def __init__(self, reason: str, errors: Iterable[FieldError] = ()) -> None:
        self.reason = reason
        self.errors = tuple(errors)
        detail = "; ".join(f"{e.field}: {e.message}" for e in self.errors)
        super().__init__(f"{reason}: {detail}" if detail else reason)


def new_event_id() -> str:
    return str(uuid.uuid4())


_NAMESPACE = uuid.UUID("6f1c1f7e-4b0e-4a55-9d1f-0c6b7f3f8a21")


def derived_event_id(cause_id: str, *parts: str) -> str:
    """A deterministic id for an event caused by another: replaying the cause re-derives it."""
    return str(uuid.uuid5(_NAMESPACE, "/".join((cause_id, *parts))))


def schema_url(event_type: str) -> str:
    return f"{SCHEMA_BASE}{event_type}.json"


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def to_record(
    event: PathwayEvent,
    *,
    topic: str,
    source: str,
    event_id: str | None = None,
    emitted_at: datetime | None = None,
    trace: Mapping[str, str] | None = None,
) -> KafkaRecord:
    """Encode an event for a topic; refuses an event the topic's family does not carry."""
    family = family_of_topic(topic)
    if type(event) not in FAMILIES[family]:
        raise ValueError(f"{event.event_type} does not belong on topic {topic}")
    headers: list[tuple[str, bytes]] = [
        ("ce_specversion", SPECVERSION.encode()),
        ("ce_id", (event_id or new_event_id()).encode()),
        ("ce_source", source.encode()),
        ("ce_type", event.event_type.encode()),
        ("ce_time", _iso(emitted_at or datetime.now(UTC)).encode()),
        ("ce_subject", event.subject.encode()),
        ("ce_occurredat", _iso(event.occurred_at).encode()),
        ("ce_dataschema", schema_url(event.event_type).encode()),
        ("content-type", CONTENT_TYPE.encode()),
    ]
    for name in ("traceparent", "tracestate"):
        if trace and trace.get(name):
            headers.append((name, trace[name].encode()))
    return KafkaRecord(
        topic=topic,
        key=event.subject.encode(),
        value=event.model_dump_json().encode(),
        headers=tuple(headers),
    )


def _header_map(
    headers: Iterable[tuple[str, bytes | str | None]] | Mapping[str, bytes | str],
) -> dict[str, str]:
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    result: dict[str, str] = {}
    for name, raw in pairs:
        if raw is None:
            continue
        try:
            result[name] = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
        except UnicodeDecodeError:
            raise InvalidEvent(
                "header is not UTF-8", [FieldError(field=f"header:{name}", message="not UTF-8")]
            ) from None
    return result


def _parse_time(value: str | None, name: str) -> datetime:
    if not value:
        raise InvalidEvent(
            "missing CloudEvents attribute",
            [FieldError(field=f"header:{name}", message="required")],
        )
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidEvent(
            "bad timestamp", [FieldError(field=f"header:{name}", message="not an RFC 3339 time")]
        ) from None
    if moment.tzinfo is None:
        raise InvalidEvent(
            "bad timestamp", [FieldError(field=f"header:{name}", message="needs a UTC offset")]
        )
    return moment


def validation_errors(error: ValidationError) -> list[FieldError]:
    """Field-level messages from pydantic, without the offending input."""
    return [
        FieldError(field=".".join(str(p) for p in e["loc"]) or "(body)", message=e["msg"])
        for e in error.errors(include_input=False, include_url=False, include_context=False)
    ]


def from_record(
    headers: Iterable[tuple[str, bytes | str | None]] | Mapping[str, bytes | str],
    value: bytes | None,
    *,
    topic: str | None = None,
    key: bytes | None = None,
) -> Received:
    """Decode and validate one record; raises InvalidEvent saying exactly what is wrong."""
    if value is None:
        raise InvalidEvent("empty record", [FieldError(field="(value)", message="no body")])
    if len(value) > MAX_RECORD_BYTES:
        raise InvalidEvent(
            "record too large",
            [FieldError(field="(value)", message=f"over {MAX_RECORD_BYTES} bytes")],
        )
    attrs = _header_map(headers)
    missing = [
        n
        for n in ("ce_specversion", "ce_id", "ce_source", "ce_type", "ce_subject")
        if not attrs.get(n)
    ]
    if missing:
        raise InvalidEvent(
            "missing CloudEvents attributes",
            [FieldError(field=f"header:{n}", message="required") for n in missing],
        )
    if attrs["ce_specversion"] != SPECVERSION:
        raise InvalidEvent(
            "unsupported specversion",
            [FieldError(field="header:ce_specversion", message="must be 1.0")],
        )
    if len(attrs["ce_id"]) > 128 or len(attrs["ce_source"]) > 256:
        raise InvalidEvent(
            "attribute too long",
            [FieldError(field="header:ce_id", message="at most 128 characters")],
        )
    event_type = attrs["ce_type"]
    model = EVENT_TYPES.get(event_type)
    if model is None:
        raise InvalidEvent(
            "unknown event type", [FieldError(field="header:ce_type", message="not a known type")]
        )
    if topic is not None:
        try:
            allowed = FAMILIES[family_of_topic(topic)]
        except KeyError:
            allowed = ()
        if model not in allowed:
            raise InvalidEvent(
                "event type not allowed on this topic",
                [FieldError(field="header:ce_type", message=f"not carried by {topic}")],
            )
    content_type = attrs.get("content-type", CONTENT_TYPE).split(";")[0].strip()
    if content_type != CONTENT_TYPE:
        raise InvalidEvent(
            "unsupported content type",
            [FieldError(field="header:content-type", message="must be application/json")],
        )
    try:
        payload = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InvalidEvent(
            "body is not JSON", [FieldError(field="(body)", message="not valid JSON")]
        ) from None
    if not isinstance(payload, dict):
        raise InvalidEvent(
            "body is not a JSON object", [FieldError(field="(body)", message="must be an object")]
        )
    try:
        event = model.model_validate(payload)
    except ValidationError as error:
        raise InvalidEvent("invalid event data", validation_errors(error)) from None
    if attrs["ce_subject"] != event.subject:
        raise InvalidEvent(
            "subject does not match the event",
            [FieldError(field="header:ce_subject", message="must equal the referral id")],
        )
    if key is not None and key != event.subject.encode():
        raise InvalidEvent(
            "key does not match the event",
            [FieldError(field="(key)", message="must equal the referral id")],
        )
    envelope = Envelope(
        id=attrs["ce_id"],
        source=attrs["ce_source"],
        type=event_type,
        time=_parse_time(attrs.get("ce_time"), "ce_time"),
        subject=attrs["ce_subject"],
        occurredat=_parse_time(attrs.get("ce_occurredat"), "ce_occurredat"),
        dataschema=attrs.get("ce_dataschema"),
        trace={n: attrs[n] for n in ("traceparent", "tracestate") if n in attrs},
    )
    return Received(envelope=envelope, event=event)
