"""Kafka wiring: the broker, publishing through the outbox, and safe consumption.

Consumption guarantees (see docs/delivery.md):
- every subscriber has a consumer group and the NACK_ON_ERROR ack policy: an offset is
  committed only after its record was applied, ignored or dead-lettered;
- a handler's unit of work is idempotent by event id (the store's processed marks);
- a failing handler is retried a bounded number of times with backoff, then the record is
  dead-lettered with its origin, error class and attempts, and the partition moves on;
- an outage of the store or broker is never dead-lettered: it is retried in place for a
  while, then the record is handed back uncommitted to be redelivered.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from aiokafka import ConsumerRecord
from aiokafka.errors import KafkaError
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from faststream.kafka.opentelemetry import KafkaTelemetryMiddleware
from faststream.kafka.prometheus import KafkaPrometheusMiddleware
from faststream.message import StreamMessage
from faststream.security import SASLPlaintext, SASLScram256, SASLScram512
from opentelemetry import context as otel_context
from opentelemetry import propagate
from opentelemetry.sdk.trace import TracerProvider
from pymongo.errors import AutoReconnect, ConnectionFailure, ServerSelectionTimeoutError

from pathway_schemas import topics
from pathway_schemas.base import PathwayEvent
from pathway_schemas.envelope import Envelope, InvalidEvent, KafkaRecord, from_record
from pathway_schemas.events import DeadLetter
from pathway_schemas.values import FieldError
from services.common.errors import Denied, PathwayError
from services.common.metrics import KitMetrics
from services.common.settings import KafkaSettings, RetrySettings
from services.common.store import OUTBOX, Outcome, Store, record_from_outbox

log = logging.getLogger("pathway.messaging")

E = TypeVar("E", bound=PathwayEvent)

# Kafka's default record limit is 1 MB; the dead letter must fit with its own fields.
MAX_DEAD_LETTER_VALUE = 512 * 1024
RELAY_BATCH = 200
# Published outbox entries are deleted in batches of at most this many (or at each relay pass).
SWEEP_BATCH = 100

OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionFailure,
    AutoReconnect,
    ServerSelectionTimeoutError,
    KafkaError,
    ConnectionError,
    asyncio.TimeoutError,
)


def make_broker(
    service: str,
    settings: KafkaSettings,
    metrics: KitMetrics,
    tracer_provider: TracerProvider,
) -> KafkaBroker:
    security: Any = None
    if settings.security_protocol != "PLAINTEXT" and settings.sasl_username:
        import ssl

        mechanism = {"SCRAM-SHA-512": SASLScram512, "SCRAM-SHA-256": SASLScram256}.get(
            settings.sasl_mechanism or "", SASLPlaintext
        )
        security = mechanism(
            username=settings.sasl_username,
            password=settings.sasl_password or "",
            ssl_context=ssl.create_default_context(),
        )
    return KafkaBroker(
        settings.bootstrap_servers,
        client_id=f"imaging-{service}",
        enable_idempotence=settings.enable_idempotence,
        acks="all",
        graceful_timeout=settings.graceful_timeout_s,
        security=security,
        middlewares=(
            KafkaTelemetryMiddleware(tracer_provider=tracer_provider),
            KafkaPrometheusMiddleware(registry=metrics.registry, app_name=f"imaging-{service}"),
        ),
        logger=logging.getLogger(f"pathway.{service}.broker"),
    )


class Publisher:
    """Publishes encoded records; the only path from a service to Kafka."""

    def __init__(self, broker: KafkaBroker, service: str, metrics: KitMetrics) -> None:
        self.broker = broker
        self.service = service
        self.metrics = metrics

    async def publish(self, record: KafkaRecord) -> None:
        headers = {k: v.decode() for k, v in record.headers}
        # Publish under the trace of the work that caused the event, even from the relay.
        token = otel_context.attach(propagate.extract(headers))
        try:
            await self.broker.publish(
                record.value, topic=record.topic, key=record.key, headers=headers
            )
        finally:
            otel_context.detach(token)
        self.metrics.published.labels(self.service, headers.get("ce_type", "unknown")).inc()

    async def publish_many(self, records: Iterable[KafkaRecord]) -> None:
        for record in records:
            await self.publish(record)


class Outbox:
    """Publishes what a unit of work committed, and relays what a crash left behind."""

    def __init__(
        self, store: Store, publisher: Publisher, metrics: KitMetrics, service: str
    ) -> None:
        self.store = store
        self.publisher = publisher
        self.metrics = metrics
        self.service = service
        # Ids of entries published in line and not yet deleted. Deleting them in batches
        # saves a store round trip per unit of work; one left behind by a crash is
        # published again by the relay, which consumers drop as a repeat (by event id).
        self.published: list[str] = []

    async def flush(self, outcome: Outcome[Any]) -> None:
        """Publish a committed unit of work's events in order; they are cleared in batches."""
        if not outcome.records:
            return
        try:
            await self.publisher.publish_many(outcome.records)
        except OUTAGE_ERRORS:
            # Committed already: the relay publishes them when Kafka is back.
            self.metrics.publish_errors.labels(self.service).inc()
            log.warning("publish failed; events stay in the outbox for the relay")
            return
        self.published.extend(dict(r.headers)["ce_id"].decode() for r in outcome.records)
        if len(self.published) >= SWEEP_BATCH:
            await self.sweep()

    async def sweep(self) -> None:
        """Delete the entries published so far, in one command."""
        if not self.published:
            return
        ids, self.published = self.published, []
        try:
            await self.store.db[OUTBOX].delete_many({"_id": {"$in": ids}})
        except BaseException:
            self.published = ids + self.published
            raise

    async def relay_once(self, older_than_s: float = 10.0, limit: int = RELAY_BATCH) -> int:
        """Publish outbox entries older than a moment (so in-line flushes go first); oldest first."""
        # Swept first, so that nothing published in line is counted or published again.
        await self.sweep()
        cutoff = datetime.fromtimestamp(time.time() - older_than_s, UTC)
        backlog = await self.store.db[OUTBOX].count_documents({})
        self.metrics.outbox_backlog.labels(self.service).set(backlog)
        if not backlog:
            return 0
        cursor = (
            self.store.db[OUTBOX].find({"created_at": {"$lt": cutoff}}).sort("seq", 1).limit(limit)
        )
        sent: list[str] = []
        try:
            async for document in cursor:
                await self.publisher.publish(record_from_outbox(document))
                sent.append(document["_id"])
        finally:
            if sent:
                await self.store.db[OUTBOX].delete_many({"_id": {"$in": sent}})
        return len(sent)

    async def step(self) -> bool:
        """One relay pass; True while a full batch shows more are waiting."""
        try:
            return await self.relay_once() >= RELAY_BATCH
        except OUTAGE_ERRORS:
            self.metrics.publish_errors.labels(self.service).inc()
            raise


