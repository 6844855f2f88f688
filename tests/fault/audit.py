"""What a run left behind, checked from the outside: timelines, topics, bookings and orders.

A lost effect is a referral that never reached its final state, or an expected event that
is on no timeline or topic. A duplicated effect is an event applied twice: a second
distinct event of a kind that happens once (the same step under a new id), a timeline
entry twice, one slot held by two referrals, or one referral with two live orders.
Republished records (the same event id again, after a crash between publish and outbox
clean-up) are allowed by the delivery design and only counted.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition
from pymongo import AsyncMongoClient

from pathway_cli.actors import Json
from pathway_cli.simulate import Settler, service_groups
from pathway_cli.stack import SERVICE_NAMES
from pathway_schemas import topics
from services.common.settings import KafkaSettings
from services.common.store import OUTBOX
from services.reporting.main import load_providers
from services.reporting.settings import Settings as ReportingSettings
from tests.fault.load import Journey

V = "uk.nhs.imaging."

# Once each per referral, and nothing else, for the journeys the load drives.
EXPECTED: dict[str, tuple[str, ...]] = {
    "walk_in": (
        "referral.submitted.v1",
        "vetting.accepted.v1",
        "booking.walk_in_authorised.v1",
        "examination.arrived.v1",
        "examination.completed.v1",
        "report.scheduled.v1",
        "report.issued.v1",
        "notification.delivered.v1",
        "notification.acknowledged.v1",
        "notification.patient_notified.v1",
    ),
    "booked": (
        "referral.submitted.v1",
        "vetting.queued.v1",
        "vetting.accepted.v1",
        "booking.offered.v1",
        "booking.booked.v1",
        "examination.arrived.v1",
        "examination.completed.v1",
        "report.scheduled.v1",
        "report.issued.v1",
        "notification.delivered.v1",
        "notification.acknowledged.v1",
        "notification.patient_notified.v1",
    ),
}
# The pathway's order: each step's entry comes after the one before on the timeline.
MILESTONES = (
    "referral.submitted.v1",
    "vetting.accepted.v1",
    ("booking.walk_in_authorised.v1", "booking.booked.v1"),
    "examination.arrived.v1",
    "examination.completed.v1",
    "report.issued.v1",
    "notification.delivered.v1",
    "notification.acknowledged.v1",
)
PROVIDER_ORDERS = (
    V + "provider.order_booked.v1",
    V + "provider.walk_in_authorised.v1",
)


def short(event_type: str) -> str:
    return event_type.removeprefix(V)


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]

    def header(self, name: str) -> str | None:
        for key, raw in self.headers:
            if key == name:
                return raw.decode("utf-8", "replace")
        return None


async def read_topics(bootstrap: str, names: Sequence[str], timeout: float = 60.0) -> list[Record]:
    """Everything on these topics, from the beginning to the end as it is now.

    To the true ends (`Settler.ends`): the embedded broker reports a partition's end at the
    first record of its last batch, so reading to the reported end could leave the rest of
    that batch unread, and a check of the log would miss events that are there.
    """
    ends = await true_ends(bootstrap, names)
    partitions = [tp for tp, end in ends.items() if end > 0]
    if not partitions:
        return []
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        records: list[Record] = []
        deadline = asyncio.get_running_loop().time() + timeout
        while await _behind(consumer, ends):
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"could not read {names} to the end within {timeout}s")
            batch = await consumer.getmany(timeout_ms=200)
            for got in batch.values():
                records += [
                    Record(r.topic, r.partition, r.offset, r.key, r.value, tuple(r.headers))
                    for r in got
                ]
        return records
    finally:
        await consumer.stop()


async def true_ends(bootstrap: str, names: Sequence[str]) -> dict[TopicPartition, int]:
    """Each partition's end, past every record written before the call (`Settler.ends`)."""
    settler = Settler(bootstrap, (), names)
    await settler.start()
    try:
        return await settler.ends()
    finally:
        await settler.stop()


def since(before: Sequence[Record], after: Sequence[Record]) -> list[Record]:
    """The records of `after` that were not there in `before`."""
    seen = {(r.topic, r.partition, r.offset) for r in before}
    return [r for r in after if (r.topic, r.partition, r.offset) not in seen]


