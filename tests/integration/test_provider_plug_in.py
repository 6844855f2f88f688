"""A provider plugs in while the services run: no restart, no topic made by hand.

Scheduling and reporting read every provider's inbound topic by pattern; a provider added
through the registry API gets its two topics from the scheduling service (embedded stack
and development), both services see the new inbound topic at their next metadata refresh,
and act on its events. The inbound topic of a provider outside the registry is read too,
and its events are refused as denied.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition
from faststream import AckPolicy
from hypothesis import given
from hypothesis import strategies as st

from pathway_cli.stack import create_topics
from pathway_schemas import topics
from pathway_schemas.base import PathwayEvent, ReferralEvent
from pathway_schemas.events import (
    AppointmentBooked,
    AppointmentsOffered,
    DeadLetter,
    ExaminationCompleted,
    PatientArrived,
    ProviderExaminationCompleted,
    ProviderPatientArrived,
)
from pathway_schemas.values import StudyReference
from services.common.clock import FixedClock
from services.common.messaging import Consumer
from services.common.settings import KafkaSettings
from services.reporting.main import create_app as reporting_app
from services.reporting.settings import Settings as ReportingSettings
from services.scheduling.main import create_app as scheduling_app
from services.scheduling.settings import Settings as SchedulingSettings
from tests.harness import RunningService, TopicReader, publish, running_service
from tests.helpers import wait_until
from tests.unit.scheduling.builders import T0, accepted

REPO = Path(__file__).resolve().parents[2]
OPERATOR = {"X-API-Key": "dev-operator"}
CLERK = {"X-API-Key": "dev-booking-clerk"}
NEW, STRANGER, FROM_FILE = "NEW04", "ZZZ09", "FIL06"
ODS = st.from_regex(r"[A-Z0-9]{3,10}", fullmatch=True)


@given(ODS)
def test_the_pattern_reads_every_providers_inbound_topic_and_nothing_else(code: str) -> None:
    inbound = topics.provider_inbound(code)
    assert re.match(Consumer.PROVIDER_INBOUND, inbound)
    assert topics.provider_of_topic(inbound) == code
    others = [topics.provider_outbound(code), *topics.all_topics(), f"{inbound}.copy"]
    assert not [t for t in others if re.match(Consumer.PROVIDER_INBOUND, t)]


@given(st.from_regex(Consumer.PROVIDER_INBOUND, fullmatch=True))
def test_every_topic_the_pattern_reads_names_its_provider(topic: str) -> None:
    # Identity comes from the topic: a topic read with no provider in its name would be refused.
    assert topics.provider_of_topic(topic) is not None


def mr_provider(ods: str, site_id: str) -> dict[str, Any]:
    return {
        "ods": ods,
        "name": f"Scanning {ods}",
        "sites": [{"id": site_id, "name": site_id, "area": "Quayside", "modalities": {"MR": {}}}],
    }


def config_without_mr(tmp_path: Path) -> Path:
    """The registry file has one X-ray provider whose topics nobody made: an MR referral can
    be booked only with the new provider."""
    config = tmp_path / "config"
    config.mkdir()
    shutil.copy(REPO / "config" / "principals.json", config / "principals.json")
    xr_only = {
        "ods": FROM_FILE,
        "name": "Riverside Imaging",
        "sites": [
            {"id": "RIV-EAST", "name": "East", "area": "Riverside", "modalities": {"XR": {}}}
        ],
    }
    (config / "providers.json").write_text(json.dumps({"providers": [xr_only]}))
    return config


async def existing_topics(bootstrap: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def all_committed(bootstrap: str, group: str, topic_names: list[str]) -> bool:
    """The group has committed these topics to their end (read without joining the group)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await consumer.start()
    try:
        partitions = [
            TopicPartition(t, p)
            for t in topic_names
            for p in consumer.partitions_for_topic(t) or ()
        ]
        for partition, end in (await consumer.end_offsets(partitions)).items():
            if (await consumer.committed(partition) or 0) < end:
                return False
        return bool(partitions)
    finally:
        await consumer.stop()


def of_referral(reader: TopicReader, kind: type[ReferralEvent], referral_id: str) -> list[Any]:
    return [
        r.event
        for r in reader.events()
        if isinstance(r.event, kind) and r.event.referral_id == referral_id
    ]


def denials(reader: TopicReader, service: str) -> list[DeadLetter]:
    return [
        DeadLetter.model_validate(json.loads(r.value))
        for r in reader.records
        if r.topic == topics.dead_letter(service) and dict(r.headers)["dlq_reason"] == b"denied"
    ]


def check_subscriber(service: RunningService, name: str) -> None:
    """One subscriber reads its topics and the pattern, with the group's guarantees."""
    consumer = service.runtime.consumer
    [subscriber] = service.runtime.broker.subscribers
    assert subscriber.group_id == name
    assert subscriber.ack_policy == AckPolicy.NACK_ON_ERROR
    told = subscriber.pattern.broker_address  # what the Kafka client is given
    inbound = {topics.provider_inbound(NEW), topics.provider_inbound(STRANGER)}
    for topic in topics.all_topics((NEW, STRANGER)):
        expected = topic in consumer.topics or topic in inbound
        assert consumer.reads(topic) is expected, topic
        assert bool(re.match(told, topic)) is expected, topic