async def _tolerant_parser(
    record: ConsumerRecord[Any, Any],
    original: Callable[[ConsumerRecord[Any, Any]], Awaitable[StreamMessage[Any]]],
) -> StreamMessage[Any]:
    """FastStream's parser, for any record at all.

    It reads every header as UTF-8 before a handler runs, and a record it cannot read was
    committed unseen (neither applied nor dead-lettered). The handler reads the raw record
    (`raw_message`), so it gets the record exactly as sent and dead-letters it.
    """
    try:
        return await original(record)
    except (UnicodeDecodeError, AttributeError):
        readable = dataclasses.replace(
            record,
            headers=[
                (name, (raw or b"").decode("utf-8", "replace").encode())
                for name, raw in record.headers
            ],
        )
        message = await original(readable)
        message.raw_message = record
        return message


async def _raw_body(message: StreamMessage[Any]) -> bytes:
    """The body as sent: `from_record` decodes it. FastStream would parse it as JSON first,
    and a body that is not JSON would then be redelivered forever, blocking its partition."""
    return message.body


@dataclass(frozen=True)
class Delivery:
    """Where an event came from: handlers use it for provider identity and idempotency."""

    envelope: Envelope
    topic: str
    partition: int
    offset: int

    @property
    def event_id(self) -> str:
        return self.envelope.id

    @property
    def provider(self) -> str | None:
        """The sending provider's ODS code, from its topic name (never from the payload)."""
        return topics.provider_of_topic(self.topic)


Handler = Callable[[Any, Delivery], Awaitable[Any]]