async def _behind(consumer: Any, ends: dict[TopicPartition, int]) -> bool:
    for tp, end in ends.items():
        if end > 0 and await consumer.position(tp) < end:
            return True
    return False


@dataclass
class Findings:
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    out_of_order: list[str] = field(default_factory=list)
    republished: int = 0
    records: int = 0


def audit(
    journeys: Iterable[Journey],
    referrals: dict[str, Json],
    canonical: Sequence[Record],
    bookings: dict[str, Json],
    orders: Sequence[Record],
) -> Findings:
    """Check every journey's referral against the topics, the bookings and the orders."""
    found = Findings(records=len(canonical))
    by_id: dict[str, list[Record]] = defaultdict(list)
    for record in canonical:
        event_id = record.header("ce_id")
        if event_id:
            by_id[event_id].append(record)
    per_referral: dict[str, dict[str, str]] = defaultdict(dict)  # referral → event id → type
    for event_id, copies in by_id.items():
        found.republished += len(copies) - 1
        first = copies[0]
        if any((c.value, c.key, c.topic) != (first.value, first.key, first.topic) for c in copies):
            found.duplicated.append(f"event {event_id} was published twice with different content")
        subject = first.header("ce_subject") or ""
        per_referral[subject][event_id] = first.header("ce_type") or ""

    slots: dict[str, list[str]] = defaultdict(list)
    for journey in journeys:
        rid = journey.referral_id
        if not rid:
            found.lost.append(f"a {journey.kind} referral was never accepted: {journey.error}")
            continue
        referral = referrals.get(rid)
        if referral is None:
            found.lost.append(f"{rid}: the request service does not know it")
            continue
        _check_journey(found, journey, referral, per_referral.get(rid, {}))
        booking = bookings.get(rid)
        if journey.kind == "booked" and booking is not None and booking.get("appointment"):
            slots[booking["appointment"]["slot_id"]].append(rid)

    for slot_id, holders in slots.items():
        if len(holders) > 1:
            found.duplicated.append(f"slot {slot_id} is booked for {len(holders)} referrals")
    _check_orders(found, {j.referral_id for j in journeys}, orders)
    return found


def _check_journey(
    found: Findings, journey: Journey, referral: Json, on_topics: dict[str, str]
) -> None:
    rid = journey.referral_id
    if referral["state"] != "acknowledged":
        found.lost.append(f"{rid} ({journey.kind}) ended {referral['state']}: {journey.error}")
    timeline = referral["timeline"]
    ids = [entry["event_id"] for entry in timeline]
    for event_id, count in Counter(ids).items():
        if count > 1:
            found.duplicated.append(f"{rid}: event {event_id} is on the timeline {count} times")
    types = [short(entry["event_type"]) for entry in timeline]
    expected = EXPECTED[journey.kind]
    counts = Counter(types)
    for event_type in expected:
        if counts[event_type] == 0:
            found.lost.append(f"{rid}: no {event_type} on the timeline")
    for event_type, count in counts.items():
        if count > 1 or event_type not in expected:
            found.duplicated.append(f"{rid}: {event_type} x{count} on the timeline ({types})")
    # The timeline and the topics hold the same events: none applied that was not published,
    # none published that the timeline lost.
    missing = set(on_topics) - set(ids)
    unknown = set(ids) - set(on_topics)
    if missing:
        found.lost.append(
            f"{rid}: on the topics, not on the timeline: {sorted(short(on_topics[i]) for i in missing)}"
        )
    if unknown:
        found.lost.append(f"{rid}: on the timeline, on no topic: {len(unknown)} events")
    topic_counts = Counter(short(t) for t in on_topics.values())
    for event_type, count in topic_counts.items():
        if count > 1:
            found.duplicated.append(f"{rid}: {count} distinct {event_type} events on its topic")
    positions = []
    for step in MILESTONES:
        names = step if isinstance(step, tuple) else (step,)
        at = [i for i, t in enumerate(types) if t in names]
        if at:
            positions.append((at[0], names[0]))
    if [p for p, _ in positions] != sorted(p for p, _ in positions):
        found.out_of_order.append(f"{rid}: milestones out of order: {types}")