async def test_a_provider_added_while_scheduling_and_reporting_run_is_read_by_both_without_a_restart(
    kafka: str, service_settings: Any, tmp_path: Path
) -> None:
    config = config_without_mr(tmp_path)
    # The embedded stack's refresh is 2 s; shorter here to keep the test quick.
    fast = KafkaSettings(
        bootstrap_servers=kafka,
        session_timeout_ms=6000,
        fetch_max_wait_ms=50,
        metadata_max_age_ms=500,
    )
    clock = FixedClock(T0 + timedelta(hours=1))
    scheduling = scheduling_app(
        service_settings(
            SchedulingSettings,
            "scheduling",
            kafka=fast,
            config_dir=config,
            create_provider_topics=True,
        ),
        clock=clock,
    )
    reporting = reporting_app(
        service_settings(ReportingSettings, "reporting", kafka=fast, config_dir=config),
        clock=clock,
    )
    new_topics = {topics.provider_inbound(NEW), topics.provider_outbound(NEW)}
    watched = (
        topics.BOOKING,
        topics.EXAMINATION,
        topics.dead_letter("scheduling"),
        topics.dead_letter("reporting"),
    )
    async with contextlib.AsyncExitStack() as stack:
        sched, report = await asyncio.gather(
            stack.enter_async_context(running_service(scheduling)),
            stack.enter_async_context(running_service(reporting)),
        )
        reader = await stack.enter_async_context(TopicReader(kafka, *watched))
        check_subscriber(sched, "scheduling")
        check_subscriber(report, "reporting")
        assert not new_topics & await existing_topics(kafka)

        async def file_topics_made() -> Any:
            made = await existing_topics(kafka)
            return {topics.provider_inbound(FROM_FILE), topics.provider_outbound(FROM_FILE)} <= made

        await wait_until(file_topics_made, timeout=20, message="the registry's topics at start")

        added = await sched.client.put(
            f"/providers/{NEW}", json=mr_provider(NEW, "N-1"), headers=OPERATOR
        )
        assert added.status_code == 201, added.text
        assert "without a restart" in added.json()["note"]
        assert new_topics <= await existing_topics(kafka)

        referral = accepted("MKNEL", received_at=T0)  # MR knee: only the new provider has MR
        await publish(kafka, [(referral, topics.VETTING)])
        await reader.wait_for(
            lambda _: bool(of_referral(reader, AppointmentsOffered, referral.referral_id)),
            what="offers",
        )
        [offered] = of_referral(reader, AppointmentsOffered, referral.referral_id)
        offer = offered.offers[0]
        assert offer.provider_ods == NEW
        chosen = await sched.client.post(
            f"/bookings/{referral.referral_id}/choose",
            json={"slot_id": offer.slot_id},
            headers=CLERK,
        )
        assert chosen.status_code == 200, chosen.text
        await reader.wait_for(
            lambda _: bool(of_referral(reader, AppointmentBooked, referral.referral_id)),
            what="the booking",
        )

        # The new provider publishes on its new inbound topic; nobody restarts anything.
        clock.set(offer.start + timedelta(minutes=30))
        study = StudyReference(
            study_instance_uid="1.2.826.0.1.3680043.8.498.4242", accession_number="NEW4242"
        )
        from_new: list[tuple[PathwayEvent, str]] = [
            (
                ProviderPatientArrived(
                    referral_id=referral.referral_id,
                    occurred_at=offer.start + timedelta(minutes=2),
                    site_id="N-1",
                ),
                topics.provider_inbound(NEW),
            ),
            (
                ProviderExaminationCompleted(
                    referral_id=referral.referral_id,
                    occurred_at=offer.start + timedelta(minutes=25),
                    site_id="N-1",
                    study=study,
                ),
                topics.provider_inbound(NEW),
            ),
        ]
        await publish(kafka, from_new, source=f"/providers/{NEW.lower()}/ris")

        async def attended() -> Any:
            booking = await sched.client.get(f"/bookings/{referral.referral_id}", headers=CLERK)
            return bool(booking.json()["state"] == "attended")

        await wait_until(attended, timeout=30, message="scheduling recorded the arrival")
        await reader.wait_for(
            lambda _: bool(
                of_referral(reader, PatientArrived, referral.referral_id)
                and of_referral(reader, ExaminationCompleted, referral.referral_id)
            ),
            what="reporting's examination events",
        )
        [completed] = of_referral(reader, ExaminationCompleted, referral.referral_id)
        assert completed.study == study
        # Its reporting worklist exists too, though reporting's file never named it.
        worklist = await report.client.get(
            "/worklist", params={"provider": NEW}, headers={"X-API-Key": "dev-reporter"}
        )
        assert worklist.status_code == 200, worklist.text
        assert [e["referral_id"] for e in worklist.json()["examinations"]] == [referral.referral_id]

        # A provider outside the registry whose topic exists anyway: both services read it
        # (the pattern) and refuse its event, since the referral is not assigned to it.
        stranger = topics.provider_inbound(STRANGER)
        await create_topics(kafka, [stranger])
        arrived = ProviderPatientArrived(
            referral_id=referral.referral_id, occurred_at=offer.start, site_id="N-1"
        )
        await publish(kafka, [(arrived, stranger)], source="/providers/zzz09/ris")
        await reader.wait_for(
            lambda _: bool(denials(reader, "scheduling") and denials(reader, "reporting")),
            what="the stranger's event denied by both services",
        )
        for service in ("scheduling", "reporting"):
            assert [(d.original_topic, d.event_type) for d in denials(reader, service)] == [
                (stranger, ProviderPatientArrived.event_type)
            ], service
        for running in (sched, report):
            denied = running.runtime.metrics.registry.get_sample_value(
                "pathway_authz_denied_total",
                {"service": running.runtime.service, "channel": "kafka"},
            )
            assert denied == 1

        # Each group committed both new topics to the end: applied or refused, never left.
        provider_topics = [topics.provider_inbound(NEW), stranger]
        for group in ("scheduling", "reporting"):

            async def committed(group: str = group) -> Any:
                return await all_committed(kafka, group, provider_topics)

            await wait_until(committed, timeout=30, message=f"{group} committed to the end")
