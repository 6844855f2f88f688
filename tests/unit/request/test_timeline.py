"""The referral timeline and the state derived from it, whatever order the events arrive in."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pathway_schemas import events as ev
from pathway_schemas.base import PathwayEvent
from pathway_schemas.envelope import Envelope
from services.request.timeline import (
    CANCEL_TOO_LATE,
    ReferralState,
    TimelineEntry,
    append,
    describe,
    project,
    to_millis,
    trace_id,
)

T0 = datetime(2026, 3, 28, 23, 30, tzinfo=UTC)  # the night the clocks go forward
S = ReferralState


def entry(kind: type[PathwayEvent], minutes: float, **detail: str) -> TimelineEntry:
    at = to_millis(T0 + timedelta(minutes=minutes))
    return TimelineEntry(
        event_id=str(
            uuid.uuid5(uuid.NAMESPACE_URL, f"{kind.event_type}/{minutes}/{sorted(detail.items())}")
        ),
        event_type=kind.event_type,
        occurred_at=at,
        emitted_at=at,
        received_at=at,
        actor="/tests",
        detail=detail,
    )


# A whole referral, in the order things happened, with the state after each event.
JOURNEY: list[tuple[TimelineEntry, ReferralState]] = [
    (entry(ev.ReferralSubmitted, 0), S.SUBMITTED),
    (entry(ev.VettingQueued, 1), S.AWAITING_VETTING),
    (entry(ev.VettingQueried, 60, query_id="q1"), S.QUERIED),
    (entry(ev.ReferralQueryAnswered, 120, query_id="q1"), S.AWAITING_VETTING),
    (entry(ev.VettingQueued, 121), S.AWAITING_VETTING),
    (entry(ev.VettingReturned, 180, reason="insufficient_information"), S.RETURNED),
    (entry(ev.ReferralAmended, 240), S.AWAITING_VETTING),
    (entry(ev.VettingQueued, 241), S.AWAITING_VETTING),
    (entry(ev.VettingAccepted, 300), S.ACCEPTED),
    (entry(ev.AppointmentsOffered, 301), S.OFFERED),
    (entry(ev.AppointmentBooked, 400, provider_ods="RXA01"), S.BOOKED),
    (entry(ev.AppointmentMissed, 2000, next_step="rebook", provider_ods="RXA01"), S.DID_NOT_ATTEND),
    (entry(ev.AppointmentRebooked, 2001, provider_ods="NWX02"), S.BOOKED),
    (entry(ev.PatientArrived, 4000, provider_ods="NWX02"), S.ARRIVED),
    (entry(ev.ExaminationCompleted, 4020, provider_ods="NWX02"), S.EXAMINED),
    (entry(ev.ReportingScheduled, 4021, provider_ods="NWX02"), S.EXAMINED),
    (entry(ev.ReportIssued, 4100, status="preliminary", report_id="r1"), S.REPORTED_PRELIMINARY),
    (entry(ev.ReportIssued, 4200, status="final", report_id="r1"), S.REPORTED),
    (entry(ev.ReportDelivered, 4201, report_id="r1"), S.DELIVERED),
    (entry(ev.ReportAddended, 4300, report_id="r1", addendum_id="a1"), S.DELIVERED),
    (entry(ev.ReportAcknowledged, 5000, report_id="r1"), S.ACKNOWLEDGED),
]
EVENTS = [e for e, _ in JOURNEY]


def states_in_order(entries: list[TimelineEntry]) -> list[ReferralState]:
    return [project(entries[: n + 1]).state for n in range(len(entries))]


def test_each_step_of_a_whole_referral_gives_its_state() -> None:
    assert states_in_order(EVENTS) == [state for _, state in JOURNEY]


@given(st.data())
def test_any_arrival_order_with_redeliveries_gives_the_same_timeline_and_state(
    data: st.DataObject,
) -> None:
    prefix = data.draw(
        st.integers(min_value=1, max_value=len(EVENTS)), label="events that happened"
    )
    happened = EVENTS[:prefix]
    arrivals = data.draw(st.permutations(happened), label="arrival order")
    redelivered = data.draw(st.lists(st.sampled_from(happened), max_size=6), label="redeliveries")
    timeline: tuple[TimelineEntry, ...] = ()
    for arriving in [*arrivals, *redelivered]:
        timeline, _ = append(timeline, arriving)
    assert list(timeline) == happened
    assert project(timeline).state is JOURNEY[prefix - 1][1]
    assert project(reversed(timeline)) == project(timeline)


def test_a_redelivered_event_is_not_appended_twice() -> None:
    timeline, added = append((), EVENTS[0])
    again, added_again = append(timeline, EVENTS[0])
    assert added
    assert not added_again
    assert again == timeline


def test_a_final_report_seen_before_the_examination_still_means_reported() -> None:
    # Reporting's clock ran behind the provider's: the report carries the earlier instant.
    report = entry(ev.ReportIssued, 4010, status="final", report_id="r1")
    completed = entry(ev.ExaminationCompleted, 4020)
    assert project([*EVENTS[:14], report, completed]).state is S.REPORTED
    assert project([EVENTS[0], report]).state is S.REPORTED


def test_a_booking_stamped_just_before_the_acceptance_still_means_booked() -> None:
    booked = entry(ev.AppointmentBooked, 299.5)
    assert project([*EVENTS[:9], booked]).state is S.BOOKED
    offered = entry(ev.AppointmentsOffered, 299)
    assert project([*EVENTS[:2], offered, entry(ev.VettingAccepted, 300)]).state is S.OFFERED


def test_cancellation_ends_the_referral_unless_the_examination_happened() -> None:
    cancelled = entry(ev.ReferralCancelled, 500, reason="no_longer_needed")
    assert project([*EVENTS[:11], cancelled]).state is S.CANCELLED
    assert project([*EVENTS[:11], cancelled, entry(ev.VettingQueued, 600)]).state is S.CANCELLED
    assert project([*EVENTS[:15], cancelled]).state is S.EXAMINED
    assert not project([*EVENTS[:11], cancelled]).open


@pytest.mark.parametrize(
    ("tail", "state"),
    [
        ([entry(ev.ExaminationAbandoned, 4010)], S.ABANDONED),
        ([entry(ev.ExaminationAbandoned, 4010), entry(ev.AppointmentRebooked, 4100)], S.BOOKED),
        ([entry(ev.AppointmentDeferred, 3000)], S.DEFERRED),
        ([entry(ev.AppointmentCancelled, 3000, reason="patient_request")], S.ACCEPTED),
        ([entry(ev.AppointmentMissed, 3000, next_step="return_to_referrer")], S.RETURNED_AFTER_DNA),
        (
            [entry(ev.ReferralReturnedAfterDna, 3000), entry(ev.AppointmentBooked, 3001)],
            S.RETURNED_AFTER_DNA,
        ),
        ([entry(ev.WaitTargetBreached, 3000)], S.ARRIVED),
    ],
)
def test_booking_and_examination_turns(tail: list[TimelineEntry], state: ReferralState) -> None:
    base = EVENTS[:14] if state is S.ARRIVED else EVENTS[:11]
    assert project([*base, *tail]).state is state


def test_walk_in_then_arrival() -> None:
    walk_in = entry(ev.WalkInAuthorised, 301, provider_ods="RXA01")
    assert project([*EVENTS[:9], walk_in]).state is S.WALK_IN
    assert project([*EVENTS[:9], walk_in, entry(ev.PatientArrived, 900)]).state is S.ARRIVED


def test_projection_keeps_what_the_commands_and_the_duplicate_check_need() -> None:
    queried = project(EVENTS[:3])
    assert queried.open_query_id == "q1"
    assert queried.return_event_id is None
    returned = project(EVENTS[:6])
    assert returned.return_event_id == EVENTS[5].event_id
    assert returned.open_query_id is None
    examined = project(EVENTS)
    assert examined.examined_at == EVENTS[14].occurred_at
    assert examined.providers == ("NWX02", "RXA01")
    assert project(EVENTS[:13]).open
    assert not examined.open


def test_cancelling_is_too_late_from_arrival_on() -> None:
    assert {S.ARRIVED, S.EXAMINED, S.REPORTED, S.ACKNOWLEDGED} <= CANCEL_TOO_LATE
    assert S.BOOKED not in CANCEL_TOO_LATE
    assert S.ABANDONED not in CANCEL_TOO_LATE


def test_an_entry_keeps_envelope_times_and_trace_but_no_patient_data() -> None:
    event = ev.VettingAccepted(
        referral_id="ref_" + "a" * 32,
        occurred_at=T0,
        nhs_number="9434765919",
        practice_ods="A81001",
        referrer_id="G1234567",
        examination_code="XCHES",
        modality="XR",
        ionising=True,
        clinical_question="Cough for six weeks",
        care_setting="gp",
        priority="routine",
        protocol="PA",
        referral_received_at=T0,
        justified_by="R1",
        decided_by="R1",
    )
    envelope = Envelope(
        id="e1",
        source="/imaging/vetting",
        type=event.event_type,
        time=T0 + timedelta(seconds=1, microseconds=1500),
        subject=event.referral_id,
        occurredat=T0,
        trace={"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
    )
    made = TimelineEntry.of(event, envelope, received_at=T0 + timedelta(seconds=2))
    assert made.emitted_at == T0 + timedelta(seconds=1, microseconds=1000)
    assert made.received_at == T0 + timedelta(seconds=2)
    assert made.actor == "/imaging/vetting"
    assert made.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert "9434765919" not in str(made.detail)
    assert "Cough" not in str(made.detail)
    assert TimelineEntry.from_document(made.to_document()) == made


@pytest.mark.parametrize(
    "header",
    [None, "", "garbage", "00-00000000000000000000000000000000-00f067aa0ba902b7-01", "00-ABC-01"],
)
def test_a_missing_or_bad_traceparent_gives_no_trace_id(header: str | None) -> None:
    assert trace_id(header) is None


def test_appointment_detail_is_flattened() -> None:
    appointment = ev.Appointment(
        provider_ods="RXA01", site_id="main", slot_id="s", start=T0, end=T0
    )
    booked = ev.AppointmentBooked(
        referral_id="ref_" + "b" * 32,
        occurred_at=T0,
        appointment=appointment,
        booked_by="patient",
        priority="routine",
        modality="XR",
        examination_code="XCHES",
        wait_seconds=1,
        within_target=True,
    )
    assert describe(booked) == {
        "provider_ods": "RXA01",
        "site_id": "main",
        "start": T0.isoformat(),
        "booked_by": "patient",
        "within_target": "true",
    }
