"""The gateway's two desks and its MLLP transport, with hand-written fakes for Kafka and the RIS."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pathway_cli.hl7 import mllp, v2
from pathway_cli.hl7.gateway import GatewayMetrics, GatewaySettings, InboundDesk, OrderDesk
from pathway_cli.hl7.state import DeadLetters, OrderBook
from pathway_schemas import topics
from pathway_schemas.envelope import KafkaRecord, from_record, to_record
from pathway_schemas.events import ProviderOrderBooked, ProviderOrderCancelled
from tests.unit.interop import samples
from tests.unit.interop.samples import MONDAY_MORNING, NHS_NUMBER, PROVIDER, REFERRAL_ID
from tests.unit.interop.test_hl7_orders import APPOINTMENT

OUTBOUND = topics.provider_outbound(PROVIDER)


def gateway_settings(state_dir: Path, **changes: Any) -> GatewaySettings:
    values: dict[str, Any] = {
        "provider": PROVIDER,
        "ris_host": "127.0.0.1",
        "ris_port": 1,
        "state_dir": state_dir,
        "backoff_initial_s": 0.01,
        "backoff_max_s": 0.02,
        **changes,
    }
    return GatewaySettings(**values)


@dataclass
class Parts:
    settings: GatewaySettings
    book: OrderBook
    dead_letters: DeadLetters
    metrics: GatewayMetrics
    published: list[KafkaRecord]


@pytest.fixture
def parts(tmp_path: Path) -> Parts:
    settings = gateway_settings(tmp_path)
    book = OrderBook(settings.state_path / "orders.sqlite")
    book.record(samples.BOOKED_ORDER, topic=OUTBOUND, partition=0, next_offset=1)
    return Parts(
        settings=settings,
        book=book,
        dead_letters=DeadLetters(settings.state_path / "dead-letters.jsonl"),
        metrics=GatewayMetrics.create(),
        published=[],
    )


def inbound_desk(parts: Parts, fail: bool = False) -> InboundDesk:
    async def publish(record: KafkaRecord) -> None:
        if fail:
            raise ConnectionError("broker down")
        parts.published.append(record)

    return InboundDesk(parts.settings, parts.book, parts.dead_letters, publish, parts.metrics)


def ack_of(answer: str) -> tuple[str, str, list[v2.SegmentView]]:
    message = v2.parse(answer)
    msa = message.first("MSA")
    assert msa is not None
    assert message.message_type[0] == "ACK"
    return msa.value(1), msa.value(2), message.segments("ERR")


def counter(parts: Parts, name: str, **labels: str) -> float:
    value = parts.metrics.registry.get_sample_value(name, labels)
    return value or 0.0


# --------------------------------------------------------------------------- inbound


async def test_an_accepted_message_is_published_on_the_providers_inbound_topic_then_acked(
    parts: Parts,
) -> None:
    desk = inbound_desk(parts)
    code, acknowledged, errors = ack_of(await desk.handle(samples.oru_r01()))
    assert (code, acknowledged, errors) == ("AA", "CRIS000103", [])
    (record,) = parts.published
    assert record.topic == topics.provider_inbound(PROVIDER)
    received = from_record(record.headers, record.value, topic=record.topic, key=record.key)
    assert received.envelope.source == "/providers/rxa01/hl7-gateway"
    assert received.event.event_type.endswith("provider.report_issued.v1")
    assert (
        counter(
            parts,
            "pathway_hl7_messages_total",
            provider=PROVIDER,
            direction="inbound",
            message_type="ORU^R01",
            ack="AA",
        )
        == 1
    )


async def test_a_resent_message_gives_the_same_event_id_so_it_applies_once(parts: Parts) -> None:
    desk = inbound_desk(parts)
    await desk.handle(samples.adt_a10())
    await desk.handle(samples.adt_a10())
    first, second = (dict(r.headers)["ce_id"] for r in parts.published)
    assert first == second


async def test_the_provider_is_the_gateways_own_whatever_the_message_claims(parts: Parts) -> None:
    desk = inbound_desk(parts)
    await desk.handle(samples.adt_a10())
    assert parts.published[0].topic == topics.provider_inbound(PROVIDER)
    claimed = samples.adt_a10().replace(f"|CRIS|{PROVIDER}|", "|CRIS|NWX02|", 1)
    code, _, errors = ack_of(await desk.handle(claimed))
    assert code == "AR"
    assert len(parts.published) == 1
    assert errors[0].value(2, 1, 1) == "MSH"


@pytest.mark.parametrize(
    ("message", "code", "reason"),
    [
        ("garbage", "AR", "malformed"),
        (samples.oru_r01(referral_id=samples.OTHER_REFERRAL_ID), "AE", "unknown_order"),
        (samples.orm_status("CM", study=False), "AE", "invalid"),
        (samples.adt_a10().replace("ADT^A10^ADT_A09", "ADT^A08^ADT_A01"), "AR", "unsupported"),
    ],
)
async def test_a_refused_message_is_nacked_dead_lettered_and_counted(
    parts: Parts, message: str, code: str, reason: str
) -> None:
    desk = inbound_desk(parts)
    answer, _, errors = ack_of(await desk.handle(message))
    assert answer == code
    assert errors
    assert errors[0].value(4) == "E"
    assert parts.published == []
    (letter,) = parts.dead_letters.read()
    assert (letter["direction"], letter["reason"], letter["ack_code"]) == ("inbound", reason, code)
    assert base64.b64decode(str(letter["original_b64"])).decode() == message
    assert (parts.dead_letters.path.stat().st_mode & 0o777) == 0o600
    assert (
        counter(
            parts,
            "pathway_hl7_dead_letters_total",
            provider=PROVIDER,
            direction="inbound",
            reason=reason,
        )
        == 1
    )


async def test_an_acknowledgement_never_repeats_the_patients_nhs_number(parts: Parts) -> None:
    desk = inbound_desk(parts)
    bad_nhs = samples.adt_a10().replace(NHS_NUMBER, "9434765918")
    answer = await desk.handle(bad_nhs)
    assert ack_of(answer)[0] == "AE"
    assert "9434765918" not in answer


async def test_a_broker_outage_asks_the_ris_to_resend_and_is_not_a_dead_letter(
    parts: Parts,
) -> None:
    desk = inbound_desk(parts, fail=True)
    code, _, errors = ack_of(await desk.handle(samples.adt_a10()))
    assert code == "AR"
    assert "resend" in errors[0].value(8)
    assert parts.dead_letters.read() == []


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.one_of(
        st.text(max_size=300),
        st.text(max_size=200).map(lambda t: "MSH|^~\\&|" + t),
        st.builds(
            lambda cut, noise: samples.oru_r01()[:cut] + noise,
            st.integers(0, 600),
            st.text(max_size=40),
        ),
    )
)
async def test_whatever_arrives_the_answer_is_a_readable_ack_and_nothing_crashes(
    parts: Parts, text: str
) -> None:
    code, _, _ = ack_of(await inbound_desk(parts).handle(text))
    assert code in ("AA", "AE", "AR")


# --------------------------------------------------------------------------- outbound


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    value: bytes | None
    key: bytes | None
    headers: Any


def outbound_record(event: Any, offset: int, event_id: str | None = None) -> Record:
    encoded = to_record(event, topic=OUTBOUND, source="/scheduling", event_id=event_id)
    return Record(OUTBOUND, 0, offset, encoded.value, encoded.key, list(encoded.headers))


BOOKED = ProviderOrderBooked(
    referral_id=samples.OTHER_REFERRAL_ID,
    occurred_at=MONDAY_MORNING,
    nhs_number=NHS_NUMBER,
    examination_code="XCHES",
    modality="XR",
    protocol="PA",
    priority="routine",
    clinical_question="Cough",
    appointment=APPOINTMENT,
)


class FakeRis:
    """Answers each order with the codes given, in turn (AA once they run out)."""

    def __init__(self, *codes: str, ack_other: bool = False) -> None:
        self.codes = list(codes)
        self.sent: list[str] = []
        self.ack_other = ack_other
        self.seen_known: list[bool] = []
        self.book: OrderBook | None = None

    async def send(
        self,
        message: str,
        *,
        stopping: asyncio.Event | None = None,
        on_retry: Callable[[int, Exception], None] | None = None,
    ) -> str:
        self.sent.append(message)
        parsed = v2.parse(message)
        if self.book is not None:
            self.seen_known.append(self.book.get(samples.OTHER_REFERRAL_ID) is not None)
        code = self.codes.pop(0) if self.codes else "AA"
        if self.ack_other:
            self.ack_other = False
            return samples.join(
                "MSH|^~\\&|RIS|RXA01|||20260302||ACK|R1|P|2.5", "MSA|AA|SOMETHING-ELSE"
            )
        problems = (
            [v2.Problem("OBR-4", v2.TABLE_VALUE_NOT_FOUND, "unknown procedure")]
            if code != "AA"
            else []
        )
        return v2.acknowledgement(
            parsed,
            code,
            control_id="R1",
            at=MONDAY_MORNING,
            application="RIS",
            facility=PROVIDER,
            problems=problems,
        )


def order_desk(parts: Parts, ris: FakeRis) -> OrderDesk:
    ris.book = parts.book
    return OrderDesk(
        parts.settings, parts.book, parts.dead_letters, ris, parts.metrics, asyncio.Event()
    )


async def test_an_order_is_known_before_it_is_sent_and_the_position_moves_on_aa(
    parts: Parts,
) -> None:
    ris = FakeRis("AA")
    await order_desk(parts, ris).handle(outbound_record(BOOKED, offset=7))
    assert ris.seen_known == [True]
    assert parts.book.positions(OUTBOUND) == {0: 8}
    known = parts.book.get(samples.OTHER_REFERRAL_ID)
    assert known is not None
    assert known.slot_id == APPOINTMENT.slot_id
    assert parts.dead_letters.read() == []


async def test_an_order_the_ris_refuses_is_dead_lettered_and_the_next_one_goes(
    parts: Parts,
) -> None:
    ris = FakeRis("AE")
    desk = order_desk(parts, ris)
    await desk.handle(outbound_record(BOOKED, offset=0))
    cancel = ProviderOrderCancelled(
        referral_id=samples.OTHER_REFERRAL_ID, occurred_at=MONDAY_MORNING, reason="patient_request"
    )
    await desk.handle(outbound_record(cancel, offset=1))
    assert len(ris.sent) == 2
    (letter,) = parts.dead_letters.read()
    assert (letter["direction"], letter["reason"], letter["ack_code"]) == (
        "outbound",
        "rejected_by_ris",
        "AE",
    )
    assert letter["problems"] == [
        {"location": "OBR-4", "code": v2.TABLE_VALUE_NOT_FOUND, "text": "unknown procedure"}
    ]
    assert parts.book.positions(OUTBOUND) == {0: 2}


async def test_a_rejection_is_resent_a_few_times_before_it_is_dead_lettered(parts: Parts) -> None:
    ris = FakeRis("AR", "AR", "AR")
    await order_desk(parts, ris).handle(outbound_record(BOOKED, offset=0))
    assert len(ris.sent) == parts.settings.ris_rejection_attempts == 3
    assert len(set(ris.sent)) == 1  # the same message, the same control id
    assert parts.dead_letters.read()[0]["ack_code"] == "AR"


async def test_a_rejection_followed_by_acceptance_is_delivered(parts: Parts) -> None:
    ris = FakeRis("AR", "AA")
    await order_desk(parts, ris).handle(outbound_record(BOOKED, offset=0))
    assert len(ris.sent) == 2
    assert parts.dead_letters.read() == []


async def test_an_answer_to_another_message_means_send_again(parts: Parts) -> None:
    ris = FakeRis(ack_other=True)
    await order_desk(parts, ris).handle(outbound_record(BOOKED, offset=0))
    assert len(ris.sent) == 2
    assert parts.dead_letters.read() == []


async def test_a_change_to_an_unknown_order_or_a_bad_record_is_dead_lettered_not_sent(
    parts: Parts,
) -> None:
    ris = FakeRis()
    desk = order_desk(parts, ris)
    cancel = ProviderOrderCancelled(
        referral_id=samples.OTHER_REFERRAL_ID, occurred_at=MONDAY_MORNING, reason="x"
    )
    await desk.handle(outbound_record(cancel, offset=0))
    await desk.handle(Record(OUTBOUND, 0, 1, b"{not json", REFERRAL_ID.encode(), []))
    assert ris.sent == []
    assert [d["reason"] for d in parts.dead_letters.read()] == ["unknown_order", "invalid_event"]
    assert parts.book.positions(OUTBOUND) == {0: 2}


async def test_the_order_book_survives_a_restart(parts: Parts) -> None:
    await order_desk(parts, FakeRis()).handle(outbound_record(BOOKED, offset=3))
    parts.book.close()
    reopened = OrderBook(parts.settings.state_path / "orders.sqlite")
    try:
        assert reopened.positions(OUTBOUND) == {0: 4}
        assert reopened.get(samples.OTHER_REFERRAL_ID) is not None
    finally:
        reopened.close()


# --------------------------------------------------------------------------- MLLP


@contextlib.asynccontextmanager
async def mllp_server(
    answer: Callable[[str], str | None],
) -> AsyncIterator[tuple[int, list[str]]]:
    """A RIS that answers each frame (None: stays silent), on a free loopback port."""
    received: list[str] = []

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                text = await mllp.read_frame(reader)
                if text is None:
                    break
                received.append(text)
                reply = answer(text)
                if reply is not None:
                    writer.write(mllp.frame(reply))
                    await writer.drain()
        except (ConnectionError, mllp.FramingError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_connection, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], received
    finally:
        server.close()
        await server.wait_closed()


async def test_mllp_client_frames_a_message_and_reads_the_framed_answer() -> None:
    async with mllp_server(lambda text: "ACK for " + text[:3]) as (port, received):
        client = mllp.MllpClient("127.0.0.1", port, ack_timeout_s=2)
        try:
            assert await client.send("MSH|one") == "ACK for MSH"
            assert await client.send("MSH|two") == "ACK for MSH"
        finally:
            await client.close()
    assert received == ["MSH|one", "MSH|two"]
    assert client.connects == 1


async def test_mllp_client_resends_after_a_silent_ris_on_a_new_connection() -> None:
    calls: list[str] = []

    def first_silent(text: str) -> str | None:
        calls.append(text)
        return None if len(calls) == 1 else "ACK"

    retries: list[int] = []
    async with mllp_server(first_silent) as (port, received):
        client = mllp.MllpClient(
            "127.0.0.1", port, ack_timeout_s=0.2, backoff=mllp.Backoff(0.01, 0.02)
        )
        try:
            answer = await client.send("MSH|x", on_retry=lambda n, e: retries.append(n))
        finally:
            await client.close()
    assert answer == "ACK"
    assert received == ["MSH|x", "MSH|x"]
    assert retries == [1]
    assert client.connects == 2


async def test_mllp_client_keeps_trying_until_the_ris_is_up_and_stops_when_told() -> None:
    client = mllp.MllpClient(
        "127.0.0.1", 1, connect_timeout_s=0.2, backoff=mllp.Backoff(0.01, 0.02)
    )
    stopping = asyncio.Event()
    retries: list[int] = []

    def on_retry(attempt: int, error: Exception) -> None:
        retries.append(attempt)
        if attempt == 3:
            stopping.set()

    with pytest.raises(mllp.Stopped):
        await client.send("MSH|x", stopping=stopping, on_retry=on_retry)
    assert retries == [1, 2, 3]


async def test_mllp_server_answers_each_message_and_refuses_bytes_outside_a_frame(
    parts: Parts,
) -> None:
    desk = inbound_desk(parts)

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await mllp.serve_connection(
            reader, writer, desk.handle, desk.framing_error, idle_timeout_s=2
        )

    server = await asyncio.start_server(on_connection, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(mllp.frame(samples.adt_a10()))
        await writer.drain()
        answer = await asyncio.wait_for(mllp.read_frame(reader), 5)
        assert answer is not None
        assert ack_of(answer)[0] == "AA"
        writer.write(b"no start block" + mllp.END)
        await writer.drain()
        answer = await asyncio.wait_for(mllp.read_frame(reader), 5)
        assert answer is not None
        assert ack_of(answer)[0] == "AR"
        assert await asyncio.wait_for(reader.read(), 5) == b""  # out of step: closed
        writer.close()
    finally:
        server.close()
        await server.wait_closed()
    assert [d["reason"] for d in parts.dead_letters.read()] == ["malformed"]


async def test_a_frame_over_the_size_limit_is_refused() -> None:
    reader = asyncio.StreamReader(limit=64)
    reader.feed_data(mllp.START + b"x" * 200 + mllp.END)
    reader.feed_eof()
    with pytest.raises(mllp.FramingError):
        await mllp.read_frame(reader, max_bytes=48)


async def test_a_frame_cut_short_is_refused_and_a_clean_close_is_not_an_error() -> None:
    cut = asyncio.StreamReader()
    cut.feed_data(mllp.START + b"MSH|half")
    cut.feed_eof()
    with pytest.raises(mllp.FramingError):
        await mllp.read_frame(cut)
    clean = asyncio.StreamReader()
    clean.feed_eof()
    assert await mllp.read_frame(clean) is None
