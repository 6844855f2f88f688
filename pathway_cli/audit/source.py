"""Where the audit's events come from: the canonical Kafka topics, or a JSON Lines export.

Both paths decode through `pathway_schemas.envelope.from_record`, the one decode path of the
system, so an exported file audits exactly as the topics it came from. A record that does not
decode is counted with its reason and left out; it never stops the audit.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import ConsumerRecord

from pathway_schemas import topics
from pathway_schemas.envelope import CONTENT_TYPE, InvalidEvent, Received, from_record

#: CloudEvents attributes carried in a JSON Lines export (structured mode, one event a line).
_ATTRIBUTES = ("specversion", "id", "source", "type", "time", "subject", "occurredat", "dataschema")
_TRACE = ("traceparent", "tracestate")
#: The reader's fetch wait, and how long a look past the end must bring nothing (several
#: fetch waits, so that every partition is fetched more than once in it).
FETCH_WAIT_MS = 50
QUIET_MS = 250


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


def partition_reader(bootstrap: str) -> AIOKafkaConsumer:
    """A consumer for reading topics by hand: no group, no commits, from the earliest record."""
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        request_timeout_ms=30_000,
        # The embedded broker holds a fetch with nothing to return for the whole wait, and
        # the look past the end (`read_to_end`) needs several fetches inside its quiet time.
        fetch_max_wait_ms=FETCH_WAIT_MS,
    )


class PartitionConsumer(Protocol):
    """What `read_to_end` needs of a consumer (an `AIOKafkaConsumer` with assigned partitions)."""

    async def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]: ...

    def pause(self, *partitions: TopicPartition) -> None: ...

    async def position(self, partition: TopicPartition) -> int: ...

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0
    ) -> Mapping[TopicPartition, Sequence[ConsumerRecord[Any, Any]]]: ...


async def read_to_end(
    consumer: PartitionConsumer,
    partitions: Sequence[TopicPartition],
    take: Callable[[ConsumerRecord[Any, Any]], None],
    *,
    stall_timeout: float = 30.0,
    quiet_ms: int = QUIET_MS,
    settle_timeout: float = 10.0,
) -> list[str]:
    """Hand every record of the (assigned) partitions to `take`, from each one's position on
    to its end; returns remarks for the notes.

    Every record written before the call is read; records written meanwhile may be or not.
    The end offsets the broker reports are not enough: the embedded broker (Tansu) reports
    the base offset of a partition's last batch plus one, so a reader that stops there
    misses the rest of that batch. So a partition is read to its reported end, and then on
    until one of two things shows that nothing written before the read is left:
    - a look past the position brings nothing for `quiet_ms` (several fetches) and a fresh
      end offset is no further, or
    - its end offset has moved since the read began: a later batch was appended, and its
      base offset lies beyond every record written before.
    The second ends the read under a steady stream of writes; the first on an idle broker,
    at the cost of one quiet look (all real Kafka pays for its true end offsets).
    """
    first = await consumer.end_offsets(list(partitions))
    target = dict(first)
    reading = {tp for tp in partitions if first[tp] > 0}
    consumer.pause(*(set(partitions) - reading))
    covered: set[TopicPartition] = set()
    remarks: list[str] = []
    last_progress = time.monotonic()
    looking_since: float | None = None
    while reading:
        positions = {tp: await consumer.position(tp) for tp in reading}
        behind = [tp for tp in reading if positions[tp] < target[tp]]
        if behind:
            if _hand_over(await consumer.getmany(*behind, timeout_ms=500), take):
                last_progress = time.monotonic()
            elif time.monotonic() - last_progress > stall_timeout:
                raise SourceError(
                    f"reading stalled for {stall_timeout:.0f}s with "
                    f"{len(behind)} partitions short of their end offsets"
                )
            continue
        done = reading & covered
        consumer.pause(*done)
        reading -= done
        if not reading:
            break
        now = time.monotonic()
        if looking_since is None:
            looking_since = now
        elif now - looking_since > settle_timeout:
            remarks.append(
                f"records kept arriving on {len(reading)} partitions for {settle_timeout:.0f}s "
                "after the read reached their end offsets; the read stopped there"
            )
            break
        quiet = not _hand_over(await consumer.getmany(*reading, timeout_ms=quiet_ms), take)
        fresh = await consumer.end_offsets(list(reading))
        for tp in reading:
            if fresh[tp] != first[tp] or (quiet and await consumer.position(tp) >= fresh[tp]):
                covered.add(tp)
            target[tp] = max(target[tp], fresh[tp])
        last_progress = time.monotonic()
    return remarks


def _hand_over(
    fetched: Mapping[TopicPartition, Sequence[ConsumerRecord[Any, Any]]],
    take: Callable[[ConsumerRecord[Any, Any]], None],
) -> bool:
    """Give each fetched record to `take`; whether there were any."""
    any_records = False
    for records in fetched.values():
        for record in records:
            any_records = True
            take(record)
    return any_records


async def read_kafka(
    bootstrap: str,
    topic_names: tuple[str, ...] = topics.CANONICAL,
    *,
    stall_timeout: float = 30.0,
) -> EventBatch:
    """Every record of the topics written before the read began (see `read_to_end`).

    Partitions are assigned by hand, with no consumer group: reading leaves no group and no
    committed offsets behind, and no rebalance to wait for.
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

    def take(record: ConsumerRecord[Any, Any]) -> None:
        try:
            received = from_record(record.headers, record.value, topic=record.topic, key=record.key)
        except InvalidEvent as invalid:
            batch.skipped[f"{record.topic}: {invalid.reason}"] += 1
            return
        batch.events.append(received)
        batch.origin[received.envelope.id] = record.topic

    consumer = partition_reader(bootstrap)
    await consumer.start()
    try:
        missing = [name for name in topic_names if name not in layout]
        if missing:
            batch.remarks.append(f"topics not on the broker: {', '.join(missing)}")
        if not partitions:
            return batch
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        batch.remarks += await read_to_end(consumer, partitions, take, stall_timeout=stall_timeout)
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
