"""Thousands of hostile records on every topic the five services read.

Every record is refused by every service that reads its topic: dead-lettered once, with
reason `invalid` and a reason text, counted in pathway_dead_letters_total; no handler
crashes (nothing dead-lettered as `failed`), every partition keeps flowing (a valid event
published after the poison is applied, and each group commits to the end), and the
services stay ready. The services run in-process on this test's own broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition
from hypothesis import given, settings
from hypothesis import strategies as st

from pathway_schemas import topics
from pathway_schemas.envelope import InvalidEvent, from_record
from pathway_schemas.events import ReferralRequestAccepted
from services.common.store import PROCESSED
from services.reporting.main import load_providers
from tests.fault.audit import read_topics
from tests.fault.conftest import print_figures
from tests.fault.poison import Poison, corpus, poison, sentinel
from tests.harness import RunningService, running_service

pytestmark = [pytest.mark.integration, pytest.mark.fault]

SERVICES = ("request", "vetting", "scheduling", "reporting", "notify")
PER_TOPIC = 150
Coordinate = tuple[str, int, int]  # topic, partition, offset


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(
        [*topics.CANONICAL, topics.REFERRAL_INTAKE, topics.provider_inbound("RXA01")]
    ).flatmap(poison)
)
def test_the_decoder_refuses_every_hostile_record_with_a_reason_and_never_crashes(
    record: Poison,
) -> None:
    with pytest.raises(InvalidEvent) as refused:
        from_record(record.headers, record.value, topic=record.topic, key=record.key)
    assert refused.value.reason
    assert all(error.field and error.message for error in refused.value.errors)


def _app(name: str, service_settings: Any, tmp_path: Path) -> Any:
    main = importlib.import_module(f"services.{name}.main")
    settings_class = importlib.import_module(f"services.{name}.settings").Settings
    overrides: dict[str, Any] = {}
    if name == "notify":
        overrides["channel_dir"] = tmp_path / "channels"
    return main.create_app(service_settings(settings_class, name, **overrides))


async def _publish(bootstrap: str, records: list[Poison]) -> list[Coordinate]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=4_000_000)
    await producer.start()
    try:
        sent = [
            await producer.send(
                r.topic, r.value, key=r.key, headers=list(r.headers), partition=None
            )
            for r in records
        ]
        placed = await asyncio.gather(*sent)
    finally:
        await producer.stop()
    return [(m.topic, m.partition, m.offset) for m in placed]


async def _publish_to_every_partition(
    bootstrap: str, topic_names: list[str]
) -> dict[Coordinate, Poison]:
    """A valid event on each partition of each topic, after the poison."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    placed: dict[Coordinate, Poison] = {}
    try:
        for topic in topic_names:
            for partition in sorted(await producer.partitions_for(topic)):
                record = sentinel(topic)
                meta = await producer.send_and_wait(
                    topic,
                    record.value,
                    key=record.key,
                    headers=list(record.headers),
                    partition=partition,
                )
                placed[(topic, partition, meta.offset)] = record
    finally:
        await producer.stop()
    return placed


async def _lag(bootstrap: str, group: str, topic_names: list[str]) -> int:
    """Records on these topics the group has not committed yet."""
    # Reads the group's commits without joining it (no subscription).
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = [
            TopicPartition(t, p)
            for t in topic_names
            for p in consumer.partitions_for_topic(t) or ()
        ]
        ends = await consumer.end_offsets(partitions)
        lag = 0
        for tp, end in ends.items():
            lag += max(0, end - (await consumer.committed(tp) or 0))
        return lag
    finally:
        await consumer.stop()


def _dead_letters_counted(service: RunningService) -> Counter[str]:
    counted: Counter[str] = Counter()
    for metric in service.runtime.metrics.dead_letters.collect():
        for sample in metric.samples:
            if sample.name == "pathway_dead_letters_total":
                counted[sample.labels["reason"]] += int(sample.value)
    return counted


