"""The audit reads every canonical topic of a real (embedded) broker to its end, and stops."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from typer.testing import CliRunner

from pathway_cli.audit.compute import compute_audit
from pathway_cli.audit.export import export_events
from pathway_cli.audit.source import SourceError, read_jsonl, read_kafka
from pathway_cli.main import app
from pathway_schemas import topics
from tests.harness import publish
from tests.unit.audit import scenario as sc


async def test_audit_reads_the_canonical_topics_to_their_end_and_matches_the_scenario(
    kafka: str, tmp_path: Path
) -> None:
    events = sc.scenario_events()
    await publish(kafka, [(event, event.topic) for event in events], source="/tests/audit")
    producer = AIOKafkaProducer(bootstrap_servers=kafka)
    await producer.start()
    try:  # a record that is not an event: counted, left out, and the read goes on
        await producer.send_and_wait(topics.BOOKING, b"{not an event", key=b"junk")
    finally:
        await producer.stop()

    batch = await asyncio.wait_for(read_kafka(kafka), timeout=60)
    assert len(batch.events) == len(events)
    assert dict(batch.skipped) == {f"{topics.BOOKING}: missing CloudEvents attributes": 1}
    assert set(batch.origin.values()) == set(topics.CANONICAL)
    from_kafka = compute_audit(batch.events, until=sc.UNTIL)
    expected = compute_audit(sc.scenario(), until=sc.UNTIL)
    assert from_kafka.tables == expected.tables
    assert from_kafka.waits == expected.waits

    # The export is the same set of events, and audits the same.
    exported = tmp_path / "events.jsonl"
    count, _ = await export_events(kafka, exported)
    assert count == len(events)
    assert compute_audit(read_jsonl(exported).events, until=sc.UNTIL).tables == expected.tables

    # The commands, on the same broker (run in a thread: they start their own event loop).
    runner = CliRunner()
    out = tmp_path / "audit"
    result = await asyncio.to_thread(
        runner.invoke,
        app,
        ["audit", "--bootstrap", kafka, "--until", "2026-04-10T00:00:00Z", "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    document = json.loads((out / "audit.json").read_text())
    assert document["events"]["considered"] == len(events) - 1  # one is after --until
    assert "missing CloudEvents attributes: 1 left out" in result.output
    assert (out / "report.html").read_text().count("<svg") == 5
    again = await asyncio.to_thread(
        runner.invoke,
        app,
        ["export-events", "--bootstrap", kafka, "--out", str(tmp_path / "e2.jsonl")],
    )
    assert again.exit_code == 0, again.output
    assert len((tmp_path / "e2.jsonl").read_text().splitlines()) == len(events)


async def test_an_unreachable_broker_is_a_clear_error() -> None:
    with pytest.raises(SourceError, match="pathway up"):
        await asyncio.wait_for(read_kafka("127.0.0.1:1"), timeout=60)
