"""A provider acts only on referrals assigned to it; events that arrive early wait for the booking."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from pathway_schemas import topics
from pathway_schemas.events import (
    DeadLetter,
    ExaminationCompleted,
    PatientArrived,
    ReportDelayed,
    ReportingScheduled,
)
from services.common.clock import FixedClock
from services.reporting.main import create_app
from services.reporting.settings import Settings
from tests.harness import TopicReader, publish, running_service
from tests.helpers import wait_until
from tests.unit.reporting.builders import (
    NWX02,
    RXA01,
    T0,
    accepted,
    arrived,
    booked,
    canonical,
    completed,
    from_provider,
    provider_delay,
    provider_report,
    walk_in,
)

DEAD_LETTERS = topics.dead_letter("reporting")


async def test_a_provider_acting_on_a_referral_not_assigned_to_it_is_refused_and_counted(
    kafka: str, service_settings: Any
) -> None:
    clock = FixedClock(T0)
    mine = accepted()  # booked with RXA01
    early = accepted()  # RXA01's completion is read before its booking
    stranger = accepted()  # never booked anywhere known here
    walk = accepted()  # walk-in authorised at NWX02
    settings = service_settings(Settings, "reporting", park_timeout_s=60, park_sweep_interval_s=0.1)
    app = create_app(settings, clock=clock)
    async with (
        running_service(app) as svc,
        TopicReader(kafka, topics.EXAMINATION, topics.REPORT, DEAD_LETTERS) as reader,
    ):
        registry = svc.runtime.metrics.registry

        def denied() -> float:
            labels = {"service": "reporting", "channel": "kafka"}
            return registry.get_sample_value("pathway_authz_denied_total", labels) or 0

        def letters() -> list[tuple[str, DeadLetter]]:
            return [
                (
                    dict(r.headers)["dlq_reason"].decode(),
                    DeadLetter.model_validate(json.loads(r.value)),
                )
                for r in reader.records
                if r.topic == DEAD_LETTERS
            ]

        def events_of(cls: type) -> list[Any]:
            return [r.event for r in reader.events() if isinstance(r.event, cls)]

        await publish(
            kafka, from_provider(RXA01, completed(early.referral_id, T0 - timedelta(minutes=30)))
        )
        await wait_until(
            lambda: svc.runtime.store.db["parked"].count_documents(
                {"referral_id": early.referral_id}
            ),
            timeout=30,
            message="the early completion parked",
        )
        await publish(
            kafka,
            canonical(
                mine, booked(mine, RXA01), early, booked(early, RXA01), walk, walk_in(walk, NWX02)
            ),
        )

        # The early completion is applied as soon as its booking is known.
        await reader.wait_for(
            lambda _: (
                [e.referral_id for e in events_of(ExaminationCompleted)] == [early.referral_id]
            ),
            what="the parked completion applied",
        )
        assert await svc.runtime.store.db["parked"].count_documents({}) == 0

        # NWX02 completes RXA01's referral: refused at once, dead-lettered, counted, not applied.
        await publish(
            kafka,
            from_provider(
                NWX02,
                completed(mine.referral_id, T0 - timedelta(minutes=20)),
                arrived(walk.referral_id, T0),
            )
            # A final report before the examination, and a second examination of one referral.
            + from_provider(
                RXA01,
                provider_report(mine.referral_id, T0 - timedelta(minutes=15)),
                completed(mine.referral_id, T0 - timedelta(minutes=10)),
                completed(mine.referral_id, T0 - timedelta(minutes=5)),
            ),
        )
        await reader.wait_for(lambda _: len(letters()) == 3, what="three dead letters")
        assert denied() == 1
        reasons = sorted(
            (reason, letter.original_topic, letter.event_type) for reason, letter in letters()
        )
        assert reasons == [
            (
                "denied",
                topics.provider_inbound(NWX02),
                "uk.nhs.imaging.provider.examination_completed.v1",
            ),
            (
                "rejected",
                topics.provider_inbound(RXA01),
                "uk.nhs.imaging.provider.examination_completed.v1",
            ),
            (
                "rejected",
                topics.provider_inbound(RXA01),
                "uk.nhs.imaging.provider.report_issued.v1",
            ),
        ]
        assert all("9434765919" not in letter.reason for _, letter in letters())
        completions = events_of(ExaminationCompleted)
        assert [(e.referral_id, e.provider_ods) for e in completions] == [
            (early.referral_id, RXA01),
            (mine.referral_id, RXA01),
        ]
        [walked_in] = events_of(PatientArrived)
        assert (walked_in.referral_id, walked_in.provider_ods) == (walk.referral_id, NWX02)

        # RXA01's reporter needs a specialist opinion: two working days, referrer and patient told.
        await publish(kafka, from_provider(RXA01, provider_delay(mine.referral_id, T0)))
        await reader.wait_for(lambda _: bool(events_of(ReportDelayed)), what="the delay")
        [delayed] = events_of(ReportDelayed)
        assert (delayed.referral_id, delayed.reason.value, delayed.provider_ods) == (
            mine.referral_id,
            "specialist_opinion",
            RXA01,
        )
        # Completed Monday 8 June: due at the end of Wednesday 10 June, London time.
        assert delayed.new_due_at == datetime(2026, 6, 10, 22, 59, 59, tzinfo=UTC)
        rules = [e.rule for e in events_of(ReportingScheduled) if e.referral_id == mine.referral_id]
        assert rules == ["next_working_day", "mdt"]

        # An event for a referral never booked here waits, then is refused as not assigned.
        await publish(kafka, from_provider(NWX02, arrived(stranger.referral_id, T0)))
        await wait_until(
            lambda: svc.runtime.store.db["parked"].count_documents(
                {"referral_id": stranger.referral_id}
            ),
            message="the stranger's arrival parked",
        )
        assert denied() == 1
        clock.advance(timedelta(seconds=61))
        await reader.wait_for(lambda _: len(letters()) == 4, what="the parked arrival refused")
        reason, letter = letters()[-1]
        assert (reason, letter.original_topic, letter.event_id is not None) == (
            "denied",
            topics.provider_inbound(NWX02),
            True,
        )
        assert denied() == 2
        assert await svc.runtime.store.db["parked"].count_documents({}) == 0
        dead_lettered = registry.get_sample_value(
            "pathway_dead_letters_total",
            {"service": "reporting", "topic": topics.provider_inbound(NWX02), "reason": "denied"},
        )
        assert dead_lettered == 2