async def test_hostile_records_on_every_topic_are_dead_lettered_and_partitions_keep_flowing(
    kafka: str, service_settings: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.monotonic()
    async with contextlib.AsyncExitStack() as stack:
        running: dict[str, RunningService] = dict(
            zip(
                SERVICES,
                await asyncio.gather(
                    *(
                        stack.enter_async_context(
                            running_service(
                                _app(name, service_settings, tmp_path), ready_timeout=90
                            )
                        )
                        for name in SERVICES
                    )
                ),
                strict=True,
            )
        )
        # Provider inbound topics are read by pattern: the configured providers' ones count.
        reporting = running["reporting"].runtime
        providers = load_providers(reporting.config_path(reporting.settings.providers_file))
        candidates = topics.all_topics(providers)
        read_by = {
            name: [t for t in candidates if svc.runtime.consumer.reads(t)]
            for name, svc in running.items()
        }
        every_topic = sorted({t for names in read_by.values() for t in names})

        records = [record for topic in every_topic for record in corpus(topic, PER_TOPIC)]
        poisoned = await _publish(kafka, records)
        sentinels = await _publish_to_every_partition(kafka, every_topic)

        deadline = time.monotonic() + 180
        for name, svc in running.items():
            while (lag := await _lag(kafka, svc.runtime.consumer.group, read_by[name])) > 0:
                assert time.monotonic() < deadline, f"{name} is stuck: {lag} records uncommitted"
                await asyncio.sleep(0.5)
        letters = await read_topics(kafka, [topics.dead_letter(name) for name in SERVICES])
        ready = {
            name: (await svc.client.get("/readyz")).status_code for name, svc in running.items()
        }

        refused: dict[str, Counter[Coordinate]] = defaultdict(Counter)
        reasons: dict[str, Counter[str]] = defaultdict(Counter)
        for letter in letters:
            body = json.loads(letter.value or b"{}")
            service = body["service"]
            refused[service][(body["original_topic"], body["partition"], body["offset"])] += 1
            reasons[service][body["reason"].split(":", 1)[0]] += 1
            assert body["reason"].split(":", 1)[1].strip(), body
            assert body["error_class"] in {"InvalidEvent", "Denied", "Rejected", "Invalid"}, body

        for name, svc in running.items():
            expected = Counter(c for c in poisoned if c[0] in read_by[name])
            poison_refused = Counter({c: n for c, n in refused[name].items() if c not in sentinels})
            assert poison_refused == expected, f"{name}: dead letters do not match the poison"
            assert reasons[name]["invalid"] == len(expected), (name, reasons[name])
            assert reasons[name]["failed"] == 0, f"{name}: a handler crashed"
            assert _dead_letters_counted(svc) == reasons[name], name
            assert ready[name] == 200, f"{name} is not ready after the poison"

        # The valid event after the poison on every partition was applied: on the request
        # service's timeline (a request on the intake topic: answered with its referral), and
        # for a provider event about a referral nobody booked, read and refused as such.
        accepted = {
            json.loads(r.value or b"{}").get("request_id")
            for r in await read_topics(kafka, [topics.REFERRAL_INTAKE_REPLIES])
            if r.header("ce_type") == ReferralRequestAccepted.event_type
        }
        for coordinate, valid in sentinels.items():
            topic = coordinate[0]
            attributes = {k: (v or b"").decode() for k, v in valid.headers}
            for name in SERVICES:
                if topic not in read_by[name]:
                    continue
                db = running[name].runtime.store.db
                if topic == topics.REFERRAL_INTAKE:
                    assert attributes["ce_subject"] in accepted, f"{coordinate} was not answered"
                elif name == "request":
                    # Its timeline is its record of what it applied (no processed marks).
                    on_timeline = {"timeline.event_id": attributes["ce_id"]}
                    done = await db["referrals"].find_one(on_timeline)
                    assert done is not None or refused[name][coordinate] == 1, (name, coordinate)
                elif topics.provider_of_topic(topic):
                    done = await db[PROCESSED].find_one({"_id": attributes["ce_id"]})
                    assert done is not None or refused[name][coordinate] == 1, (name, coordinate)

        print_figures(
            capsys,
            "fault test: poison",
            {
                "hostile records": f"{len(records)} on {len(every_topic)} topics",
                "kinds": dict(Counter(r.kind for r in records)),
                "dead letters": {name: sum(refused[name].values()) for name in SERVICES},
                "valid events after the poison": len(sentinels),
                "seconds": f"{time.monotonic() - started:.0f}",
            },
        )