class Consumer:
    """One consumer group of one service: routes each record by its CloudEvents type."""

    #: Every provider's inbound topic, those that exist now and those created later.
    PROVIDER_INBOUND = topics.PROVIDER_INBOUND_PATTERN

    def __init__(
        self,
        *,
        service: str,
        group: str,
        broker: KafkaBroker,
        publisher: Publisher,
        metrics: KitMetrics,
        retry: RetrySettings,
        kafka: KafkaSettings,
    ) -> None:
        self.service = service
        self.group = group
        self.broker = broker
        self.publisher = publisher
        self.metrics = metrics
        self.retry = retry
        self.kafka = kafka
        self.handlers: dict[str, Handler] = {}
        self.topics: list[str] = []
        self.patterns: list[str] = []
        self.stopping = asyncio.Event()
        # Called with (topic, headers, error) before an undecodable record is dead-lettered,
        # for a service that also owes the sender an answer (the intake reply topic).
        self.on_invalid: (
            Callable[[str, Sequence[tuple[str, bytes]], InvalidEvent], Awaitable[None]] | None
        ) = None

    def on(self, *event_classes: type[E]) -> Callable[[Handler], Handler]:
        """Register a handler for one or more event classes."""

        def register(handler: Handler) -> Handler:
            for cls in event_classes:
                if cls.event_type in self.handlers:
                    raise ValueError(f"{self.service} handles {cls.event_type} twice")
                self.handlers[cls.event_type] = handler
            return handler

        return register

    def subscribe(self, *topic_names: str, pattern: str | None = None) -> None:
        """Declare the FastStream subscriber for these topics: explicit group and ack policy.

        With `pattern` (a regex matched from the start of a topic name, e.g. PROVIDER_INBOUND;
        no `{name}` in it, FastStream reads that as a path parameter) it also reads every
        topic that matches, including one created while the service runs: the client sees it
        at its next metadata refresh (`kafka.metadata_max_age_ms`) and the group rebalances to
        take it. Kafka cannot mix names and a pattern in one consumer, and a second consumer
        in the group would double every join and rebalance, so the names then become exact
        alternatives of the one pattern.
        """
        self.topics.extend(topic_names)
        names: Sequence[str] = topic_names
        listed = [*topic_names]
        combined: str | None = None
        if pattern is not None:
            re.compile(pattern)  # a bad pattern fails here, at start
            self.patterns.append(pattern)
            listed.append(pattern)
            exact = "|".join(re.escape(name) for name in topic_names)
            combined = f"^(?:{exact})$|{pattern}" if exact else pattern
            names = ()

        async def consume(message: KafkaMessage) -> None:
            raw = message.raw_message
            if isinstance(raw, Sequence):  # pragma: no cover - batch mode is not used
                raise TypeError("batch consumption is not supported")
            await self.handle_record(
                raw.topic, raw.partition, raw.offset, raw.key, raw.value, raw.headers
            )

        subscriber = self.broker.subscriber(
            *names,
            pattern=combined,
            group_id=self.group,
            ack_policy=AckPolicy.NACK_ON_ERROR,
            auto_offset_reset="earliest",
            session_timeout_ms=self.kafka.session_timeout_ms,
            max_poll_interval_ms=self.kafka.max_poll_interval_ms,
            fetch_max_wait_ms=self.kafka.fetch_max_wait_ms,
            title=f"{self.service}:{','.join(listed)}",
            parser=_tolerant_parser,
            decoder=_raw_body,
        )
        subscriber(consume)
        if combined is not None:
            # FastStream takes the metadata age for the whole broker only (its producer too);
            # only a pattern needs it short, so it goes into this consumer's own options.
            subscriber._connection_args["metadata_max_age_ms"] = self.kafka.metadata_max_age_ms

    def reads(self, topic: str) -> bool:
        """Whether this consumer reads a topic: one of its names, or a match of a pattern."""
        return topic in self.topics or any(re.match(p, topic) for p in self.patterns)

    async def handle_record(
        self,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]],
    ) -> None:
        """Apply, ignore or dead-letter one record; raise only to leave it uncommitted."""
        started = time.perf_counter()
        try:
            received = from_record(headers, value, topic=topic, key=key)
        except InvalidEvent as invalid:
            if self.on_invalid is not None:
                await self.on_invalid(topic, headers, invalid)
            await self.dead_letter(
                topic, partition, offset, key, value, headers, None, invalid, "invalid", 1
            )
            return
        event_type = received.envelope.type
        handler = self.handlers.get(event_type)
        if handler is None:
            # Another service's event on a shared topic: not ours to act on.
            self.metrics.events_handled.labels(self.service, event_type, "ignored").inc()
            return
        delivery = Delivery(
            envelope=received.envelope, topic=topic, partition=partition, offset=offset
        )
        extra = {
            "referral_id": received.envelope.subject,
            "event_type": event_type,
            "event_id": delivery.event_id,
        }
        attempts = 0
        outage_started: float | None = None
        while True:
            attempts += 1
            try:
                result = await handler(received.event, delivery)
            except PathwayError as refused:
                if isinstance(refused, Denied):
                    self.metrics.authz_denied.labels(self.service, "kafka").inc()
                await self.dead_letter(
                    topic,
                    partition,
                    offset,
                    key,
                    value,
                    headers,
                    received.envelope,
                    refused,
                    refused.reason,
                    attempts,
                )
                log.warning(
                    "event refused: %s", refused.message, extra={**extra, "reason": refused.reason}
                )
                return
            except OUTAGE_ERRORS:
                outage_started = outage_started or time.monotonic()
                self.metrics.retries.labels(self.service, "outage").inc()
                if (
                    self.stopping.is_set()
                    or time.monotonic() - outage_started > self.retry.outage_budget_s
                ):
                    raise  # uncommitted: redelivered once the outage is over
                await asyncio.sleep(self._backoff(attempts))
                continue
            except Exception as error:
                if attempts >= self.retry.attempts:
                    log.exception("handler failed; dead-lettering", extra=extra)
                    await self.dead_letter(
                        topic,
                        partition,
                        offset,
                        key,
                        value,
                        headers,
                        received.envelope,
                        error,
                        "failed",
                        attempts,
                    )
                    return
                self.metrics.retries.labels(self.service, "error").inc()
                await asyncio.sleep(self._backoff(attempts))
                continue
            outcome = "duplicate" if isinstance(result, Outcome) and result.duplicate else "applied"
            self.metrics.events_handled.labels(self.service, event_type, outcome).inc()
            self.metrics.handler_seconds.labels(self.service, event_type).observe(
                time.perf_counter() - started
            )
            return

    def _backoff(self, attempt: int) -> float:
        return float(min(self.retry.backoff_max_s, self.retry.backoff_s * (2 ** (attempt - 1))))

    async def dead_letter(
        self,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]],
        envelope: Envelope | None,
        error: BaseException,
        reason: str,
        attempts: int,
    ) -> None:
        errors: tuple[FieldError, ...] = getattr(error, "errors", ())
        # The reason text is ours (invalid, denied...) plus a message we wrote; never the input.
        message = (
            error.reason
            if isinstance(error, InvalidEvent)
            else (error.message if isinstance(error, PathwayError) else type(error).__name__)
        )
        letter = DeadLetter(
            service=self.service,
            original_topic=topic,
            partition=partition,
            offset=offset,
            event_type=envelope.type if envelope else None,
            event_id=envelope.id if envelope else None,
            error_class=type(error).__name__,
            reason=f"{reason}: {message}",
            errors=errors,
            attempts=attempts,
            dead_lettered_at=datetime.now(UTC),
            original_key_b64=base64.b64encode((key or b"")[:1024]).decode(),
            original_value_b64=base64.b64encode((value or b"")[:MAX_DEAD_LETTER_VALUE]).decode(),
        )
        dlq_headers = {
            "content-type": "application/json",
            "dlq_reason": reason,
            "dlq_original_topic": topic,
            "dlq_original_partition": str(partition),
            "dlq_original_offset": str(offset),
        }
        for name, raw in headers[:32]:
            try:
                dlq_headers[f"dlq_original_{name}"[:128]] = raw.decode("utf-8")[:1024]
            except (UnicodeDecodeError, AttributeError):
                continue
        safe_key = envelope.subject.encode() if envelope else None
        await self.broker.publish(
            letter.model_dump_json().encode(),
            topic=topics.dead_letter(self.service),
            key=safe_key,
            headers=dlq_headers,
        )
        self.metrics.dead_letters.labels(self.service, topic, reason).inc()
        self.metrics.events_handled.labels(
            self.service, envelope.type if envelope else "(invalid)", "dead_lettered"
        ).inc()
