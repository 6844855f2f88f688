"""Which events reach the patient and the referrer, and what the notices say."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any, get_args

import pytest

from pathway_schemas import new_referral_id
from pathway_schemas.base import PathwayEvent
from pathway_schemas.events import (
    Appointment,
    AppointmentBooked,
    AppointmentCancelled,
    AppointmentDeferred,
    AppointmentRebooked,
    PatientNotified,
    ReferralCancelled,
    ReferralReturnedAfterDna,
    ReferrerNotified,
    ReportDelayed,
    VettingQueried,
    VettingReturned,
    WaitTargetBreached,
    WalkInAuthorised,
)
from pathway_schemas.values import FindingFlag
from services.notify import notices

AT = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
RID = new_referral_id()
SLOT = Appointment(
    provider_ods="RXA01",
    site_id="main",
    slot_id="s1",
    start=datetime(2026, 3, 30, 9, 20, tzinfo=UTC),  # the day after the clocks go forward
    end=datetime(2026, 3, 30, 9, 30, tzinfo=UTC),
)
BASE: dict[str, Any] = {"referral_id": RID, "occurred_at": AT}

EVENTS: list[tuple[PathwayEvent, str | None, str | None]] = [
    (
        AppointmentBooked(
            **BASE,
            appointment=SLOT,
            booked_by="patient",
            priority="routine",
            modality="XR",
            examination_code="XCHES",
            wait_seconds=3600,
            within_target=True,
        ),
        "appointment_booked",
        None,
    ),
    (
        AppointmentRebooked(
            **BASE,
            previous=SLOT,
            appointment=SLOT,
            reason="patient_request",
            wait_seconds=1,
            within_target=True,
        ),
        "appointment_changed",
        None,
    ),
    (
        AppointmentCancelled(**BASE, appointment=SLOT, reason="provider_request"),
        "appointment_cancelled",
        None,
    ),
    (
        WalkInAuthorised(
            **BASE,
            provider_ods="RXA01",
            site_id="main",
            valid_from=AT,
            valid_until=AT + timedelta(days=14),
            modality="XR",
            examination_code="XCHES",
        ),
        "walk_in",
        None,
    ),
    (
        ReportDelayed(
            **BASE,
            reason="mdt",
            new_due_at=AT + timedelta(days=2),
            provider_ods="RXA01",
            practice_ods="A81001",
        ),
        "report_delayed",
        "report_delayed",
    ),
    (
        VettingReturned(
            **BASE, reason="not_indicated", advice="Try physiotherapy first.", decided_by="R1"
        ),
        None,
        "returned",
    ),
    (
        VettingQueried(**BASE, query_id="q1", question="Any red flags?", decided_by="R1"),
        None,
        "queried",
    ),
    (
        ReferralCancelled(**BASE, reason="no_longer_needed", cancelled_by="G1234567"),
        None,
        "cancelled",
    ),
    (ReferralReturnedAfterDna(**BASE, dna_count=2), None, "returned_after_dna"),
    (
        WaitTargetBreached(**BASE, priority="urgent", target_days=7, earliest_available=None),
        None,
        "wait_breached",
    ),
    (AppointmentDeferred(**BASE, reason="holiday", available_from=date(2026, 4, 1)), None, None),
]


@pytest.mark.parametrize(("event", "patient", "referrer"), EVENTS)
def test_each_event_reaches_the_right_people(
    event: PathwayEvent, patient: str | None, referrer: str | None
) -> None:
    to_patient = notices.patient_notice(event)
    to_referrer = notices.referrer_notice(event)
    assert (to_patient.notice if to_patient else None) == patient
    assert (to_referrer.notice if to_referrer else None) == referrer
    # Every notice is one the contract can report.
    if to_patient:
        assert to_patient.notice in get_args(PatientNotified.model_fields["notice"].annotation)
        assert to_patient.channel == "patient"
        assert to_patient.gives_up
    if to_referrer:
        assert to_referrer.notice in get_args(ReferrerNotified.model_fields["notice"].annotation)
        assert to_referrer.channel == "referrer"


def test_appointment_times_are_told_in_london_time() -> None:
    draft = notices.patient_notice(EVENTS[0][0])
    assert draft is not None
    assert "Monday 30 March 2026 at 10:20" in draft.body  # 09:20 UTC is 10:20 BST


def test_report_delay_names_the_practice_so_the_notice_need_not_wait_for_the_referral() -> None:
    draft = notices.referrer_notice(EVENTS[4][0])
    assert draft is not None
    assert draft.organisation == "A81001"


def test_alerts_never_give_up_and_say_by_when_to_acknowledge() -> None:
    draft = notices.alert_message(
        referral_id=RID,
        report_id="RPT-1",
        flag=FindingFlag.CRITICAL,
        level=1,
        role="practice_duty_clinician",
        organisation="A81001",
        acknowledge_by=datetime(2026, 7, 1, 12, 0, tzinfo=UTC),
    )
    assert not draft.gives_up
    assert draft.notice is None
    assert draft.kind == "escalation"
    assert draft.subject.startswith("CRITICAL finding")
    assert "ESCALATION 1" in draft.body
    assert "Wednesday 1 July 2026 at 13:00" in draft.body
