"""Run services in-process on the real embedded broker and store, for integration tests.

`running_service(create_app, settings)` serves the app with uvicorn on a free loopback
port, waits for /readyz, yields an httpx client bound to it, and shuts it down cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from fastapi import FastAPI
from opentelemetry.sdk.trace import ReadableSpan

from pathway_schemas.base import PathwayEvent
from pathway_schemas.envelope import KafkaRecord, Received, from_record, to_record


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningService:
    app: FastAPI
    client: httpx.AsyncClient
    base_url: str

    @property
    def runtime(self) -> Any:
        return self.app.state.runtime


@contextlib.asynccontextmanager
async def running_service(
    app: FastAPI, *, ready_timeout: float = 60.0
) -> AsyncIterator[RunningService]:
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    task = asyncio.create_task(server.serve())
    base_url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=base_url, timeout=30.0) as client:
        deadline = time.monotonic() + ready_timeout
        while True:
            if task.done():
                task.result()  # surfaces the start-up error
                raise RuntimeError("service exited during start-up")
            try:
                if (await client.get("/readyz")).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"service on {base_url} not ready within {ready_timeout}s")
            await asyncio.sleep(0.05)
        try:
            yield RunningService(app=app, client=client, base_url=base_url)
        finally:
            server.should_exit = True
            await task


async def publish(
    bootstrap: str, events: Iterable[tuple[PathwayEvent, str]], *, source: str = "/tests"
) -> list[str]:
    """Publish events (event, topic) as a provider or practice system would; returns their ids."""
    records = [to_record(event, topic=topic, source=source) for event, topic in events]
    await send_records(bootstrap, records)
    return [dict(record.headers)["ce_id"].decode() for record in records]


async def send_records(bootstrap: str, records: Iterable[KafkaRecord]) -> None:
    """Publish records exactly as built (their ids and trace headers), one at a time, in order."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for record in records:
            await producer.send_and_wait(
                record.topic, record.value, key=record.key, headers=list(record.headers)
            )
    finally:
        await producer.stop()


def trace_hex(span: ReadableSpan) -> str:
    """A finished span's trace id as it appears in a traceparent header."""
    assert span.context is not None
    return format(span.context.trace_id, "032x")


class TopicReader:
    """Reads everything on some topics from the beginning; `wait_for` polls with a deadline."""

    def __init__(self, bootstrap: str, *topics: str) -> None:
        self.consumer = AIOKafkaConsumer(
            *topics,
            bootstrap_servers=bootstrap,
            group_id=f"test-reader-{uuid.uuid4().hex[:8]}",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        self.records: list[Any] = []

    async def __aenter__(self) -> TopicReader:
        await self.consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.consumer.stop()

    async def poll(self) -> None:
        batch = await self.consumer.getmany(timeout_ms=200)
        for records in batch.values():
            self.records.extend(records)

    def events(self) -> list[Received]:
        """Decoded events, each once: publication is at-least-once, so drop repeats by id."""
        decoded = []
        seen: set[str] = set()
        for record in self.records:
            with contextlib.suppress(Exception):
                received = from_record(record.headers, record.value, topic=record.topic)
                if received.envelope.id not in seen:
                    seen.add(received.envelope.id)
                    decoded.append(received)
        return decoded

    def trace_ids(self, kind: type[PathwayEvent], referral_id: str) -> list[str | None]:
        """The trace id of each event of a type about a referral, in order (None: no trace)."""
        found = []
        for received in self.events():
            if isinstance(received.event, kind) and received.envelope.subject == referral_id:
                parts = received.envelope.trace.get("traceparent", "").split("-")
                found.append(parts[1] if len(parts) == 4 else None)
        return found

    async def wait_for(
        self,
        predicate: Callable[[list[Any]], bool],
        *,
        timeout: float = 30.0,
        what: str = "records",
    ) -> list[Any]:
        deadline = time.monotonic() + timeout
        while not predicate(self.records):
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"timed out after {timeout}s waiting for {what}; saw {len(self.records)} records"
                )
            await self.poll()
        return self.records
