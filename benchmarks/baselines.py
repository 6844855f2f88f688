"""What the same broker and store do without the system: the ceilings to compare against."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # type: ignore[import-untyped,unused-ignore]
from aiokafka.structs import TopicPartition  # type: ignore[import-untyped,unused-ignore]
from pymongo import AsyncMongoClient

from pathway_cli.stack import create_topics

PARTITIONS = 3


@dataclass(frozen=True)
class KafkaBaseline:
    records: int
    record_bytes: int
    #: produce (pipelined, acks=all) and consume concurrently: first send to last record read
    pipelined_per_second: float
    #: one record at a time, each send awaited (the services' publish path)
    sequential_records: int
    sequential_per_second: float


@dataclass(frozen=True)
class StoreBaseline:
    upserts: int
    concurrency: int
    upserts_per_second: float
    #: a minimal unit of work: in a transaction, a processed mark, one upsert, one outbox insert
    transactions: int
    transactions_per_second: float


async def kafka_baseline(
    bootstrap: str, records: int, record_bytes: int = 900, sequential: int = 500
) -> KafkaBaseline:
    topic = f"benchmark.raw.{uuid.uuid4().hex[:8]}"
    await create_topics(bootstrap, [topic], partitions=PARTITIONS)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await producer.start()
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        payload = b"x" * record_bytes
        read = 0

        async def consume(expected: int) -> None:
            nonlocal read
            while read < expected:
                batch = await consumer.getmany(timeout_ms=200)
                read += sum(len(r) for r in batch.values())

        began = time.perf_counter()
        reader = asyncio.ensure_future(consume(records))
        futures = [
            await producer.send(topic, payload, key=f"ref_{i % 997:032x}".encode())
            for i in range(records)
        ]
        await asyncio.gather(*futures)
        await asyncio.wait_for(reader, timeout=120)
        pipelined = records / (time.perf_counter() - began)

        began = time.perf_counter()
        for i in range(sequential):
            await producer.send_and_wait(topic, payload, key=f"ref_{i % 997:032x}".encode())
        sequential_rate = sequential / (time.perf_counter() - began)
        await asyncio.wait_for(consume(records + sequential), timeout=120)
    finally:
        await consumer.stop()
        await producer.stop()
    return KafkaBaseline(records, record_bytes, pipelined, sequential, sequential_rate)


async def store_baseline(
    mongo_url: str,
    upserts: int = 2000,
    concurrency: int = 16,
    transactions: int = 300,
    cap_seconds: float = 30.0,
) -> StoreBaseline:
    """Upserts of new documents into a fresh database, then minimal units of work.

    Each part stops after `cap_seconds` and counts what was done: the embedded store can
    slow down a great deal once it holds data, and a baseline must not take all night.
    """
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url, tz_aware=True)
    database = client[f"benchmark_{uuid.uuid4().hex[:8]}"]
    try:
        await database.command("ping")
        collection = database["upserts"]

        async def upsert(i: int) -> None:
            await collection.update_one(
                {"_id": f"doc-{i}"},
                {"$set": {"state": "booked", "n": i}, "$inc": {"version": 1}},
                upsert=True,
            )

        async def unit_of_work(i: int) -> None:
            async with client.start_session() as session:

                async def work(s: Any) -> None:
                    await database["processed"].insert_one({"_id": f"cause-{i}"}, session=s)
                    await database["state"].update_one(
                        {"_id": f"ref-{i}"}, {"$set": {"state": "accepted"}}, upsert=True, session=s
                    )
                    await database["outbox"].insert_one(
                        {"_id": f"event-{i}", "v": "x" * 900}, session=s
                    )

                await session.with_transaction(work)

        done_upserts, upsert_rate = await _capped(upsert, upserts, concurrency, cap_seconds)
        done_units, unit_rate = await _capped(unit_of_work, transactions, concurrency, cap_seconds)
    finally:
        await client.drop_database(database.name)
        await client.close()
    return StoreBaseline(done_upserts, concurrency, upsert_rate, done_units, unit_rate)


async def _capped(
    operation: Callable[[int], Awaitable[None]], count: int, concurrency: int, cap_seconds: float
) -> tuple[int, float]:
    """Run `operation(0..count-1)`, `concurrency` at a time, for at most `cap_seconds`."""
    next_index = 0
    done = 0
    began = time.perf_counter()
    deadline = began + cap_seconds

    async def worker() -> None:
        nonlocal next_index, done
        while next_index < count and time.perf_counter() < deadline:
            index = next_index
            next_index += 1
            await operation(index)
            done += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done, done / (time.perf_counter() - began)
