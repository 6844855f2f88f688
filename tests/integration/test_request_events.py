"""The request service's Kafka side: the intake topic, and the timeline from every family topic."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import nhs_number
import pytest
from aiokafka import AIOKafkaProducer

from pathway_schemas import new_referral_id, topics
from pathway_schemas.envelope import to_record
from pathway_schemas.events import (
    Appointment,
    AppointmentBooked,
    ExaminationCompleted,
    ReferralRequestAccepted,
    ReferralRequested,
    ReferralRequestRejected,
    ReferralSubmitted,
    ReportDelivered,
    ReportIssued,
    VettingAccepted,
    VettingQueued,
)
from pathway_schemas.values import FindingFlag
from services.common.clock import FixedClock
from services.request.main import create_app
from services.request.settings import Settings
from tests.harness import TopicReader, publish, running_service
from tests.helpers import wait_until

pytestmark = pytest.mark.integration

PRACTICE_A = {"X-API-Key": "dev-practice-a81001"}
START = datetime(2026, 10, 23, 9, 0, tzinfo=UTC)
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def synthetic_nhs_number() -> str:
    return str(nhs_number.generate(for_region=nhs_number.REGION_SYNTHETIC)[0])


def requested(request_id: str, **changes: Any) -> ReferralRequested:
    values: dict[str, Any] = {
        "request_id": request_id,
        "occurred_at": START,
        "nhs_number": synthetic_nhs_number(),
        "practice_ods": "A81001",
        "referrer_id": "G1234567",
        "examination_code": "XCHES",
        "clinical_question": "Breathlessness on exertion",
        "priority": "urgent",
    }
    return ReferralRequested(**{**values, **changes})


async def send_raw(
    bootstrap: str, topic: str, value: bytes, headers: list[tuple[str, bytes]]
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=b"intake", headers=headers)
    finally:
        await producer.stop()


async def test_kafka_intake_accepts_and_rejects_with_field_reasons(
    kafka: str, service_settings: Any
) -> None:
    app = create_app(service_settings(Settings, "request"), clock=FixedClock(START))
    good = requested("practice-system:0001")
    async with (
        running_service(app) as svc,
        TopicReader(
            kafka, topics.REFERRAL_INTAKE_REPLIES, topics.REFERRAL, topics.dead_letter("request")
        ) as reader,
    ):
        await publish(
            kafka,
            [
                (good, topics.REFERRAL_INTAKE),
                (requested("practice-system:0002", practice_ods="Z99999"), topics.REFERRAL_INTAKE),
                (requested("practice-system:0003", referrer_id="G2345678"), topics.REFERRAL_INTAKE),
                # Asked again as a new record: the same referral, told again.
                (good, topics.REFERRAL_INTAKE),
                # The same request id for something else: refused, naming the id.
                (good.model_copy(update={"examination_code": "XABDO"}), topics.REFERRAL_INTAKE),
            ],
            source="/practice-system/a81001",
        )
        # A record that does not meet the contract (bad check digit): dead-lettered, and answered.
        body = json.loads(requested("practice-system:0004").model_dump_json())
        body["nhs_number"] = "9434765918"
        headers = [
            ("ce_specversion", b"1.0"),
            ("ce_id", b"8a7c0b36-4f2e-4a51-9d0c-5b1f0e3d2c10"),
            ("ce_source", b"/practice-system/a81001"),
            ("ce_type", ReferralRequested.event_type.encode()),
            ("ce_time", b"2026-10-23T09:00:00Z"),
            ("ce_subject", b"practice-system:0004"),
            ("ce_occurredat", b"2026-10-23T09:00:00Z"),
            ("content-type", b"application/json"),
        ]
        await send_raw(kafka, topics.REFERRAL_INTAKE, json.dumps(body).encode(), headers)
        await send_raw(kafka, topics.REFERRAL_INTAKE, b"\x00 not an event", [])

        def replies() -> list[Any]:
            return [
                e.event for e in reader.events() if e.event.topic == topics.REFERRAL_INTAKE_REPLIES
            ]

        await reader.wait_for(
            lambda _: len(replies()) >= 7, what="seven replies on the intake reply topic"
        )
        accepted = [r for r in replies() if isinstance(r, ReferralRequestAccepted)]
        rejected = {r.request_id: r for r in replies() if isinstance(r, ReferralRequestRejected)}
        assert [a.request_id for a in accepted] == ["practice-system:0001"] * 2
        assert accepted[0].referral_id == accepted[1].referral_id
        assert accepted[0].guidance.outcome == "indicated"
        assert [e.field for e in rejected["practice-system:0002"].errors] == ["practice_ods"]
        assert [e.field for e in rejected["practice-system:0003"].errors] == ["referrer_id"]
        assert [e.field for e in rejected["practice-system:0004"].errors] == ["nhs_number"]
        assert [e.field for e in rejected["practice-system:0001"].errors] == ["request_id"]
        assert [e.field for e in rejected["(unknown)"].errors] == [
            "header:ce_specversion",
            "header:ce_id",
            "header:ce_source",
            "header:ce_type",
            "header:ce_subject",
        ]
        assert all("9434765918" not in r.model_dump_json() for r in rejected.values())

        await reader.wait_for(
            lambda rs: sum(r.topic == topics.dead_letter("request") for r in rs) >= 2,
            what="two dead letters",
        )
        submitted = [e.event for e in reader.events() if isinstance(e.event, ReferralSubmitted)]
        assert [(s.referral_id, s.channel) for s in submitted] == [
            (accepted[0].referral_id, "kafka")
        ]

        record = await svc.client.get(f"/referrals/{accepted[0].referral_id}", headers=PRACTICE_A)
        assert record.json()["channel"] == "kafka"
        assert record.json()["nhs_number"] == good.nhs_number
        metrics = (await svc.client.get("/metrics")).text
        for reason, count in (
            ("unknown_practice", 1),
            ("unknown_referrer", 1),
            ("idempotency_conflict", 1),
            ("schema", 1),
            ("undecodable", 1),
        ):
            assert (
                f'pathway_intake_rejections_total{{channel="kafka",reason="{reason}"}} {count}.0'
                in metrics
            )
        assert (
            'pathway_referrals_received_total{modality="XR",outcome="accepted",priority="urgent"} 1.0'
            in metrics
        )


async def test_timeline_keeps_every_family_once_in_order_and_state_from_the_set(
    kafka: str, service_settings: Any
) -> None:
    clock = FixedClock(START)
    app = create_app(service_settings(Settings, "request"), clock=clock)
    async with running_service(app) as svc:
        c = svc.client
        response = await c.post(
            "/referrals",
            json={
                "nhs_number": synthetic_nhs_number(),
                "referrer_id": "G1234567",
                "examination_code": "XCHES",
                "clinical_question": "Cough for six weeks in a smoker",
                "priority": "routine",
            },
            headers={**PRACTICE_A, "Idempotency-Key": "timeline-0001"},
        )
        rid = response.json()["referral_id"]
        submitted_id = response.json()["timeline"][0]["event_id"]
        at = START
        appointment = Appointment(
            provider_ods="RXA01",
            site_id="main",
            slot_id="s1",
            start=at + timedelta(days=3),
            end=at + timedelta(days=3, minutes=10),
        )
        # Published latest first, and across families: the state must not depend on arrival.
        report = ReportIssued(
            referral_id=rid,
            occurred_at=at + timedelta(days=3, hours=5),
            report_id="r1",
            status="final",
            provider_ods="RXA01",
            practice_ods="A81001",
            text="No focal abnormality.",
            conclusion="Normal chest.",
            finding_flag=FindingFlag.ROUTINE,
            reported_by="R5555",
            examination_completed_at=at + timedelta(days=3, minutes=15),
            due_at=at + timedelta(days=4),
            within_target=True,
        )
        completed = ExaminationCompleted(
            referral_id=rid,
            occurred_at=at + timedelta(days=3, minutes=15),
            provider_ods="RXA01",
            site_id="main",
            study={"study_instance_uid": "1.2.3.4", "accession_number": "ACC9"},
            modality="XR",
            examination_code="XCHES",
        )
        booked = AppointmentBooked(
            referral_id=rid,
            occurred_at=at + timedelta(days=1),
            appointment=appointment,
            booked_by="patient",
            priority="routine",
            modality="XR",
            examination_code="XCHES",
            wait_seconds=259200,
            within_target=True,
        )
        accepted = VettingAccepted(
            referral_id=rid,
            occurred_at=at + timedelta(hours=2),
            nhs_number="9434765919",
            practice_ods="A81001",
            referrer_id="G1234567",
            examination_code="XCHES",
            modality="XR",
            ionising=True,
            clinical_question="Cough for six weeks in a smoker",
            care_setting="gp",
            priority="routine",
            protocol="PA chest",
            referral_received_at=at,
            justified_by="R1234",
            decided_by="R1234",
        )
        queued = VettingQueued(
            referral_id=rid,
            occurred_at=at + timedelta(minutes=1),
            priority="routine",
            modality="XR",
            why="needs a clinician",
        )
        accepted_record = to_record(
            accepted,
            topic=topics.VETTING,
            source="/imaging/vetting",
            trace={"traceparent": TRACEPARENT},
        )
        producer = AIOKafkaProducer(bootstrap_servers=kafka)
        await producer.start()
        try:
            for event, topic, source in (
                (report, topics.REPORT, "/imaging/reporting"),
                (completed, topics.EXAMINATION, "/imaging/reporting"),
                (booked, topics.BOOKING, "/imaging/scheduling"),
            ):
                record = to_record(event, topic=topic, source=source)
                await producer.send_and_wait(
                    record.topic, record.value, key=record.key, headers=list(record.headers)
                )
            # A redelivery: the same record (same event id) twice.
            for _ in range(2):
                await producer.send_and_wait(
                    accepted_record.topic,
                    accepted_record.value,
                    key=accepted_record.key,
                    headers=list(accepted_record.headers),
                )
        finally:
            await producer.stop()
        clock.advance(timedelta(days=5))
        await publish(kafka, [(queued, topics.VETTING)], source="/imaging/vetting")

        registry = svc.runtime.metrics.registry

        def handled(outcome: str, event_type: str | None = None) -> float:
            return sum(
                float(sample.value)
                for metric in registry.collect()
                if metric.name == "pathway_events_handled"
                for sample in metric.samples
                if sample.name == "pathway_events_handled_total"
                and sample.labels["outcome"] == outcome
                and event_type in (None, sample.labels["event_type"])
            )

        async def all_seen() -> Any:
            # Every published record (the redelivery too), and our own submission back.
            return handled("applied") + handled("duplicate") >= 7

        await wait_until(all_seen, timeout=30, message="all events consumed")
        document = (await c.get(f"/referrals/{rid}", headers=PRACTICE_A)).json()
        timeline = document["timeline"]
        assert document["state"] == "reported"
        assert [e["event_type"] for e in timeline] == [
            ReferralSubmitted.event_type,
            VettingQueued.event_type,
            VettingAccepted.event_type,
            AppointmentBooked.event_type,
            ExaminationCompleted.event_type,
            ReportIssued.event_type,
        ]
        assert len({e["event_id"] for e in timeline}) == len(timeline)
        assert submitted_id in {e["event_id"] for e in timeline}
        vetting = timeline[2]
        assert vetting["actor"] == "/imaging/vetting"
        assert vetting["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
        assert vetting["event_id"] == dict(accepted_record.headers)["ce_id"].decode()
        assert vetting["detail"]["protocol"] == "PA chest"
        assert "9434765919" not in json.dumps(timeline)
        assert datetime.fromisoformat(timeline[1]["received_at"]) == START + timedelta(days=5)
        assert timeline[0]["actor"] == "/imaging/request"
        assert document["open"] is False

        # The report is delivered later: the state moves on; a replay of everything changes nothing.
        delivered = ReportDelivered(
            referral_id=rid,
            occurred_at=at + timedelta(days=3, hours=6),
            report_id="r1",
            practice_ods="A81001",
            receipt_id="rcpt-1",
            attempts=1,
            transport="gp-connect",
        )
        await publish(kafka, [(delivered, topics.NOTIFICATION)], source="/imaging/notify")
        await wait_until(
            lambda: _state_is(c, rid, "delivered"), timeout=20, message="delivery recorded"
        )
        producer = AIOKafkaProducer(bootstrap_servers=kafka)
        await producer.start()
        try:
            await producer.send_and_wait(
                accepted_record.topic,
                accepted_record.value,
                key=accepted_record.key,
                headers=list(accepted_record.headers),
            )
        finally:
            await producer.stop()
        repeats_before = handled("duplicate", VettingAccepted.event_type)
        marker = await publish(
            kafka,
            [
                (
                    queued.model_copy(update={"occurred_at": at + timedelta(minutes=2)}),
                    topics.VETTING,
                )
            ],
        )

        referrals = svc.runtime.store.db["referrals"]

        async def marker_seen() -> Any:
            return await referrals.find_one({"timeline.event_id": marker[0]})

        await wait_until(marker_seen, timeout=20, message="marker consumed")
        # The replay came before the marker on the same partition, and was dropped as a repeat.
        assert handled("duplicate", VettingAccepted.event_type) == repeats_before + 1
        final = (await c.get(f"/referrals/{rid}", headers=PRACTICE_A)).json()
        assert final["state"] == "delivered"
        assert [e["event_type"] for e in final["timeline"]].count(VettingAccepted.event_type) == 1
        assert len(final["timeline"]) == 8

        # Events about referrals this service never recorded are kept, not dropped, and not shown.
        strangers = [new_referral_id(), new_referral_id()]
        orphan_ids = await publish(
            kafka,
            [(queued.model_copy(update={"referral_id": r}), topics.VETTING) for r in strangers],
        )

        async def orphans_seen() -> Any:
            found = {"timeline.event_id": {"$in": orphan_ids}}
            return await referrals.count_documents(found) == 2

        await wait_until(orphans_seen, timeout=20, message="orphan events consumed")
        for stranger in strangers:
            kept = await referrals.find_one({"_id": stranger})
            assert kept is not None
            assert [e["event_type"] for e in kept["timeline"]] == [VettingQueued.event_type]
            assert (await c.get(f"/referrals/{stranger}", headers=PRACTICE_A)).status_code == 404


async def _state_is(client: Any, referral_id: str, state: str) -> Any:
    response = await client.get(f"/referrals/{referral_id}", headers=PRACTICE_A)
    return bool(response.json()["state"] == state)
