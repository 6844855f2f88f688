"""The runtime kit on the real embedded broker and store: consume, apply once, dead-letter."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pathway_schemas import new_referral_id, topics
from pathway_schemas.envelope import to_record
from pathway_schemas.events import ReferralSubmitted, VettingQueued
from services.vetting.main import create_app
from services.vetting.settings import Settings
from tests.harness import TopicReader, running_service

SYNTHETIC_NHS = "9434765919"


def submitted() -> ReferralSubmitted:
    return ReferralSubmitted(
        referral_id=new_referral_id(),
        occurred_at=datetime.now(UTC),
        nhs_number=SYNTHETIC_NHS,
        practice_ods="A81001",
        referrer_id="G1234567",
        # Not open access, so the vetting service queues it for a person (what this test reads).
        examination_code="CCHES",
        clinical_question="Cough for six weeks in a smoker",
        priority="routine",
        modality="CT",
        ionising=True,
        guidance={"outcome": "indicated"},
    )


async def test_event_is_consumed_applied_once_and_poison_is_dead_lettered(
    kafka: str, service_settings: Any
) -> None:
    from aiokafka import AIOKafkaProducer

    event = submitted()
    record = to_record(event, topic=topics.REFERRAL, source="/tests")
    app = create_app(service_settings(Settings, "vetting"))
    async with running_service(app) as svc:
        producer = AIOKafkaProducer(bootstrap_servers=kafka)
        await producer.start()
        try:
            for _ in range(2):  # a redelivery: must change nothing
                await producer.send_and_wait(
                    record.topic, record.value, key=record.key, headers=list(record.headers)
                )
            await producer.send_and_wait(topics.REFERRAL, b"{not json", key=b"junk", headers=[])
        finally:
            await producer.stop()

        async with TopicReader(kafka, topics.VETTING, topics.dead_letter("vetting")) as reader:
            await reader.wait_for(
                lambda rs: {r.topic for r in rs} == {topics.VETTING, topics.dead_letter("vetting")},
                what="a queued event and a dead letter",
            )
            letters = [r for r in reader.records if r.topic == topics.dead_letter("vetting")]
            assert dict(letters[0].headers)["dlq_reason"] == b"invalid"
            assert b"9434765919" not in (letters[0].key or b"")

        stored = await svc.runtime.store.db["worklist"].find_one({"_id": event.referral_id})
        assert stored is not None
        assert stored["state"] == "waiting"
        assert await svc.runtime.store.db["processed"].count_documents({}) == 1
        queued = [e for e in reader.events() if isinstance(e.event, VettingQueued)]
        assert [e.envelope.subject for e in queued] == [event.referral_id]
