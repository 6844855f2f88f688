"""Dump every event of the canonical topics to a JSON Lines file, one CloudEvent a line.

The file can be audited later or elsewhere (`pathway audit --events FILE`) with no broker.
It holds the events as they are, patient details included: treat it like the event log.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

from pathway_cli.audit.source import EventBatch, event_to_json, read_kafka
from pathway_schemas import topics
from pathway_schemas.envelope import Received


def _home_topic(received: Received) -> str | None:
    home = received.event.topic
    return home if home in topics.CANONICAL else None


def write_jsonl(
    events: Iterable[Received], path: Path, origin: Mapping[str, str] | None = None
) -> int:
    """Write events in occurred-at order (then by id); returns how many lines were written."""
    ordered = sorted(events, key=lambda r: (r.event.occurred_at, r.envelope.id))
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", encoding="utf-8") as handle:
        for received in ordered:
            topic = (origin or {}).get(received.envelope.id) or _home_topic(received)
            document = event_to_json(received, topic=topic)
            handle.write(json.dumps(document, separators=(",", ":"), sort_keys=False) + "\n")
    partial.replace(path)  # a reader never sees half a file
    return len(ordered)


async def export_events(
    bootstrap: str, path: Path, topic_names: tuple[str, ...] = topics.CANONICAL
) -> tuple[int, EventBatch]:
    batch = await read_kafka(bootstrap, topic_names)
    return write_jsonl(batch.events, path, batch.origin), batch
