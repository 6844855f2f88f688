"""From the examination to the GP: delays, critical findings, addenda, failed deliveries, traces.

The system of this module sends practice B82002's reports to an endpoint that refuses
every connection, so that a delivery can fail for good; practice A81001 receives its
reports in the local inbox as usual.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from pathway_cli.actors import eventually, timeline_types
from pathway_cli.system import System
from pathway_schemas.events import ProviderReportDelayed, ProviderWalkInAuthorised
from services.common.clock import LONDON, WorkingCalendar
from tests.e2e.support import (
    REFERRER,
    WALK_IN,
    Pathway,
    assert_before,
    detail,
    find_nhs_numbers,
    notices,
    printed_spans,
    sample_value,
    scrape,
)

pytestmark = pytest.mark.e2e

# Nothing listens on the discard port: every delivery attempt to B82002 is refused.
REFUSING_ENDPOINT = "http://127.0.0.1:9/reports"
SYSTEM_OPTIONS = {"practice_endpoints": {"B82002": REFUSING_ENDPOINT}}

ISSUED = "report.issued.v1"
DELIVERED = "notification.delivered.v1"
ACKNOWLEDGED = "notification.acknowledged.v1"
ALERT_RAISED = "notification.alert_raised.v1"
ALERT_ESCALATED = "notification.alert_escalated.v1"
SCHEDULED = "report.scheduled.v1"


def instant(text: str) -> datetime:
    return datetime.fromisoformat(text)


def alert_messages(system: System, referral_id: str) -> list[dict[str, Any]]:
    assert system.channel_dir is not None
    path = system.channel_dir / "alert.jsonl"
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]
    return [m for m in lines if m["referral_id"] == referral_id]


async def test_mdt_review_delays_the_report_and_referrer_and_patient_are_told(
    pathway: Pathway,
) -> None:
    referral_id, provider = await pathway.walk_in_examined()
    examined = await pathway.until_event(referral_id, SCHEDULED)
    assert detail(examined, SCHEDULED)["rule"] == "next_working_day"
    completed_at = next(
        instant(e["occurred_at"])
        for e in examined["timeline"]
        if e["event_type"].endswith("examination.completed.v1")
    )

    pathway.advance(timedelta(hours=1))
    schedule = await pathway.reporter.delay(referral_id, reason="mdt", note="Chest MDT Thursday")
    assert schedule["rule"] == "mdt"
    # Two working days after the completion's London date, to the end of that day.
    calendar = WorkingCalendar("ENG")
    second_working_day = calendar.add_working_days(completed_at.astimezone(LONDON).date(), 2)
    assert instant(schedule["due_at"]).astimezone(LONDON).date() == second_working_day
    # Once per referral: the provider asking again moves nothing.
    await provider.send(
        ProviderReportDelayed(referral_id=referral_id, occurred_at=pathway.now(), reason="mdt")
    )

    await pathway.until_notice(referral_id, "report_delayed")
    await pathway.until_notice(referral_id, "report_delayed", to="patient")
    pathway.advance(timedelta(days=1))
    receipt = await pathway.reporter.report(
        referral_id,
        status="final",
        text="Discussed at the chest MDT: benign appearance.",
        conclusion="No further imaging needed.",
        finding_flag="routine",
    )
    assert receipt["within_target"] is True
    await pathway.delivered_and_acknowledged(referral_id)
    final = await pathway.settled(
        referral_id,
        {
            SCHEDULED: 2,
            "report.delayed.v1": 1,
            ISSUED: 1,
            DELIVERED: 1,
            ACKNOWLEDGED: 1,
            "notification.referrer_notified.v1": 1,
        },
    )
    assert [
        e["detail"]["rule"] for e in final["timeline"] if e["event_type"].endswith(SCHEDULED)
    ] == [
        "next_working_day",
        "mdt",
    ]
    assert detail(final, "report.delayed.v1")["reason"] == "mdt"
    assert notices(final, "notification.patient_notified.v1").count("report_delayed") == 1
    assert_before(final, "report.delayed.v1", ISSUED, DELIVERED, ACKNOWLEDGED)


async def test_critical_finding_alerts_at_once_escalates_after_an_hour_and_acknowledgement_stops_it(
    system: System, pathway: Pathway
) -> None:
    referral_id, provider = await pathway.walk_in_examined("Haemoptysis and weight loss")
    pathway.advance(timedelta(minutes=20))
    await pathway.provider_report(referral_id, provider, finding_flag="critical")
    raised = await pathway.until_event(referral_id, ALERT_RAISED)
    report_id = await pathway.report_id(referral_id)
    alert = detail(raised, ALERT_RAISED)
    assert alert["finding_flag"] == "critical"
    assert alert["recipient_role"] == "requesting_gp"
    await pathway.until_event(referral_id, DELIVERED)

    # Not acknowledged within the hour: the next rung of the ladder is alerted.
    pathway.advance(timedelta(minutes=61))
    escalated = await pathway.until_event(referral_id, ALERT_ESCALATED)
    step = detail(escalated, ALERT_ESCALATED)
    assert step["level"] == "1"
    assert step["recipient_role"] == "practice_duty_clinician"
    status = await pathway.practice.report(report_id)
    assert [(a["state"], a["level"]) for a in status["alerts"]] == [("open", 1)]

    await pathway.practice.acknowledge(report_id, by=REFERRER["A81001"], action="Seen same day")
    acknowledged = await pathway.until_state(referral_id, "acknowledged")
    status = await pathway.practice.report(report_id)
    [closed] = status["alerts"]
    assert closed["state"] == "acknowledged"
    assert closed["next_escalation_at"] is None
    assert closed["alert_id"] in {
        a["alert_id"] for a in await pathway.operator.alerts("acknowledged")
    }
    assert closed["alert_id"] not in {a["alert_id"] for a in await pathway.operator.alerts("open")}

    # Another critical finding, left unacknowledged, escalates past the next hour; the
    # acknowledged one does not move again.
    other_id, other_provider = await pathway.walk_in_examined("Breathless with a pleural effusion")
    await pathway.provider_report(other_id, other_provider, finding_flag="critical")
    await pathway.until_event(other_id, ALERT_RAISED)
    pathway.advance(timedelta(minutes=61))
    await pathway.until_event(other_id, ALERT_ESCALATED)
    final = await pathway.settled(
        referral_id,
        {ISSUED: 1, ALERT_RAISED: 1, ALERT_ESCALATED: 1, DELIVERED: 1, ACKNOWLEDGED: 1},
    )
    assert final["state"] == acknowledged["state"] == "acknowledged"
    assert_before(final, ISSUED, ALERT_RAISED, ALERT_ESCALATED, ACKNOWLEDGED)
    await pathway.until(
        referral_id, lambda _: len(alert_messages(system, referral_id)) >= 2, "alert messages sent"
    )
    assert [m["to"]["role"] for m in alert_messages(system, referral_id)] == [
        "requesting_gp",
        "practice_duty_clinician",
    ]


async def test_an_addendum_after_delivery_is_delivered_as_a_change_and_acknowledged_on_its_own(
    pathway: Pathway,
) -> None:
    referral_id, _ = await pathway.walk_in_examined("Chest pain after a fall, ?rib fracture")
    pathway.advance(timedelta(hours=2))
    receipt = await pathway.reporter.report(
        referral_id,
        status="final",
        text="No rib fracture seen.",
        conclusion="Normal chest radiograph.",
        finding_flag="routine",
    )
    report_id = receipt["report_id"]
    await pathway.delivered_and_acknowledged(referral_id)

    pathway.advance(timedelta(days=1))
    addendum = await pathway.reporter.addendum(
        report_id, "On review a subtle fracture of the left 7th rib is seen.", "routine"
    )
    addendum_id = addendum["addendum_id"]
    redelivered = await pathway.until_event(referral_id, DELIVERED, count=2)
    assert [
        e["detail"].get("addendum_id")
        for e in redelivered["timeline"]
        if e["event_type"].endswith(DELIVERED)
    ] == [None, addendum_id]
    inbox = [i for i in await pathway.practice.inbox() if i["report_id"] == report_id]
    assert sorted((i["change"], i["addendum_id"]) for i in inbox) == [
        (False, None),
        (True, addendum_id),
    ]
    status = await pathway.practice.report(report_id)
    assert status["open_acknowledgements"] == 1

    await pathway.practice.acknowledge(report_id, by=REFERRER["A81001"], addendum_id=addendum_id)
    final = await pathway.settled(
        referral_id,
        {ISSUED: 1, "report.addended.v1": 1, DELIVERED: 2, ACKNOWLEDGED: 2},
    )
    assert final["state"] == "acknowledged"
    assert_before(final, ISSUED, "report.addended.v1")
    status = await pathway.practice.report(report_id)
    assert status["open_acknowledgements"] == 0
    assert [v["addendum_id"] for v in status["versions"] if v["acknowledged_at"]] == [
        None,
        addendum_id,
    ]


async def test_a_report_the_practice_endpoint_refuses_is_retried_then_recorded_as_failed(
    system: System, pathway: Pathway
) -> None:
    created = await pathway.refer(
        "XCHES", "Cough for six weeks in a smoker", practice=pathway.other_practice
    )
    referral_id = created["referral_id"]
    provider, order = await pathway.providers.wait_for_order(referral_id, WALK_IN)
    assert isinstance(order.event, ProviderWalkInAuthorised)
    site_id = order.event.site_id
    pathway.advance(timedelta(hours=1))
    await pathway.arrive(referral_id, provider, site_id)
    await pathway.complete(referral_id, provider, site_id)
    pathway.advance(timedelta(hours=1))
    await pathway.provider_report(referral_id, provider)

    # Retries back off on the pathway clock (30 s doubling to 30 min): let time pass.
    failed = await pathway.until(
        referral_id,
        lambda r: "notification.delivery_failed.v1" in timeline_types(r),
        "delivery failed",
        practice=pathway.other_practice,
        tick=timedelta(minutes=31),
    )
    assert failed["state"] == "reported"
    failure = detail(failed, "notification.delivery_failed.v1")
    report_id = await pathway.report_id(referral_id, practice=pathway.other_practice)
    assert failure["report_id"] == report_id
    assert failure["attempts"] == "6"
    assert failure["error_class"] == "ConnectError"
    assert timeline_types(failed).count(DELIVERED) == 0

    [delivery] = [
        d for d in await pathway.operator.deliveries("failed") if d["report_id"] == report_id
    ]
    assert delivery["practice_ods"] == "B82002"
    assert delivery["attempts"] == 6
    assert delivery["last_error"] == "ConnectError"
    await pathway.until(
        referral_id,
        lambda _: any(
            m["to"]["role"] == "service_desk" for m in alert_messages(system, referral_id)
        ),
        "the service desk told",
        practice=pathway.other_practice,
    )

    # An operator may send it again with a fresh set of attempts.
    again = await pathway.operator.redeliver(delivery["delivery_id"])
    assert again["state"] == "pending"
    assert again["attempts"] == 0


# ---------------------------------------------------------------------- traces and patient data


async def test_one_referrals_hops_share_one_trace_across_all_five_services(
    system: System, pathway: Pathway
) -> None:
    referral_id, provider = await pathway.walk_in_examined("Cough and haemoptysis for a month")
    pathway.advance(timedelta(minutes=30))
    await pathway.provider_report(referral_id, provider, finding_flag="critical")
    chain = (
        "referral.submitted.v1",
        "vetting.accepted.v1",
        "booking.walk_in_authorised.v1",
        "examination.arrived.v1",
        "examination.completed.v1",
        SCHEDULED,
        ISSUED,
        ALERT_RAISED,
    )
    referral = await pathway.settled(referral_id, chain)
    traces = {
        e["event_type"].removeprefix("uk.nhs.imaging."): e["trace_id"]
        for e in referral["timeline"]
        if e["event_type"].removeprefix("uk.nhs.imaging.") in chain
    }
    trace_id = traces["referral.submitted.v1"]
    assert trace_id
    assert traces == dict.fromkeys(chain, trace_id)
    actors = {e["actor"] for e in referral["timeline"] if e["trace_id"] == trace_id}
    assert {f"/imaging/{name}" for name in system.urls} - {"/imaging/notify"} <= actors
    assert "/imaging/notify" in actors

    # Each of the five services has spans in that trace (its console exporter printed them).
    async def spans_printed() -> bool:
        return all(
            any(s["trace_id"] == trace_id for s in printed_spans(system.log_dir / f"{name}.log"))
            for name in system.urls
        )

    # Spans are exported in batches: wait for the last batches to be printed.
    assert await eventually(spans_printed, timeout=30, what="spans of the trace in every log")


async def test_notify_workers_and_the_acknowledgement_continue_the_trace_of_the_referral(
    pathway: Pathway,
) -> None:
    # Notify does this work later, outside the event that caused it: the delivery and message
    # workers, the escalation sweep, and the practice's acknowledgement in a call of its own.
    referral_id, provider = await pathway.walk_in_examined("Cough for two months, ex-smoker")
    pathway.advance(timedelta(minutes=30))
    await pathway.provider_report(referral_id, provider, finding_flag="critical")
    report_id = await pathway.report_id(referral_id, after=DELIVERED)
    await pathway.until_event(referral_id, ALERT_RAISED)
    pathway.advance(timedelta(minutes=61))
    await pathway.until_event(referral_id, ALERT_ESCALATED)
    await pathway.practice.acknowledge(report_id, by=REFERRER["A81001"], action="Seen same day")
    hops = (
        "referral.submitted.v1",
        "booking.walk_in_authorised.v1",
        "notification.patient_notified.v1",
        ISSUED,
        DELIVERED,
        ALERT_RAISED,
        ALERT_ESCALATED,
        ACKNOWLEDGED,
    )
    referral = await pathway.until_timeline(referral_id, hops)
    traces: dict[str, set[str]] = {}
    for entry in referral["timeline"]:
        traces.setdefault(entry["event_type"].removeprefix("uk.nhs.imaging."), set()).add(
            entry["trace_id"]
        )
    [trace_id] = traces["referral.submitted.v1"]
    assert trace_id
    assert {hop: traces[hop] for hop in hops} == {hop: {trace_id} for hop in hops}


async def test_notify_and_reporting_metrics_count_what_this_run_did(
    system: System, pathway: Pathway
) -> None:
    async with httpx.AsyncClient(timeout=30.0) as client:
        notify = await scrape(client, system.urls["notify"])
        reporting = await scrape(client, system.urls["reporting"])
    for series in (
        'pathway_delivery_attempts_total{outcome="retry"}',
        'pathway_delivery_attempts_total{outcome="failed"}',
        'pathway_delivery_attempts_total{outcome="delivered"}',
        'pathway_acknowledgement_seconds_count{finding_flag="critical"}',
    ):
        assert sample_value(notify, series) > 0, series
    for family in ("pathway_alerts_open", "pathway_alerts_overdue", "pathway_reports_undelivered"):
        assert f"# TYPE {family} gauge" in notify, family
    assert sample_value(reporting, 'pathway_reports_total{within_target="true"}') > 0
    assert "# TYPE pathway_examinations_overdue gauge" in reporting


async def test_no_nhs_number_of_the_run_is_in_any_log_span_or_channel_file(
    system: System, pathway: Pathway
) -> None:
    assert len(pathway.nhs_numbers) >= 5
    for name in system.urls:
        kinds = {span["kind"] for span in printed_spans(system.log_dir / f"{name}.log")}
        assert {"CONSUMER", "PRODUCER"} <= kinds, f"{name} printed no Kafka spans: {kinds}"
    assert find_nhs_numbers(system, pathway.nhs_numbers) == []
