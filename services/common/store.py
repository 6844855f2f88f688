"""MongoDB wiring: the client, and units of work that commit state and outbox together.

A unit of work runs in one MongoDB transaction: it marks the causing event as processed
(so redelivery changes nothing), applies the state change, and writes the events it causes
to the `outbox` collection. The messaging kit publishes them after the commit; a relay
publishes any that a crash left behind. State and events are never split by a crash.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

from bson import ObjectId
from prometheus_client import CollectorRegistry, Counter
from pymongo import AsyncMongoClient, monitoring
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError, OperationFailure

from pathway_schemas.base import PathwayEvent
from pathway_schemas.envelope import KafkaRecord, derived_event_id, new_event_id, to_record
from services.common.settings import MongoSettings
from services.common.tracing import current_trace

T = TypeVar("T")
Document = dict[str, Any]

OUTBOX = "outbox"
PROCESSED = "processed"
# A processed mark's wall-clock time: its expiry (TTL index) counts from here.
MARKED_AT = "marked_at"
# MongoDB's answers when an index exists with other options (IndexOptionsConflict,
# IndexKeySpecsConflict).
_INDEX_OPTIONS_CONFLICT = (85, 86)


class CommandCounter(monitoring.CommandListener):
    """Counts store round trips (commands sent), so that work per event can be measured."""

    def __init__(self, service: str, registry: CollectorRegistry) -> None:
        self._counter = Counter(
            "pathway_store_commands_total",
            "MongoDB commands sent (round trips), by command name",
            ["service", "command"],
            registry=registry,
        )
        self._service = service

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self._counter.labels(self._service, event.command_name).inc()

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def make_client(
    settings: MongoSettings, *, commands: CommandCounter | None = None
) -> AsyncMongoClient[Document]:
    return AsyncMongoClient(
        settings.url,
        serverSelectionTimeoutMS=settings.server_selection_timeout_ms,
        tz_aware=True,
        uuidRepresentation="standard",
        event_listeners=[commands] if commands is not None else [],
    )


@dataclass
class Tx:
    """What a unit of work can touch: the session-bound database, and `emit`."""

    session: AsyncClientSession
    db: AsyncDatabase[Document]
    service: str
    cause_id: str | None
    now: datetime
    records: list[KafkaRecord] = field(default_factory=list)

    def emit(
        self, event: PathwayEvent, *, topic: str | None = None, event_id: str | None = None
    ) -> str:
        """Queue an event for publication once this unit of work commits; returns its id.

        Events caused by another get ids derived from the cause, so that a replayed cause
        re-derives the same ids and consumers can drop the repeat.
        """
        if event_id is None:
            event_id = (
                derived_event_id(
                    self.cause_id, self.service, event.event_type, str(len(self.records))
                )
                if self.cause_id
                else new_event_id()
            )
        carrier = current_trace()
        record = to_record(
            event,
            topic=topic or event.topic,
            source=f"/imaging/{self.service}",
            event_id=event_id,
            emitted_at=self.now,
            trace=carrier,
        )
        self.records.append(record)
        return event_id


@dataclass(frozen=True)
class Outcome(Generic[T]):
    """What a unit of work did: its value, or that its cause was already processed."""

    value: T | None
    duplicate: bool
    records: tuple[KafkaRecord, ...]


class Store:
    def __init__(
        self,
        client: AsyncMongoClient[Document],
        database: str,
        service: str,
        *,
        processed_retention: timedelta = timedelta(days=450),
    ) -> None:
        self.client = client
        self.db: AsyncDatabase[Document] = client[database]
        self.service = service
        self.processed_retention = processed_retention

    async def ping(self) -> None:
        await self.client.admin.command("ping")

    async def ensure_kit_indexes(self) -> None:
        await self.db[OUTBOX].create_index("seq")
        # Processed marks expire (a TTL index on their wall-clock time), or they would grow
        # for ever: one per event a service applies.
        seconds = int(self.processed_retention.total_seconds())
        try:
            await self.db[PROCESSED].create_index(MARKED_AT, expireAfterSeconds=seconds)
        except OperationFailure as conflict:
            if conflict.code not in _INDEX_OPTIONS_CONFLICT:
                raise
            # The retention setting changed since the index was made: change the index.
            await self.db.command(
                "collMod",
                PROCESSED,
                index={"keyPattern": {MARKED_AT: 1}, "expireAfterSeconds": seconds},
            )

    async def transact(
        self,
        work: Callable[[Tx], Awaitable[T]],
        *,
        cause_id: str | None = None,
        now: datetime | None = None,
    ) -> Outcome[T]:
        """Run `work` in a transaction; a cause already processed returns `duplicate=True`."""
        moment = now or datetime.now(UTC)

        async def callback(session: AsyncClientSession) -> tuple[T, list[KafkaRecord]]:
            tx = Tx(
                session=session, db=self.db, service=self.service, cause_id=cause_id, now=moment
            )
            if cause_id is not None:
                try:
                    await self.db[PROCESSED].insert_one(
                        # `at` on the service clock (a simulated one may stand anywhere);
                        # the expiry is about real time.
                        {"_id": cause_id, "at": moment, MARKED_AT: datetime.now(UTC)},
                        session=session,
                    )
                except DuplicateKeyError:
                    raise _AlreadyProcessed from None
            value = await work(tx)
            if tx.records:
                await self.db[OUTBOX].insert_many(
                    [_outbox_document(r, moment) for r in tx.records], session=session
                )
            return value, tx.records

        async with self.client.start_session() as session:
            try:
                value, records = await session.with_transaction(callback)
            except _AlreadyProcessed:
                return Outcome(value=None, duplicate=True, records=())
        return Outcome(value=value, duplicate=False, records=tuple(records))


class _AlreadyProcessed(Exception):
    """The causing event was applied before: abort, change nothing."""


def _outbox_document(record: KafkaRecord, moment: datetime) -> Document:
    headers = dict((k, v.decode()) for k, v in record.headers)
    return {
        "_id": headers["ce_id"],
        "seq": ObjectId(),
        "topic": record.topic,
        "key": record.key,
        "value": record.value,
        "headers": [[k, v] for k, v in record.headers],
        # Wall time, not the service clock: the relay's "left behind" test is about real
        # seconds, and a simulated clock may stand anywhere.
        "created_at": datetime.now(UTC),
    }


def record_from_outbox(document: Document) -> KafkaRecord:
    return KafkaRecord(
        topic=document["topic"],
        key=bytes(document["key"]),
        value=bytes(document["value"]),
        headers=tuple((k, bytes(v)) for k, v in document["headers"]),
    )
