"""The audit reads every canonical topic of a real (embedded) broker to its end, and stops."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from typer.testing import CliRunner

from pathway_cli.audit.compute import compute_audit
from pathway_cli.audit.export import export_events
from pathway_cli.audit.source import SourceError, read_jsonl, read_kafka
from pathway_cli.main import app
from pathway_cli.simulate import Settler
from pathway_schemas import topics
from pathway_schemas.envelope import KafkaRecord, derived_event_id, to_record
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


def _copies(copy: int) -> list[KafkaRecord]:
    """The scenario's events again, under ids of their own (one copy per producer)."""
    return [
        to_record(
            event,
            topic=event.topic,
            source="/tests/audit",
            event_id=derived_event_id(f"audit-copy-{copy}", str(n)),
            emitted_at=event.occurred_at,
        )
        for n, event in enumerate(sc.scenario_events())
    ]


def _id(record: KafkaRecord) -> str:
    return dict(record.headers)["ce_id"].decode()


async def _send_batched(producer: AIOKafkaProducer, records: list[KafkaRecord]) -> None:
    """Send without waiting for each one, so that the producer packs many into one batch."""
    pending = [
        await producer.send(r.topic, r.value, key=r.key, headers=list(r.headers)) for r in records
    ]
    await asyncio.gather(*pending)


async def _reported_ends(bootstrap: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        partitions = [
            TopicPartition(name, p)
            for name in topics.CANONICAL
            for p in consumer.partitions_for_topic(name) or ()
        ]
        return sum((await consumer.end_offsets(partitions)).values())
    finally:
        await consumer.stop()


async def test_records_batched_by_concurrent_producers_are_all_read_and_exported(
    kafka: str, tmp_path: Path
) -> None:
    copies = [_copies(n) for n in range(4)]
    written = {_id(r) for records in copies for r in records}
    producers = [AIOKafkaProducer(bootstrap_servers=kafka, linger_ms=50) for _ in copies]
    await asyncio.gather(*(p.start() for p in producers))
    try:
        await asyncio.gather(*(_send_batched(p, r) for p, r in zip(producers, copies, strict=True)))
    finally:
        await asyncio.gather(*(p.stop() for p in producers))

    batch = await asyncio.wait_for(read_kafka(kafka), timeout=60)
    assert sorted(r.envelope.id for r in batch.events) == sorted(written)
    assert batch.skipped == {}

    exported = tmp_path / "events.jsonl"
    count, _ = await asyncio.wait_for(export_events(kafka, exported), timeout=60)
    assert count == len(written)
    assert {json.loads(line)["id"] for line in exported.read_text().splitlines()} == written

    # What the broker says is on the topics may fall short of it (the embedded broker counts
    # a batch of records as one); the simulator's tail reads exactly the difference.
    settler = Settler(kafka, (), topics.CANONICAL)
    await settler.start()
    try:
        tail = await asyncio.wait_for(settler.tail(topics.CANONICAL), timeout=60)
    finally:
        await settler.stop()
    assert len(tail) == len(written) - await _reported_ends(kafka)
    assert {received.envelope.id for received, _ in tail} <= written


async def test_a_read_during_continuous_writes_ends_with_everything_written_before_it(
    kafka: str,
) -> None:
    before = _copies(0)
    producer = AIOKafkaProducer(bootstrap_servers=kafka, linger_ms=20)
    await producer.start()
    stop = asyncio.Event()

    async def keep_writing() -> int:
        rounds = 0
        while not stop.is_set():
            rounds += 1
            await _send_batched(producer, _copies(1000 + rounds)[:20])
        return rounds

    try:
        await _send_batched(producer, before)
        writer = asyncio.create_task(keep_writing())
        try:
            batch = await asyncio.wait_for(read_kafka(kafka), timeout=60)
        finally:
            stop.set()
            rounds = await writer
    finally:
        await producer.stop()
    read = {r.envelope.id for r in batch.events}
    assert {_id(r) for r in before} <= read
    assert rounds > 1  # the writer really was writing while the read went on