def _check_orders(found: Findings, referral_ids: set[str], orders: Sequence[Record]) -> None:
    """At each provider: one order per referral, and no slot held by two live orders."""
    orders_of: dict[str, set[str]] = defaultdict(set)
    live: dict[str, str] = {}  # referral → slot held by its live order
    for record in orders:
        subject = record.header("ce_subject") or ""
        event_type = record.header("ce_type") or ""
        event_id = record.header("ce_id") or ""
        if subject not in referral_ids:
            continue
        if event_type in PROVIDER_ORDERS:
            orders_of[subject].add(event_id)
        if event_type in (V + "provider.order_booked.v1", V + "provider.order_rebooked.v1"):
            live[subject] = json.loads(record.value or b"{}")["appointment"]["slot_id"]
        elif event_type == V + "provider.order_cancelled.v1":
            live.pop(subject, None)
    for rid, ids in orders_of.items():
        if len(ids) > 1:
            found.duplicated.append(f"{rid}: {len(ids)} distinct orders sent to its provider")
    holders = Counter(live.values())
    for slot_id, count in holders.items():
        if count > 1:
            found.duplicated.append(f"slot {slot_id}: {count} live provider orders")


def provider_topics(codes: Iterable[str]) -> list[str]:
    return [topics.provider_outbound(code) for code in codes]


async def republish(bootstrap: str, records: list[Record]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        for record in records:
            await producer.send(
                record.topic,
                record.value,
                key=record.key,
                headers=list(record.headers),
                partition=record.partition,
            )
        await producer.flush()
    finally:
        await producer.stop()


def dead_letter_summary(record: Record) -> str:
    """Who dead-lettered what and why (the letter's own fields: no patient data)."""
    try:
        letter = json.loads(record.value or b"{}")
    except ValueError:
        return f"{record.topic}: unreadable"
    return (
        f"{letter.get('service')} {letter.get('original_topic')} "
        f"{short(str(letter.get('event_type')))} {(record.key or b'').decode()} "
        f"{letter.get('error_class')}: {letter.get('reason')}"
    )


# ---------------------------------------------------------------------- consumer groups


@functools.cache
def subscriptions() -> dict[str, tuple[tuple[str, ...], frozenset[str]]]:
    """Each service's topics and the event types it handles, from its own composition root.

    Provider inbound topics are read by pattern: those of the configured providers count.
    """
    found = {}
    for name in SERVICE_NAMES:
        main = importlib.import_module(f"services.{name}.main")
        settings = importlib.import_module(f"services.{name}.settings").Settings(
            kafka=KafkaSettings(bootstrap_servers="127.0.0.1:1")
        )
        consumer = main.create_app(settings).state.runtime.consumer
        candidates = topics.all_topics(configured_providers())
        names = tuple(t for t in candidates if consumer.reads(t))
        found[name] = (names, frozenset(consumer.handlers))
    return found


def configured_providers() -> tuple[str, ...]:
    settings = ReportingSettings()
    return load_providers(settings.config_dir / settings.providers_file)


async def committed_offsets(
    bootstrap: str, group: str, topic_names: Iterable[str]
) -> dict[TopicPartition, tuple[int, int]]:
    """(committed, true end) per partition, read without joining the group."""
    ends = await true_ends(bootstrap, list(topic_names))
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        return {tp: (await consumer.committed(tp) or 0, end) for tp, end in ends.items()}
    finally:
        await consumer.stop()


async def quiet(bootstrap: str, mongo_url: str, timeout: float = 120.0) -> None:
    """Wait until every service has handled every record it reads and published its outbox.

    All groups at once, against the true ends (`Settler.settle`): a group found caught up
    can fall behind again while another group works, and the reported ends of the embedded
    broker can stop short of records a republished burst packed into one batch.
    """
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url, tz_aware=True)
    groups = service_groups(await _broker_topics(bootstrap))
    watched = sorted({name for names in groups.values() for name in names})
    settler = Settler(bootstrap, tuple(groups), watched, reads=groups)

    async def outboxes_published() -> bool:
        for name in SERVICE_NAMES:
            if await client[f"imaging_{name}"][OUTBOX].count_documents({}):
                return False
        return True

    try:
        await settler.start()
        await settler.settle(timeout=timeout, also=outboxes_published)
    finally:
        await settler.stop()
        await client.close()


async def _broker_topics(bootstrap: str) -> list[str]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        return sorted(await consumer.topics())
    finally:
        await consumer.stop()
