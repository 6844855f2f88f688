"""Whole referrals through request, vetting and scheduling to the report, as people drive them.

Each scenario uses only the public interfaces: the practice, vetting, booking and reporting
APIs with their keys, and the providers' own Kafka topics. It checks the referral's state
and its timeline (each expected event exactly once) as the practice reads it.

The last tests of the module look back over the whole run: every service's metrics show
the stages the scenarios went through, and no NHS number used is in any log or span.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import httpx
import pytest

from pathway_cli.actors import ApiError, Json
from pathway_cli.system import System
from pathway_schemas.events import (
    ProviderOrderBooked,
    ProviderOrderCancelled,
    ProviderPatientDidNotAttend,
)
from services.common.clock import LONDON
from tests.e2e.support import (
    ORDER_BOOKED,
    ORDER_CANCELLED,
    ORDER_REBOOKED,
    REFERRER,
    Pathway,
    assert_before,
    detail,
    families,
    find_nhs_numbers,
    nhs_number_patterns,
    notices,
    printed_spans,
    sample_value,
    scrape,
    spaced,
)

pytestmark = pytest.mark.e2e

SUBMITTED = "referral.submitted.v1"
QUEUED = "vetting.queued.v1"
ACCEPTED = "vetting.accepted.v1"
OFFERED = "booking.offered.v1"
BOOKED = "booking.booked.v1"
ARRIVED = "examination.arrived.v1"
COMPLETED = "examination.completed.v1"
SCHEDULED = "report.scheduled.v1"
ISSUED = "report.issued.v1"
DELIVERED = "notification.delivered.v1"
ACKNOWLEDGED = "notification.acknowledged.v1"
PATIENT_NOTIFIED = "notification.patient_notified.v1"
REFERRER_NOTIFIED = "notification.referrer_notified.v1"

REPORTED_AND_ACKNOWLEDGED = (ARRIVED, COMPLETED, SCHEDULED, ISSUED, DELIVERED, ACKNOWLEDGED)


def instant(text: str) -> datetime:
    return datetime.fromisoformat(text)


async def report_final(pathway: Pathway, referral_id: str) -> Json:
    receipt: Json = await pathway.reporter.report(
        referral_id,
        status="final",
        text="The organs examined are normal in appearance.",
        conclusion="Normal examination.",
        finding_flag="routine",
    )
    return receipt


async def test_routine_ultrasound_is_booked_by_default_at_the_choose_by_deadline_then_reported_and_acknowledged(
    pathway: Pathway,
) -> None:
    created = await pathway.refer("UABDO", "Right upper quadrant pain after fatty meals")
    referral_id = created["referral_id"]
    assert created["state"] == "submitted"
    assert created["warnings"] == []

    item = await pathway.on_worklist(referral_id)
    assert item["ionising"] is False
    assert item["nhs_number"] == pathway.nhs_numbers[-1]
    await pathway.clinician.accept(referral_id, "Abdominal ultrasound, fasting")

    offered = await pathway.offered(referral_id)
    assert offered["target_days"] == 14
    choose_by = instant(offered["choose_by"])
    assert all(instant(o["start"]) > choose_by for o in offered["offers"])
    earliest = min(instant(o["start"]) for o in offered["offers"])

    # Nobody chooses: past the deadline the earliest offer is booked for the patient.
    pathway.at_least(choose_by + timedelta(minutes=1))
    booking = await pathway.booked(referral_id)
    appointment = booking["appointment"]
    assert booking["booked_by"] == "automatic"
    assert instant(appointment["start"]) == earliest
    assert booking["within_target"] is True
    assert booking["wait_seconds"] == (earliest - instant(booking["received_at"])).total_seconds()

    provider = await pathway.order(referral_id, ORDER_BOOKED)
    assert provider.ods == appointment["provider_ods"]
    order = provider.orders[referral_id][0].event
    assert isinstance(order, ProviderOrderBooked)
    assert order.appointment.slot_id == appointment["slot_id"]
    assert order.nhs_number == pathway.nhs_numbers[-1]
    assert pathway.providers.other_than(provider.ods).order_types(referral_id) == []

    await pathway.attend_appointment(referral_id, appointment)
    pathway.advance(timedelta(hours=3))
    receipt = await report_final(pathway, referral_id)
    assert receipt["within_target"] is True

    await pathway.delivered_and_acknowledged(referral_id)
    await pathway.until_notice(referral_id, "appointment_booked", to="patient")
    final = await pathway.settled(
        referral_id,
        (SUBMITTED, QUEUED, ACCEPTED, OFFERED, BOOKED, *REPORTED_AND_ACKNOWLEDGED),
    )
    assert_before(final, SUBMITTED, QUEUED, ACCEPTED, OFFERED, BOOKED, ARRIVED, COMPLETED)
    assert_before(final, COMPLETED, ISSUED, DELIVERED, ACKNOWLEDGED)
    assert detail(final, BOOKED)["booked_by"] == "automatic"
    assert detail(final, SCHEDULED)["rule"] == "next_working_day"
    assert notices(final, PATIENT_NOTIFIED) == ["appointment_booked"]
    # One trace from the submission: the clinician's acceptance over HTTP continued it, the
    # deadline job booked in it, and the patient was told in it.
    trace_ids = {
        hop: {e["trace_id"] for e in final["timeline"] if e["event_type"].endswith(hop)}
        for hop in (SUBMITTED, QUEUED, ACCEPTED, OFFERED, BOOKED, PATIENT_NOTIFIED)
    }
    [submitted_trace] = trace_ids[SUBMITTED]
    assert submitted_trace
    assert trace_ids == {hop: {submitted_trace} for hop in trace_ids}
    assert final["state"] == "acknowledged"
    assert final["open"] is False


async def test_urgent_ct_is_justified_chosen_by_the_patient_and_reported_within_the_hour(
    pathway: Pathway,
) -> None:
    created = await pathway.refer(
        "CCHES",
        "Haemoptysis and weight loss in a smoker, hilar mass on chest X-ray",
        priority="urgent",
    )
    referral_id = created["referral_id"]
    item = await pathway.on_worklist(referral_id)
    assert item["ionising"] is True

    with pytest.raises(ApiError) as unjustified:
        await pathway.clinician.accept(referral_id, "CT chest with contrast")
    assert unjustified.value.status == 422
    assert "justified_by" in unjustified.value.body
    await pathway.clinician.accept(
        referral_id, "CT chest with contrast", justified_by="GMC-1111111"
    )

    offered = await pathway.offered(referral_id)
    assert offered["target_days"] == 7
    received = instant(offered["received_at"])
    assert instant(offered["choose_by"]) - received <= timedelta(hours=12, minutes=1)
    # An urgent wait must not exceed its target: no patient-elected delay.
    refused = await pathway.clerk.defer(
        referral_id, "holiday", (pathway.now() + timedelta(days=3)).date().isoformat(), ok=(409,)
    )
    assert "urgent" in refused["detail"]

    # The patient picks the latest of the offers rather than the earliest.
    chosen = max(offered["offers"], key=lambda o: o["start"])
    booking = await pathway.clerk.choose(referral_id, chosen["slot_id"], chosen_by="patient")
    assert booking["booked_by"] == "patient"
    assert booking["appointment"]["slot_id"] == chosen["slot_id"]
    assert booking["within_target"] is True
    assert instant(chosen["start"]) - received <= timedelta(days=7)

    provider = await pathway.order(referral_id, ORDER_BOOKED)
    assert provider.ods == chosen["provider_ods"]
    await pathway.attend_appointment(referral_id, booking["appointment"])
    pathway.advance(timedelta(minutes=30))
    receipt = await report_final(pathway, referral_id)
    assert receipt["within_target"] is True

    await pathway.delivered_and_acknowledged(referral_id)
    final = await pathway.settled(
        referral_id,
        (SUBMITTED, QUEUED, ACCEPTED, OFFERED, BOOKED, *REPORTED_AND_ACKNOWLEDGED),
    )
    assert detail(final, ACCEPTED)["priority"] == "urgent"
    assert detail(final, BOOKED)["booked_by"] == "patient"
    assert detail(final, SCHEDULED)["rule"] == "urgent"
    scheduled_due = instant(detail(final, SCHEDULED)["due_at"])
    completed_at = next(
        instant(e["occurred_at"]) for e in final["timeline"] if e["event_type"].endswith(COMPLETED)
    )
    assert scheduled_due - completed_at == timedelta(hours=1)


async def test_guidance_advice_and_a_duplicate_flag_reach_the_referrer_at_once_and_vetting_sees_them(
    pathway: Pathway,
) -> None:
    advised = await pathway.refer("CHEAD", "Headache for three weeks, worse in the mornings")
    assert advised["guidance"]["outcome"] == "more_information_needed"
    assert any(w.startswith("Guidance (more_information_needed)") for w in advised["warnings"])
    item = await pathway.on_worklist(advised["referral_id"])
    assert item["guidance"]["outcome"] == "more_information_needed"

    patient = pathway.patient()
    first = await pathway.refer("XCHES", "Cough for six weeks in a smoker", nhs=patient)
    assert first["duplicate_of"] == []
    await pathway.until_state(first["referral_id"], "walk_in")
    second = await pathway.refer("XCHES", "Persistent cough, chest X-ray please", nhs=patient)
    assert second["duplicate_of"] == [first["referral_id"]]
    assert any(w.startswith("Possible duplicate imaging") for w in second["warnings"])

    # A possible duplicate never passes open access: a clinician sees the flag and decides.
    duplicate = await pathway.on_worklist(second["referral_id"])
    assert duplicate["duplicate"] is True
    assert duplicate["duplicate_of"] == [first["referral_id"]]
    await pathway.clinician.return_(
        second["referral_id"], "duplicate", "A chest X-ray is already arranged for this patient."
    )
    await pathway.until_notice(second["referral_id"], "returned")
    returned = await pathway.settled(
        second["referral_id"], (SUBMITTED, QUEUED, "vetting.returned.v1", REFERRER_NOTIFIED)
    )
    assert returned["state"] == "returned"
    assert notices(returned, REFERRER_NOTIFIED) == ["returned"]
    assert detail(returned, "vetting.returned.v1")["reason"] == "duplicate"

    # A practice refers only for itself: refused, and counted as a rejected intake.
    with pytest.raises(ApiError) as foreign:
        await pathway.practice.submit(
            {
                "nhs_number": pathway.patient(),
                "practice_ods": "B82002",
                "referrer_id": REFERRER["A81001"],
                "examination_code": "UABDO",
                "clinical_question": "Abdominal pain for a month",
                "priority": "routine",
            }
        )
    assert foreign.value.status == 403


async def test_returned_referral_is_amended_by_the_practice_and_then_accepted(
    pathway: Pathway,
) -> None:
    created = await pathway.refer("UPELV", "Pelvic pain")
    referral_id = created["referral_id"]
    await pathway.on_worklist(referral_id)
    with pytest.raises(ApiError) as too_early:
        await pathway.practice.amend(referral_id, by=REFERRER["A81001"], clinical_question="More")
    assert too_early.value.status == 409

    pathway.advance(timedelta(minutes=30))
    await pathway.clinician.return_(
        referral_id, "insufficient_information", "Please give the duration and cycle history."
    )
    returned = await pathway.until_notice(referral_id, "returned")
    assert returned["state"] == "returned"

    pathway.advance(timedelta(hours=2))
    amended = await pathway.practice.amend(
        referral_id,
        by=REFERRER["A81001"],
        clinical_question="Pelvic pain for four months with heavy periods, cycle 28 days",
        note="History added as asked",
    )
    assert amended["state"] in ("returned", "awaiting_vetting")
    item = await pathway.on_worklist(referral_id)
    assert "four months" in item["clinical_question"]
    pathway.advance(timedelta(minutes=30))
    await pathway.clinician.accept(referral_id, "Transabdominal and transvaginal pelvic US")
    offered = await pathway.settled(
        referral_id,
        {
            SUBMITTED: 1,
            QUEUED: 2,
            "vetting.returned.v1": 1,
            "referral.amended.v1": 1,
            ACCEPTED: 1,
            OFFERED: 1,
        },
    )
    assert_before(
        offered, SUBMITTED, "vetting.returned.v1", "referral.amended.v1", ACCEPTED, OFFERED
    )


async def test_vetting_query_is_answered_by_the_practice_and_the_referral_accepted(
    pathway: Pathway,
) -> None:
    created = await pathway.refer(
        "CKUBC", "Left loin pain radiating to the groin with visible haematuria"
    )
    referral_id = created["referral_id"]
    await pathway.on_worklist(referral_id)
    pathway.advance(timedelta(minutes=30))
    await pathway.clinician.query(referral_id, "Is the patient pregnant, and what is the eGFR?")
    queried = await pathway.until_notice(referral_id, "queried")
    assert queried["state"] == "queried"
    query_id = queried["open_query_id"]
    assert query_id
    assert notices(queried, REFERRER_NOTIFIED) == ["queried"]

    with pytest.raises(ApiError) as wrong:
        await pathway.practice.answer(referral_id, "q_not_the_open_one", "No", by="G1234567")
    assert wrong.value.status == 409
    with pytest.raises(ApiError) as other_practice:
        await pathway.other_practice.answer(referral_id, query_id, "No", by="G2345678")
    assert other_practice.value.status == 404

    pathway.advance(timedelta(hours=2))
    await pathway.practice.answer(
        referral_id, query_id, "Not pregnant; eGFR 78 last month.", by=REFERRER["A81001"]
    )
    await pathway.on_worklist(referral_id)
    pathway.advance(timedelta(minutes=30))
    await pathway.clinician.accept(
        referral_id, "CT KUB low dose, no contrast", justified_by="GMC-1111111"
    )
    offered = await pathway.settled(
        referral_id,
        {
            SUBMITTED: 1,
            QUEUED: 2,
            "vetting.queried.v1": 1,
            "referral.query_answered.v1": 1,
            ACCEPTED: 1,
            OFFERED: 1,
        },
    )
    assert_before(offered, "vetting.queried.v1", "referral.query_answered.v1", ACCEPTED, OFFERED)


async def test_patient_choice_rebooking_and_deferral_exclude_the_elected_delay_from_the_wait(
    pathway: Pathway,
) -> None:
    created = await pathway.refer("UTHYR", "Palpable thyroid nodule noticed two weeks ago")
    referral_id = created["referral_id"]
    await pathway.on_worklist(referral_id)
    await pathway.clinician.accept(referral_id, "Thyroid ultrasound")
    offered = await pathway.offered(referral_id)

    # Each step a little later than the last, as people take them (the timeline orders by time).
    pathway.advance(timedelta(hours=1))
    first = offered["offers"][0]
    booked = await pathway.clerk.choose(referral_id, first["slot_id"], chosen_by="patient")
    assert booked["booked_by"] == "patient"
    provider = pathway.providers[first["provider_ods"]]
    await provider.wait_for_order(referral_id, ORDER_BOOKED)

    # The patient asks for another time at the same provider: the order moves with it.
    pathway.advance(timedelta(minutes=5))
    free = await pathway.clerk.api.call(
        "GET", f"/bookings/{referral_id}/availability", params={"count": 50}
    )
    other_time = next(
        (
            s
            for s in free
            if s["provider_ods"] == first["provider_ods"] and s["start"] != first["start"]
        ),
        None,
    )
    assert other_time is not None, free
    rebooked = await pathway.clerk.rebook(referral_id, other_time["slot_id"])
    assert rebooked["appointment"]["slot_id"] == other_time["slot_id"]
    await provider.wait_for_order(referral_id, ORDER_REBOOKED)

    # Then elects to wait three weeks for social reasons: the slot is freed, the provider told.
    deferred_at = pathway.advance(timedelta(hours=1))
    available_from = (deferred_at.astimezone(LONDON) + timedelta(days=21)).date()
    deferred = await pathway.clerk.defer(
        referral_id, "family wedding abroad", available_from.isoformat()
    )
    assert deferred["state"] == "offered"
    assert deferred["appointment"] is None
    assert deferred["available_from"] == available_from.isoformat()
    await provider.wait_for_order(referral_id, ORDER_CANCELLED)
    start_of_available_day = datetime.combine(available_from, datetime.min.time(), LONDON)
    assert deferred["excluded_delay_seconds"] == pytest.approx(
        (start_of_available_day - deferred_at).total_seconds(), abs=1.0
    )
    assert all(instant(o["start"]) >= start_of_available_day for o in deferred["offers"])

    pathway.advance(timedelta(hours=1))
    chosen = deferred["offers"][0]
    final_booking = await pathway.clerk.choose(referral_id, chosen["slot_id"], chosen_by="patient")
    received = instant(final_booking["received_at"])
    start = instant(chosen["start"])
    assert start - received > timedelta(days=14)
    assert final_booking["wait_seconds"] == pytest.approx(
        (start - received).total_seconds() - deferred["excluded_delay_seconds"], abs=1.0
    )
    assert final_booking["wait_seconds"] < timedelta(days=14).total_seconds()
    assert final_booking["within_target"] is True

    referral = await pathway.settled(
        referral_id,
        {
            ACCEPTED: 1,
            OFFERED: 2,
            BOOKED: 2,
            "booking.rebooked.v1": 1,
            "booking.deferred.v1": 1,
        },
    )
    assert referral["state"] == "booked"
    assert_before(referral, OFFERED, BOOKED, "booking.rebooked.v1", "booking.deferred.v1")
    assert detail(referral, BOOKED, index=1)["within_target"] == "true"
    assert detail(referral, "booking.deferred.v1")["available_from"] == available_from.isoformat()


async def test_two_did_not_attends_rebook_once_then_return_the_referral_to_the_referrer(
    pathway: Pathway,
) -> None:
    created = await pathway.refer("USOFT", "Soft tissue lump on the back for two months")
    referral_id = created["referral_id"]
    await pathway.on_worklist(referral_id)
    await pathway.clinician.accept(referral_id, "Soft tissue ultrasound")
    offered = await pathway.offered(referral_id)
    slot = offered["offers"][0]
    await pathway.clerk.choose(referral_id, slot["slot_id"])
    provider = await pathway.order(referral_id, ORDER_BOOKED)

    pathway.at_least(instant(slot["start"]) + timedelta(minutes=10))
    await provider.send(
        ProviderPatientDidNotAttend(
            referral_id=referral_id, occurred_at=pathway.now(), slot_id=slot["slot_id"]
        )
    )
    rebooked = await pathway.booking_when(
        referral_id, lambda b: b["dna_count"] == 1 and b["state"] == "booked", "rebooked after DNA"
    )
    second = rebooked["appointment"]
    assert second["slot_id"] != slot["slot_id"]
    assert second["provider_ods"] == provider.ods
    await provider.wait_for_order(referral_id, ORDER_REBOOKED)
    # Missed and rebooked in one step: the referral is booked again, not waiting for a booking.
    again = await pathway.until_event(referral_id, "booking.rebooked.v1")
    assert again["state"] == "booked"

    pathway.at_least(instant(second["start"]) + timedelta(minutes=10))
    await provider.send(
        ProviderPatientDidNotAttend(
            referral_id=referral_id, occurred_at=pathway.now(), slot_id=second["slot_id"]
        )
    )
    await provider.wait_for_order(referral_id, ORDER_CANCELLED)
    await pathway.until_notice(referral_id, "returned_after_dna")
    returned = await pathway.settled(
        referral_id,
        {
            BOOKED: 1,
            "booking.did_not_attend.v1": 2,
            "booking.rebooked.v1": 1,
            "booking.returned_after_dna.v1": 1,
        },
    )
    assert returned["state"] == "returned_after_dna"
    assert returned["open"] is False
    assert [
        e["detail"]["next_step"]
        for e in returned["timeline"]
        if e["event_type"].endswith("booking.did_not_attend.v1")
    ] == ["rebook", "return_to_referrer"]
    assert detail(returned, "booking.rebooked.v1")["reason"] == "did_not_attend"
    assert_before(
        returned,
        "booking.did_not_attend.v1",
        "booking.rebooked.v1",
        "booking.returned_after_dna.v1",
    )


async def test_cancelling_a_booked_referral_frees_its_slot_and_cancels_the_provider_order(
    pathway: Pathway,
) -> None:
    created = await pathway.refer("UPELV", "Pelvic pain and heavy periods for six months")
    referral_id = created["referral_id"]
    await pathway.on_worklist(referral_id)
    await pathway.clinician.accept(referral_id, "Pelvic ultrasound")
    offered = await pathway.offered(referral_id)
    slot = offered["offers"][0]
    await pathway.clerk.choose(referral_id, slot["slot_id"])
    provider = await pathway.order(referral_id, ORDER_BOOKED)

    await pathway.practice.cancel(referral_id, by=REFERRER["A81001"])
    order = await provider.wait_for_order(referral_id, ORDER_CANCELLED)
    assert isinstance(order.event, ProviderOrderCancelled)
    assert order.event.reason == "referral cancelled"
    await pathway.until_notice(referral_id, "cancelled")
    cancelled = await pathway.settled(
        referral_id,
        (SUBMITTED, ACCEPTED, BOOKED, "referral.cancelled.v1", "booking.cancelled.v1"),
    )
    assert cancelled["state"] == "cancelled"
    assert cancelled["open"] is False
    assert detail(cancelled, "booking.cancelled.v1")["reason"] == "referral_cancelled"

    # The freed slot can be booked for someone else.
    other = await pathway.refer("UPELV", "Post-menopausal bleeding for three weeks")
    await pathway.on_worklist(other["referral_id"])
    await pathway.clinician.accept(other["referral_id"], "Pelvic ultrasound")
    await pathway.offered(other["referral_id"])
    taken = await pathway.clerk.choose(other["referral_id"], slot["slot_id"])
    assert taken["appointment"]["slot_id"] == slot["slot_id"]

    # Once the patient has arrived it is too late to cancel.
    pathway.at_least(instant(slot["start"]))
    await pathway.arrive(
        other["referral_id"], pathway.providers[slot["provider_ods"]], slot["site_id"]
    )
    await pathway.until_state(other["referral_id"], "arrived")
    refused = await pathway.practice.cancel(other["referral_id"], by=REFERRER["A81001"], ok=(409,))
    assert "examination" in refused["detail"]


# ---------------------------------------------------------------------- over the whole run

# The stage metrics of docs/metrics.md, by service: each must be exposed; the ones the
# scenarios above exercised must have a sample above zero.
EXPOSED = {
    "request": (
        "pathway_referrals_received_total",
        "pathway_guidance_outcomes_total",
        "pathway_duplicates_flagged_total",
        "pathway_intake_rejections_total",
    ),
    "vetting": (
        "pathway_vetting_seconds",
        "pathway_vetting_worklist_open",
        "pathway_vetting_worklist_oldest_seconds",
        "pathway_vetting_decisions_total",
    ),
    "scheduling": (
        "pathway_wait_to_appointment_seconds",
        "pathway_bookings_total",
        "pathway_referrals_at_risk",
        "pathway_dna_total",
        "pathway_slots_booked_total",
    ),
    "reporting": (
        "pathway_report_turnaround_seconds",
        "pathway_reports_total",
        "pathway_examinations_overdue",
    ),
    "notify": (
        "pathway_delivery_seconds",
        "pathway_delivery_attempts_total",
        "pathway_reports_undelivered",
        "pathway_acknowledgement_seconds",
        "pathway_alerts_open",
        "pathway_alerts_overdue",
    ),
}
EXERCISED = {
    "request": (
        'pathway_referrals_received_total{modality="US",outcome="accepted",priority="routine"}',
        'pathway_referrals_received_total{modality="CT",outcome="accepted",priority="urgent"}',
        'pathway_guidance_outcomes_total{outcome="more_information_needed"}',
        'pathway_duplicates_flagged_total{modality="XR"}',
        'pathway_intake_rejections_total{channel="api",reason="wrong_practice"}',
    ),
    "vetting": (
        'pathway_vetting_seconds_count{outcome="accepted",priority="routine"}',
        'pathway_vetting_seconds_count{outcome="accepted",priority="urgent"}',
        'pathway_vetting_seconds_count{outcome="returned",priority="routine"}',
        'pathway_vetting_seconds_count{outcome="queried",priority="routine"}',
    ),
    "scheduling": (
        'pathway_wait_to_appointment_seconds_count{priority="routine"}',
        'pathway_wait_to_appointment_seconds_count{priority="urgent"}',
        'pathway_bookings_total{priority="routine",within_target="true"}',
        'pathway_dna_total{next_step="rebook"}',
        'pathway_dna_total{next_step="return_to_referrer"}',
    ),
    "reporting": (
        'pathway_report_turnaround_seconds_count{care_setting="gp",priority="routine"}',
        'pathway_report_turnaround_seconds_count{care_setting="gp",priority="urgent"}',
        'pathway_reports_total{care_setting="gp",priority="routine",within_target="true"}',
    ),
    "notify": (
        'pathway_delivery_seconds_count{transport="http"}',
        'pathway_delivery_attempts_total{outcome="delivered"}',
        'pathway_acknowledgement_seconds_count{finding_flag="routine"}',
    ),
}
KIT = (
    "pathway_events_handled_total",
    "pathway_handler_seconds",
    "pathway_events_published_total",
    "pathway_outbox_backlog",
    "pathway_dead_letters_total",
    "pathway_authz_denied_total",
)


async def test_every_service_exposes_its_stage_metrics_with_the_run_counted(
    system: System, pathway: Pathway
) -> None:
    async with httpx.AsyncClient(timeout=30.0) as client:
        for service, names in EXPOSED.items():
            text = await scrape(client, system.urls[service])
            exposed = families(text)
            for name in (*names, *KIT):
                family = name.removesuffix("_total")
                assert family in exposed or name in exposed, f"{service} does not expose {name}"
            assert any(n.startswith("faststream_") for n in exposed), (
                f"{service}: no FastStream metrics"
            )
            for series in EXERCISED[service]:
                value = sample_value(text, series)
                assert value > 0, f"{service}: {series} is {value} after the run"
            handled = sample_value(text, f'pathway_events_handled_total{{service="{service}"}}')
            assert handled > 0, f"{service} handled no events"


async def test_no_nhs_number_of_the_run_is_in_any_log_span_or_channel_file(
    system: System, pathway: Pathway
) -> None:
    assert len(pathway.nhs_numbers) >= 10
    # The scanner finds a number however it is written.
    probe = nhs_number_patterns(pathway.nhs_numbers[:1])
    number = pathway.nhs_numbers[0]
    assert all(probe.search(f"x {form} y") for form in (number, spaced(number)))
    logs = {p.name for p in system.log_dir.iterdir()}
    assert {f"{name}.log" for name in system.urls} <= logs
    # The spans are there to be scanned: every service printed its HTTP and Kafka spans.
    for name in system.urls:
        kinds = {span["kind"] for span in printed_spans(system.log_dir / f"{name}.log")}
        assert {"CONSUMER", "PRODUCER"} <= kinds, f"{name} printed no Kafka spans: {kinds}"
    assert find_nhs_numbers(system, pathway.nhs_numbers) == []
