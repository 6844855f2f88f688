"""The gateway process: the provider's outbound topic to its RIS, its RIS to its inbound topic.

- `OrderDesk`: each outbound record in turn (no consumer group: one gateway per provider
  reads every partition, its positions kept with the orders in the `OrderBook`) becomes an
  ORM^O01 sent over MLLP until the RIS answers. AA moves on; AE is dead-lettered at once;
  AR is resent a few times, then dead-lettered. A RIS that is down or silent is retried
  with backoff for as long as it takes: orders are never skipped for an outage.
- `InboundDesk`: each MLLP message from the RIS is parsed, mapped (`inbound.interpret`),
  published with `to_record` on the provider's inbound topic, and only then answered AA.
  Refused messages are answered AE / AR with ERR segments and dead-lettered (local JSON
  lines and `pathway_hl7_dead_letters_total`). A broker outage is answered AR with
  "resend" and is not dead-lettered: the RIS sends again.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, start_http_server
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pathway_cli.hl7 import inbound, mllp, v2
from pathway_cli.hl7.orders import UnknownOrder, order_message
from pathway_cli.hl7.state import DeadLetters, OrderBook
from pathway_schemas import topics
from pathway_schemas.envelope import (
    InvalidEvent,
    KafkaRecord,
    derived_event_id,
    from_record,
    to_record,
)
from services.common.settings import KafkaSettings

log = logging.getLogger("pathway.hl7.gateway")

MESSAGE_TYPES = frozenset({"ADT^A10", "ORM^O01", "ORU^R01"})


class GatewaySettings(BaseSettings):
    """One provider's gateway; env prefix PATHWAY_HL7_ (nested with `__`), options override."""

    model_config = SettingsConfigDict(
        env_prefix="PATHWAY_HL7_", env_nested_delimiter="__", extra="ignore", frozen=True
    )

    provider: str = Field(pattern=r"^[A-Z0-9]{3,10}$", description="The provider's ODS code")
    ris_host: str = Field(min_length=1)
    ris_port: int = Field(ge=1, le=65535)
    listen_host: str = "127.0.0.1"
    listen_port: int = Field(default=2575, ge=0, le=65535)
    kafka: KafkaSettings = KafkaSettings()
    state_dir: Path = Path("var/hl7")
    ack_timeout_s: float = Field(default=10.0, gt=0)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    backoff_initial_s: float = Field(default=0.5, gt=0)
    backoff_max_s: float = Field(default=30.0, gt=0)
    idle_timeout_s: float = Field(default=300.0, gt=0)
    max_message_bytes: int = Field(default=mllp.DEFAULT_MAX_BYTES, ge=1024)
    ris_rejection_attempts: int = Field(default=3, ge=1, le=20)
    allow_from: tuple[str, ...] = Field(
        default=(), description="Addresses or networks the RIS connects from (empty: any)"
    )
    application: str = Field(default="PATHWAY", min_length=1, max_length=20)
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    log_level: str = "INFO"

    @field_validator("provider", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    @property
    def state_path(self) -> Path:
        return self.state_dir / self.provider.lower()

    @property
    def source(self) -> str:
        return f"/providers/{self.provider.lower()}/hl7-gateway"


@dataclass(frozen=True)
class GatewayMetrics:
    registry: CollectorRegistry
    messages: Counter
    dead_letters: Counter
    ris_retries: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> GatewayMetrics:
        registry = registry or CollectorRegistry()
        return cls(
            registry=registry,
            messages=Counter(
                "pathway_hl7_messages_total",
                "HL7 messages by direction, type and acknowledgement code",
                ["provider", "direction", "message_type", "ack"],
                registry=registry,
            ),
            dead_letters=Counter(
                "pathway_hl7_dead_letters_total",
                "HL7 messages or outbound records dead-lettered to the gateway's local file",
                ["provider", "direction", "reason"],
                registry=registry,
            ),
            ris_retries=Counter(
                "pathway_hl7_ris_retries_total",
                "Orders sent again because the RIS was unreachable, silent or answered AR",
                ["provider"],
                registry=registry,
            ),
        )


def _type_label(message_type: str) -> str:
    return message_type if message_type in MESSAGE_TYPES else "other"


Publish = Callable[[KafkaRecord], Awaitable[None]]


class InboundDesk:
    """Answers each message from the RIS; publishes the events it means first."""

    def __init__(
        self,
        settings: GatewaySettings,
        book: OrderBook,
        dead_letters: DeadLetters,
        publish: Publish,
        metrics: GatewayMetrics,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.provider = settings.provider
        self.book = book
        self.dead_letters = dead_letters
        self.publish = publish
        self.metrics = metrics
        self.now = now

    def _ack(
        self,
        original: v2.Parsed | None,
        code: str,
        problems: tuple[v2.Problem, ...] = (),
        text: str = "",
    ) -> str:
        return v2.acknowledgement(
            original,
            code,
            control_id=uuid.uuid4().hex[:20],
            at=self.now(),
            application=self.settings.application,
            facility=self.provider,
            problems=problems,
            text=text,
        )

    def _refuse(
        self,
        raw: str,
        original: v2.Parsed | None,
        code: inbound.AckCode,
        reason: inbound.Reason,
        problems: tuple[v2.Problem, ...],
        message_type: str,
    ) -> str:
        self.dead_letters.write(
            provider=self.provider,
            direction="inbound",
            reason=reason,
            original=raw.encode("utf-8", errors="replace"),
            ack_code=code,
            message_type=message_type or None,
            control_id=original.control_id if original is not None else None,
            problems=problems,
        )
        self.metrics.dead_letters.labels(self.provider, "inbound", reason).inc()
        self.metrics.messages.labels(
            self.provider, "inbound", _type_label(message_type), code
        ).inc()
        log.warning(
            "HL7 message refused",
            extra={"provider": self.provider, "reason": reason, "outcome": code},
        )
        return self._ack(original, code, problems, problems[0].text if problems else reason)

    async def handle(self, raw: str) -> str:
        """The acknowledgement for one message; never raises for anything the RIS sent."""
        try:
            message = v2.parse(raw)
            message_type = "^".join(message.message_type)
            self._ack(message, "AA")  # the header can be answered: checked before any effect
        except v2.Hl7Error as error:
            return self._refuse(raw, None, "AR", "malformed", (error.problem,), "")
        try:
            meaning = inbound.interpret(message, provider=self.provider, orders=self.book.get)
        except Exception as error:  # a mapping bug must not take the listener down
            log.exception("HL7 message could not be mapped", extra={"provider": self.provider})
            problem = v2.Problem(
                "", v2.APPLICATION_ERROR, f"internal error ({type(error).__name__})"
            )
            return self._refuse(raw, message, "AE", "invalid", (problem,), message_type)
        if isinstance(meaning, inbound.Refused):
            return self._refuse(
                raw, message, meaning.code, meaning.reason, meaning.problems, message_type
            )
        trace = meaning.order.trace if meaning.order is not None else {}
        cause = f"hl7:{self.provider}:{message.control_id}"
        records = [
            to_record(
                event,
                topic=topics.provider_inbound(self.provider),
                source=self.settings.source,
                event_id=derived_event_id(cause, str(index)),
                trace=trace,
            )
            for index, event in enumerate(meaning.events)
        ]
        try:
            for record in records:
                await self.publish(record)
        except Exception as error:
            # Not the RIS's fault and not a dead letter: it resends, and the same control id
            # gives the same event ids, so nothing is applied twice.
            log.warning(
                "inbound topic unavailable; asked the RIS to resend",
                extra={"provider": self.provider, "referral_id": meaning.referral_id},
            )
            self.metrics.messages.labels(
                self.provider, "inbound", _type_label(message_type), "AR"
            ).inc()
            problem = v2.Problem(
                "",
                v2.APPLICATION_ERROR,
                f"the pathway is unavailable ({type(error).__name__}): resend the message",
            )
            return self._ack(message, "AR", (problem,), problem.text)
        self.metrics.messages.labels(
            self.provider, "inbound", _type_label(message_type), "AA"
        ).inc()
        log.info(
            "HL7 message accepted",
            extra={
                "provider": self.provider,
                "referral_id": meaning.referral_id,
                "event_type": ",".join(e.event_type for e in meaning.events) or None,
            },
        )
        return self._ack(message, "AA")

    async def framing_error(self, error: mllp.FramingError) -> str | None:
        problem = v2.Problem("", v2.SEGMENT_SEQUENCE_ERROR, f"MLLP framing: {error}")
        return self._refuse("", None, "AR", "malformed", (problem,), "")


class OutboundRecord(Protocol):
    topic: str
    partition: int
    offset: int
    value: bytes | None
    key: bytes | None
    headers: Any


class Sender(Protocol):
    async def send(
        self,
        message: str,
        *,
        stopping: asyncio.Event | None = None,
        on_retry: Callable[[int, Exception], None] | None = None,
    ) -> str: ...


class OrderDesk:
    """Sends each outbound record to the RIS as an order and records that it did."""

    def __init__(
        self,
        settings: GatewaySettings,
        book: OrderBook,
        dead_letters: DeadLetters,
        sender: Sender,
        metrics: GatewayMetrics,
        stopping: asyncio.Event,
    ) -> None:
        self.settings = settings
        self.provider = settings.provider
        self.book = book
        self.dead_letters = dead_letters
        self.sender = sender
        self.metrics = metrics
        self.stopping = stopping
        self.backoff = mllp.Backoff(settings.backoff_initial_s, settings.backoff_max_s)

    def _dead_letter(
        self,
        record: OutboundRecord,
        reason: str,
        problems: tuple[v2.Problem, ...] = (),
        *,
        ack: str | None = None,
        control_id: str | None = None,
        event_id: str | None = None,
    ) -> None:
        self.dead_letters.write(
            provider=self.provider,
            direction="outbound",
            reason=reason,
            original=record.value or b"",
            ack_code=ack,
            message_type="ORM^O01",
            control_id=control_id,
            event_id=event_id,
            problems=problems,
        )
        self.metrics.dead_letters.labels(self.provider, "outbound", reason).inc()

    def _retry(self, attempt: int = 0, error: Exception | None = None) -> None:
        self.metrics.ris_retries.labels(self.provider).inc()

    async def handle(self, record: OutboundRecord) -> None:
        """Send one outbound record's order; the book moves past it once it is answered."""
        try:
            received = from_record(record.headers or [], record.value, topic=record.topic)
        except InvalidEvent as error:
            problems = tuple(
                v2.Problem("", v2.DATA_TYPE_ERROR, str(e.message)) for e in error.errors
            )
            self._dead_letter(record, "invalid_event", problems)
            self.book.record(
                None, topic=record.topic, partition=record.partition, next_offset=record.offset + 1
            )
            return
        event = received.event
        referral_id = received.envelope.subject
        known = self.book.get(referral_id)
        try:
            outbound = order_message(
                event,
                provider=self.provider,
                event_id=received.envelope.id,
                known=known,
                trace=dict(received.envelope.trace),
            )
        except (UnknownOrder, TypeError) as error:
            self._dead_letter(
                record,
                "unknown_order",
                (v2.Problem("ORC-2", v2.UNKNOWN_KEY, str(error)),),
                event_id=received.envelope.id,
            )
            self.book.record(
                None, topic=record.topic, partition=record.partition, next_offset=record.offset + 1
            )
            return
        # Known before it is sent: the RIS may answer with an arrival at once.
        self.book.record(
            outbound.order,
            topic=record.topic,
            partition=record.partition,
            next_offset=record.offset,
        )
        code, problems = await self._deliver(outbound.text, outbound.control_id)
        self.metrics.messages.labels(self.provider, "outbound", "ORM^O01", code).inc()
        if code not in ("AA", "CA"):
            self._dead_letter(
                record,
                "rejected_by_ris",
                problems,
                ack=code,
                control_id=outbound.control_id,
                event_id=received.envelope.id,
            )
            log.warning(
                "RIS refused an order",
                extra={"provider": self.provider, "referral_id": referral_id, "outcome": code},
            )
        else:
            log.info(
                "order sent to the RIS",
                extra={"provider": self.provider, "referral_id": referral_id, "outcome": code},
            )
        self.book.record(
            None, topic=record.topic, partition=record.partition, next_offset=record.offset + 1
        )

    async def _deliver(self, text: str, control_id: str) -> tuple[str, tuple[v2.Problem, ...]]:
        """Send until the RIS answers this message; its MSA-1 code and ERR problems."""
        rejections = 0
        while True:
            answer = await self.sender.send(text, stopping=self.stopping, on_retry=self._retry)
            code, acknowledged, problems = _read_ack(answer)
            if acknowledged != control_id:
                # An answer to something else: the stream is out of step, send again.
                self._retry()
                continue
            if code in ("AR", "CR"):
                rejections += 1
                if rejections < self.settings.ris_rejection_attempts:
                    self._retry()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(
                            self.stopping.wait(), timeout=self.backoff.delay(rejections)
                        )
                    if self.stopping.is_set():
                        raise mllp.Stopped
                    continue
            return code, problems


def _read_ack(answer: str) -> tuple[str, str, tuple[v2.Problem, ...]]:
    try:
        ack = v2.parse(answer)
    except v2.Hl7Error as error:
        return "AR", "", (error.problem,)
    msa = ack.first("MSA")
    if msa is None:
        return "AR", "", (v2.Problem("MSA", v2.REQUIRED_FIELD_MISSING, "the answer has no MSA"),)
    problems = tuple(
        v2.Problem(
            "-".join(p for p in (err.value(2, 1, 1), err.value(2, 1, 3)) if p),
            err.value(3, 1, 1),
            (err.value(8) or err.value(3, 1, 2))[:250],
        )
        for err in ack.segments("ERR")
    )
    return msa.value(1).upper(), msa.value(2), problems


def _allowed(peer: str, networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    if not networks:
        return True
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    return any(address in network for network in networks)


class Gateway:
    """The whole process: Kafka both ways, MLLP both ways, until `stopping` is set."""

    def __init__(self, settings: GatewaySettings, metrics: GatewayMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or GatewayMetrics.create()
        self.book = OrderBook(settings.state_path / "orders.sqlite")
        self.dead_letters = DeadLetters(settings.state_path / "dead-letters.jsonl")
        self.stopping = asyncio.Event()
        self.listening = asyncio.Event()
        self.port: int | None = None
        self._networks = [ipaddress.ip_network(n, strict=False) for n in settings.allow_from]

    def _kafka(self) -> dict[str, Any]:
        kafka = self.settings.kafka
        options: dict[str, Any] = {
            "bootstrap_servers": kafka.bootstrap_servers,
            "security_protocol": kafka.security_protocol,
        }
        if kafka.sasl_mechanism:
            options.update(
                sasl_mechanism=kafka.sasl_mechanism,
                sasl_plain_username=kafka.sasl_username,
                sasl_plain_password=kafka.sasl_password,
            )
        if kafka.security_protocol != "PLAINTEXT":
            import ssl

            options["ssl_context"] = ssl.create_default_context()
        return options

    async def run(self) -> None:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # type: ignore[import-untyped,unused-ignore]

        settings = self.settings
        producer = AIOKafkaProducer(
            **self._kafka(),
            client_id=f"hl7-gateway-{settings.provider.lower()}",
            acks="all",
            enable_idempotence=settings.kafka.enable_idempotence,
        )
        consumer = AIOKafkaConsumer(
            **self._kafka(),
            client_id=f"hl7-gateway-{settings.provider.lower()}",
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        client = mllp.MllpClient(
            settings.ris_host,
            settings.ris_port,
            ack_timeout_s=settings.ack_timeout_s,
            connect_timeout_s=settings.connect_timeout_s,
            backoff=mllp.Backoff(settings.backoff_initial_s, settings.backoff_max_s),
            max_bytes=settings.max_message_bytes,
        )

        async def publish(record: KafkaRecord) -> None:
            await producer.send_and_wait(
                record.topic, record.value, key=record.key, headers=list(record.headers)
            )

        inbound_desk = InboundDesk(settings, self.book, self.dead_letters, publish, self.metrics)
        order_desk = OrderDesk(
            settings, self.book, self.dead_letters, client, self.metrics, self.stopping
        )
        metrics_server = None
        await producer.start()
        server: asyncio.Server | None = None
        try:
            await consumer.start()
            await self._assign(consumer)

            async def on_connection(
                reader: asyncio.StreamReader, writer: asyncio.StreamWriter
            ) -> None:
                peer = writer.get_extra_info("peername")
                if not _allowed(peer[0] if peer else "", self._networks):
                    log.warning(
                        "connection from an address not allowed",
                        extra={"provider": settings.provider},
                    )
                    writer.close()
                    return
                await mllp.serve_connection(
                    reader,
                    writer,
                    inbound_desk.handle,
                    inbound_desk.framing_error,
                    idle_timeout_s=settings.idle_timeout_s,
                    max_bytes=settings.max_message_bytes,
                )

            server = await asyncio.start_server(
                on_connection,
                settings.listen_host,
                settings.listen_port,
                limit=settings.max_message_bytes + 16,
            )
            self.port = server.sockets[0].getsockname()[1]
            if settings.metrics_port is not None:
                metrics_server, _ = start_http_server(
                    settings.metrics_port, addr=settings.listen_host, registry=self.metrics.registry
                )
            self.listening.set()
            log.info(
                "gateway ready",
                extra={
                    "provider": settings.provider,
                    "topic": topics.provider_outbound(settings.provider),
                },
            )
            await self._consume(consumer, order_desk)
        finally:
            if server is not None:
                server.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(server.wait_closed(), timeout=5)
            if metrics_server is not None:
                metrics_server.shutdown()
            await client.close()
            with contextlib.suppress(Exception):
                await consumer.stop()
            with contextlib.suppress(Exception):
                await producer.stop()
            self.book.close()
            log.info("gateway stopped", extra={"provider": settings.provider})

    async def _assign(self, consumer: Any) -> None:
        from aiokafka.structs import TopicPartition  # type: ignore[import-untyped,unused-ignore]

        topic = topics.provider_outbound(self.settings.provider)
        partitions: set[int] | None = None
        for _ in range(100):
            partitions = consumer.partitions_for_topic(topic)
            if partitions:
                break
            await consumer.topics()  # refreshes the metadata
            await asyncio.sleep(0.1)
        if not partitions:
            raise RuntimeError(f"topic {topic} has no partitions: was it created?")
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        positions = self.book.positions(topic)
        for tp in assigned:
            if tp.partition in positions:
                consumer.seek(tp, positions[tp.partition])
            else:
                await consumer.seek_to_beginning(tp)

    async def _consume(self, consumer: Any, desk: OrderDesk) -> None:
        while not self.stopping.is_set():
            batch = await consumer.getmany(timeout_ms=200, max_records=50)
            for records in batch.values():
                for record in records:
                    if self.stopping.is_set():
                        return
                    try:
                        await desk.handle(record)
                    except mllp.Stopped:
                        return


async def run_until_signalled(settings: GatewaySettings) -> None:
    """Run a gateway until SIGINT or SIGTERM; then stop cleanly (an unanswered order is resent)."""
    import signal

    gateway = Gateway(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, gateway.stopping.set)
    await gateway.run()
