"""Reporting on the real broker and store: deadlines, the worklist with priors, reports never overwritten."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any, TypeVar

from pathway_schemas import topics
from pathway_schemas.base import ReferralEvent
from pathway_schemas.envelope import Received
from pathway_schemas.events import (
    AppointmentBooked,
    ExaminationCompleted,
    PatientArrived,
    ReportAddended,
    ReportDelayed,
    ReportingScheduled,
    ReportIssued,
)
from services.common.clock import LONDON, FixedClock
from services.reporting.main import create_app
from services.reporting.settings import Settings
from tests.harness import TopicReader, publish, running_service
from tests.helpers import wait_until
from tests.unit.reporting.builders import (
    NWX02,
    OTHER_PATIENT,
    RXA01,
    T0,
    accepted,
    arrived,
    booked,
    canonical,
    completed,
    from_provider,
    provider_addendum,
    provider_report,
    study,
)

E = TypeVar("E", bound=ReferralEvent)

REPORTER = {"X-API-Key": "dev-reporter"}
PROVIDER_RXA01 = {"X-API-Key": "dev-provider-rxa01"}
PROVIDER_NWX02 = {"X-API-Key": "dev-provider-nwx02"}


async def read_to_end(reader: TopicReader, timeout: float = 20.0) -> list[Received]:
    """Poll until the reader has everything published so far on its topics."""
    consumer = reader.consumer
    await wait_until(lambda: bool(consumer.assignment()), message="partitions assigned")
    ends = await consumer.end_offsets(list(consumer.assignment()))
    deadline = time.monotonic() + timeout
    while not all([await consumer.position(tp) >= end for tp, end in ends.items()]):
        if time.monotonic() > deadline:
            raise TimeoutError("the reader did not reach the end of its topics")
        await reader.poll()
    return reader.events()


def of_type(received: list[Received], cls: type[E], referral_id: str | None = None) -> list[E]:
    return [
        r.event
        for r in received
        if isinstance(r.event, cls) and (referral_id is None or r.event.referral_id == referral_id)
    ]


async def test_worklist_shows_priors_from_every_provider_and_reports_are_never_overwritten(
    kafka: str, service_settings: Any
) -> None:
    clock = FixedClock(T0)
    # Earlier imaging of the same patient at another provider, reported there a week late.
    earlier = accepted()
    # Today's chest X-ray at RXA01, and another patient's urgent examination.
    current = accepted()
    urgent = accepted(nhs_number=OTHER_PATIENT, priority="urgent")
    completion = completed(current.referral_id, T0 - timedelta(minutes=10), study())

    settings = service_settings(Settings, "reporting", overdue_refresh_interval_s=0.1)
    app = create_app(settings, clock=clock)
    topics_read = (topics.EXAMINATION, topics.REPORT)
    async with running_service(app) as svc, TopicReader(kafka, *topics_read) as reader:
        await publish(
            kafka,
            canonical(
                earlier,
                booked(earlier, NWX02),
                current,
                booked(current, RXA01),
                urgent,
                booked(urgent, RXA01),
            ),
        )
        registry = svc.runtime.metrics.registry

        def handled(event_type: str) -> float:
            labels = {"service": "reporting", "event_type": event_type, "outcome": "applied"}
            return registry.get_sample_value("pathway_events_handled_total", labels) or 0

        await wait_until(
            lambda: handled(earlier.event_type) == handled(AppointmentBooked.event_type) == 3,
            timeout=30,
            message="acceptances and bookings consumed",
        )
        await publish(
            kafka,
            from_provider(NWX02, completed(earlier.referral_id, T0 - timedelta(days=7)))
            + from_provider(
                RXA01,
                arrived(current.referral_id, T0 - timedelta(minutes=20)),
                completion,
                completion.model_copy(),  # the provider sends its completion twice
                completed(urgent.referral_id, T0 - timedelta(minutes=5)),
            ),
        )
        await wait_until(
            lambda: handled(completion.event_type) == 4,
            timeout=30,
            message="four completions handled",
        )
        # NWX02 reports its examination, sends the report again, then addends it.
        earlier_report_sent = provider_report(earlier.referral_id, T0)
        await publish(
            kafka,
            from_provider(
                NWX02,
                earlier_report_sent,
                earlier_report_sent.model_copy(),
                provider_addendum(earlier.referral_id, T0),
            ),
        )
        await reader.wait_for(
            lambda _: len(of_type(reader.events(), ReportAddended)) == 1,
            what="the earlier addendum",
        )

        # The duplicate completion was applied once: one canonical completion, one deadline.
        received = await read_to_end(reader)
        assert len(of_type(received, ExaminationCompleted, current.referral_id)) == 1
        assert len(of_type(received, PatientArrived, current.referral_id)) == 1
        [scheduled] = of_type(received, ReportingScheduled, current.referral_id)
        # Completed Monday 08:50 BST, GP routine: due at the end of Tuesday.
        assert scheduled.rule == "next_working_day"
        assert scheduled.due_at.astimezone(LONDON).isoformat() == "2026-06-09T23:59:59+01:00"
        [urgent_scheduled] = of_type(received, ReportingScheduled, urgent.referral_id)
        assert (urgent_scheduled.rule, urgent_scheduled.due_at) == (
            "urgent",
            T0 + timedelta(minutes=55),
        )
        [earlier_report] = of_type(received, ReportIssued, earlier.referral_id)
        assert (earlier_report.provider_ods, earlier_report.within_target) == (NWX02, False)
        [earlier_addendum] = of_type(received, ReportAddended, earlier.referral_id)
        assert (earlier_addendum.report_id, earlier_addendum.provider_ods) == (
            earlier_report.report_id,
            NWX02,
        )

        # RXA01's worklist: earliest deadline first; priors from NWX02 with its report.
        response = await svc.client.get("/worklist", params={"provider": RXA01}, headers=REPORTER)
        assert response.status_code == 200, response.text
        worklist = response.json()["examinations"]
        assert [e["referral_id"] for e in worklist] == [urgent.referral_id, current.referral_id]
        assert worklist[0]["priors"] == []
        [prior] = worklist[1]["priors"]
        assert (prior["referral_id"], prior["provider_ods"]) == (earlier.referral_id, NWX02)
        [prior_report] = prior["reports"]
        assert (prior_report["conclusion"], prior_report["finding_flag"]) == (
            "Normal chest radiograph.",
            "routine",
        )
        [prior_addendum] = prior_report["addenda"]
        assert prior_addendum["finding_flag"] == "unexpected_significant"
        assert worklist[1]["study"]["study_instance_uid"] == completion.study.study_instance_uid

        # A provider sees only its own worklist.
        own = await svc.client.get("/worklist", headers=PROVIDER_RXA01)
        assert [e["referral_id"] for e in own.json()["examinations"]] == [
            urgent.referral_id,
            current.referral_id,
        ]
        other = await svc.client.get(
            "/worklist", params={"provider": RXA01}, headers=PROVIDER_NWX02
        )
        assert other.status_code == 403
        foreign = await svc.client.get(
            f"/examinations/{current.referral_id}", headers=PROVIDER_NWX02
        )
        assert foreign.status_code == 403
        assert (await svc.client.get("/worklist", headers=REPORTER)).status_code == 422

        # Two hours on, the urgent examination is past its deadline.
        clock.advance(timedelta(hours=2))
        await wait_until(
            lambda: (
                registry.get_sample_value("pathway_examinations_overdue", {"provider": RXA01}) == 1
            ),
            message="one overdue examination",
        )

        # A preliminary report, sent twice with one idempotency key, then the final report.
        body = {
            "text": "Preliminary: no acute findings.",
            "conclusion": "No acute findings.",
            "finding_flag": "routine",
        }
        url = f"/examinations/{current.referral_id}/reports"
        key = {"Idempotency-Key": "prelim-0001"}
        first = await svc.client.post(
            url, json={**body, "status": "preliminary"}, headers=REPORTER | key
        )
        again = await svc.client.post(
            url, json={**body, "status": "preliminary"}, headers=REPORTER | key
        )
        assert first.status_code == again.status_code == 201, first.text
        assert first.json()["report_id"] == again.json()["report_id"]
        final_body = {**body, "status": "final", "text": "Lungs clear.", "conclusion": "Normal."}
        final = await svc.client.post(url, json=final_body, headers=REPORTER)
        assert final.status_code == 201, final.text
        assert final.json()["within_target"] is True
        final_id = final.json()["report_id"]
        second_final = await svc.client.post(url, json=final_body, headers=REPORTER)
        assert second_final.status_code == 409
        assert "addendum" in second_final.json()["detail"]

        # An addendum adds; the final report stays as it was.
        addendum = await svc.client.post(
            f"/reports/{final_id}/addenda",
            json={
                "text": "Compared with the prior from NWX02: unchanged.",
                "finding_flag": "routine",
            },
            headers=REPORTER,
        )
        assert addendum.status_code == 201, addendum.text
        view = (
            await svc.client.get(f"/examinations/{current.referral_id}", headers=REPORTER)
        ).json()
        assert view["state"] == "reported"
        statuses = [(r["status"], r["text"]) for r in view["reports"]]
        assert statuses == [
            ("preliminary", "Preliminary: no acute findings."),
            ("final", "Lungs clear."),
        ]
        assert [a["text"] for a in view["reports"][1]["addenda"]] == [
            "Compared with the prior from NWX02: unchanged."
        ]
        assert view["priors"][0]["referral_id"] == earlier.referral_id

        # The urgent one needs an MDT: two working days from completion, referrer and patient told.
        delay = await svc.client.post(
            f"/examinations/{urgent.referral_id}/delay", json={"reason": "mdt"}, headers=REPORTER
        )
        assert delay.status_code == 200, delay.text
        assert delay.json()["rule"] == "mdt"
        assert delay.json()["due_at"].startswith("2026-06-10T22:59:59")
        await wait_until(
            lambda: (
                registry.get_sample_value("pathway_examinations_overdue", {"provider": RXA01}) == 0
            ),
            message="no overdue examination after the delay",
        )

        received = await read_to_end(reader)
        issued = of_type(received, ReportIssued, current.referral_id)
        assert [(r.status.value, r.report_id == final_id) for r in issued] == [
            ("preliminary", False),
            ("final", True),
        ]
        final_event = issued[1]
        assert final_event.practice_ods == "A81001"
        assert final_event.examination_completed_at == completion.occurred_at
        assert final_event.due_at == scheduled.due_at
        assert final_event.within_target is True
        [added] = of_type(received, ReportAddended, current.referral_id)
        assert (added.report_id, added.practice_ods, added.provider_ods) == (
            final_id,
            "A81001",
            RXA01,
        )
        [delayed] = of_type(received, ReportDelayed, urgent.referral_id)
        assert delayed.reason.value == "mdt"
        assert delayed.new_due_at.astimezone(LONDON).isoformat() == "2026-06-10T23:59:59+01:00"

        # Turnaround: NWX02's report a week late, RXA01's final report 2h10m after completion.
        labels = {"priority": "routine", "care_setting": "gp"}
        assert (
            registry.get_sample_value("pathway_reports_total", labels | {"within_target": "true"})
            == 1
        )
        assert (
            registry.get_sample_value("pathway_reports_total", labels | {"within_target": "false"})
            == 1
        )
        assert registry.get_sample_value("pathway_report_turnaround_seconds_count", labels) == 2
        assert (
            registry.get_sample_value("pathway_report_turnaround_seconds_sum", labels)
            == 7 * 86400 + 7800
        )
