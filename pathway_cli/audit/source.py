"""Where the audit's events come from: the canonical Kafka topics, or a JSON Lines export.

Both paths decode through `pathway_schemas.envelope.from_record`, the one decode path of the
system, so an exported file audits exactly as the topics it came from. A record that does not
decode is counted with its reason and left out; it never stops the audit.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from pathway_schemas import topics
from pathway_schemas.envelope import CONTENT_TYPE, InvalidEvent, Received, from_record

#: CloudEvents attributes carried in a JSON Lines export (structured mode, one event a line).
_ATTRIBUTES = ("specversion", "id", "source", "type", "time", "subject", "occurredat", "dataschema")
_TRACE = ("traceparent", "tracestate")


class SourceError(RuntimeError):
    """The events could not be read at all; the message says what to check."""


@dataclass
class EventBatch:
    """Decoded events, and what could not be decoded (reason: count)."""

    events: list[Received] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    remarks: list[str] = field(default_factory=list)
    #: event id -> the topic it was read from (Kafka only)
    origin: dict[str, str] = field(default_factory=dict)

    def notes(self) -> list[str]:
        left_out = [f"{reason}: {n} left out" for reason, n in sorted(self.skipped.items())]
        return [*self.remarks, *left_out]


# --------------------------------------------------------------------------- Kafka


async def _partitions(bootstrap: str, topic_names: tuple[str, ...]) -> dict[str, list[int]]:
    """The partitions of each topic that exists (the consumer API has no public call for it)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000)
    await admin.start()
    try:
        described = await admin.describe_topics(list(topic_names))
    finally:
        await admin.close()
    return {
        t["topic"]: sorted(p["partition"] for p in t["partitions"])
        for t in described
        if t.get("error_code", 0) == 0 and t.get("partitions")
    }


async def read_kafka(
    bootstrap: str,
    topic_names: tuple[str, ...] = topics.CANONICAL,
    *,
    stall_timeout: float = 30.0,
) -> EventBatch:
    """Every record of the topics from the beginning up to their end offsets at the start.

    Partitions are assigned by hand, with no consumer group: reading leaves no group and no
    committed offsets behind, and no rebalance to wait for. Records produced after the end
    offsets were taken are not read, so the read always ends.
    """
    batch = EventBatch()
    try:
        layout = await _partitions(bootstrap, topic_names)
    except Exception as error:
        raise SourceError(
            f"cannot read topics from the Kafka broker at {bootstrap} ({type(error).__name__}): "
            "is `pathway up` running, and is --bootstrap right?"
        ) from None
    partitions = [TopicPartition(name, p) for name in topic_names for p in layout.get(name, ())]
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        request_timeout_ms=30_000,
    )
    await consumer.start()
    try:
        missing = [name for name in topic_names if name not in layout]
        if missing:
            batch.remarks.append(f"topics not on the broker: {', '.join(missing)}")
        if not partitions:
            return batch
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends: dict[TopicPartition, int] = await consumer.end_offsets(partitions)
        pending = {tp for tp in partitions if ends[tp] > 0}
        for tp in list(pending):
            if await consumer.position(tp) >= ends[tp]:
                pending.discard(tp)
        last_progress = time.monotonic()
        while pending:
            fetched = await consumer.getmany(*pending, timeout_ms=500)
            for tp, records in fetched.items():
                for record in records:
                    if record.offset >= ends[tp]:
                        continue
                    last_progress = time.monotonic()
                    try:
                        received = from_record(
                            record.headers, record.value, topic=record.topic, key=record.key
                        )
                    except InvalidEvent as invalid:
                        batch.skipped[f"{record.topic}: {invalid.reason}"] += 1
                        continue
                    batch.events.append(received)
                    batch.origin[received.envelope.id] = record.topic
            for tp in list(pending):
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
            if pending and time.monotonic() - last_progress > stall_timeout:
                raise SourceError(
                    f"reading stalled for {stall_timeout:.0f}s with "
                    f"{len(pending)} partitions short of their end offsets"
                )
    finally:
        await consumer.stop()
    return batch


# --------------------------------------------------------------------------- JSON Lines


def event_to_json(received: Received, topic: str | None = None) -> dict[str, Any]:
    """One event as a CloudEvents structured-mode JSON object (plus the topic it was on)."""
    envelope = received.envelope
    document: dict[str, Any] = {
        "specversion": envelope.specversion,
        "id": envelope.id,
        "source": envelope.source,
        "type": envelope.type,
        "time": envelope.time.isoformat(),
        "subject": envelope.subject,
        "occurredat": envelope.occurredat.isoformat(),
        "datacontenttype": envelope.datacontenttype,
    }
    if envelope.dataschema:
        document["dataschema"] = envelope.dataschema
    for name in _TRACE:
        if envelope.trace.get(name):
            document[name] = envelope.trace[name]
    if topic:
        document["kafkatopic"] = topic
    document["data"] = received.event.model_dump(mode="json")
    return document


def event_from_json(document: Mapping[str, Any]) -> Received:
    """Decode one exported line through the same path as a Kafka record."""
    headers = [
        (f"ce_{name}", str(document[name]).encode())
        for name in _ATTRIBUTES
        if document.get(name) is not None
    ]
    headers += [(name, str(document[name]).encode()) for name in _TRACE if document.get(name)]
    headers.append(("content-type", str(document.get("datacontenttype", CONTENT_TYPE)).encode()))
    data = document.get("data")
    if not isinstance(data, Mapping):
        raise InvalidEvent("no 'data' object")
    topic = document.get("kafkatopic")
    return from_record(
        headers, json.dumps(data).encode(), topic=topic if isinstance(topic, str) else None
    )


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    try:
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    yield number, line
    except FileNotFoundError:
        raise SourceError(f"{path} does not exist: write it with `pathway export-events`") from None
    except (OSError, UnicodeDecodeError) as error:
        raise SourceError(f"{path} could not be read: {error}") from None


def read_jsonl(path: Path) -> EventBatch:
    """Every event of a JSON Lines export (see `event_to_json`)."""
    batch = EventBatch()
    for _, line in _lines(path):
        try:
            document = json.loads(line)
            if not isinstance(document, dict):
                raise InvalidEvent("a line is not a JSON object")
            batch.events.append(event_from_json(document))
        except json.JSONDecodeError:
            batch.skipped["line is not JSON"] += 1
        except InvalidEvent as invalid:
            batch.skipped[invalid.reason] += 1
    return batch
