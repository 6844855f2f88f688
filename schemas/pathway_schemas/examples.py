"""One valid example of every event: used by the tests, the provider guide and the docs.

All data is synthetic: the NHS number is a test number, the people and places invented.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from pathway_schemas import events as ev
from pathway_schemas.base import EVENT_TYPES, PathwayEvent

REFERRAL_ID = "ref_3f2a9c1e5b7d4e8fa1b2c3d4e5f60718"
AT = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
NHS = "9434765919"
STUDY = {"study_instance_uid": "1.2.826.0.1.3680043.8.498.1", "accession_number": "RXA0100042"}
SLOT = {
    "provider_ods": "RXA01",
    "site_id": "riverside-main",
    "slot_id": "RXA01:riverside-main:XR:2026-03-04T10:00:00Z",
    "start": AT + timedelta(days=2, minutes=30),
    "end": AT + timedelta(days=2, minutes=40),
}
DETAILS = {
    "nhs_number": NHS,
    "practice_ods": "A81001",
    "referrer_id": "G1234567",
    "examination_code": "XCHES",
    "clinical_question": "Persistent cough for six weeks in a smoker; exclude malignancy.",
    "priority": "routine",
    "care_setting": "gp",
}
GUIDANCE = {
    "outcome": "indicated",
    "rule_id": "example-chest-cough",
    "message": "Example rule: indicated.",
}
REPORT = {"report_id": "RPT-0001", "provider_ods": "RXA01", "practice_ods": "A81001"}
BASE = {"referral_id": REFERRAL_ID, "occurred_at": AT}

_EXAMPLES: dict[type[PathwayEvent], dict[str, Any]] = {
    ev.ReferralSubmitted: {
        **BASE,
        **DETAILS,
        "modality": "XR",
        "ionising": True,
        "guidance": GUIDANCE,
    },
    ev.ReferralAmended: {
        **BASE,
        **DETAILS,
        "modality": "XR",
        "ionising": True,
        "guidance": GUIDANCE,
        "amended_by": "G1234567",
        "note": "Added smoking history.",
    },
    ev.ReferralQueryAnswered: {
        **BASE,
        "query_id": "q1",
        "answer": "Yes, 30 pack-years.",
        "answered_by": "G1234567",
    },
    ev.ReferralCancelled: {**BASE, "reason": "no_longer_needed", "cancelled_by": "G1234567"},
    ev.ReferralRequested: {"occurred_at": AT, **DETAILS, "request_id": "A81001-20260302-0001"},
    ev.ReferralRequestAccepted: {
        **BASE,
        "request_id": "A81001-20260302-0001",
        "guidance": GUIDANCE,
    },
    ev.ReferralRequestRejected: {
        "occurred_at": AT,
        "request_id": "A81001-20260302-0002",
        "errors": [
            {"field": "nhs_number", "message": "the NHS number fails its Modulus 11 check digit"}
        ],
    },
    ev.VettingQueued: {
        **BASE,
        "priority": "routine",
        "modality": "CT",
        "why": "CT needs a vetting clinician",
    },
    ev.VettingAccepted: {
        **BASE,
        **{k: v for k, v in DETAILS.items()},
        "modality": "XR",
        "ionising": True,
        "protocol": "PA chest",
        "referral_received_at": AT - timedelta(hours=1),
        "justified_by": "HCPC-RA12345",
        "decided_by": "HCPC-RA12345",
        "walk_in_allowed": True,
    },
    ev.VettingReturned: {
        **BASE,
        "reason": "not_indicated",
        "advice": "Example: consider a trial of treatment first.",
        "decided_by": "GMC-7654321",
    },
    ev.VettingQueried: {
        **BASE,
        "query_id": "q1",
        "question": "Smoking history?",
        "decided_by": "GMC-7654321",
    },
    ev.AppointmentsOffered: {
        **BASE,
        "offers": [SLOT],
        "choose_by": AT + timedelta(days=1),
        "target_days": 14,
    },
    ev.AppointmentBooked: {
        **BASE,
        "appointment": SLOT,
        "booked_by": "patient",
        "priority": "routine",
        "modality": "XR",
        "examination_code": "XCHES",
        "wait_seconds": 176400.0,
        "within_target": True,
    },
    ev.AppointmentRebooked: {
        **BASE,
        "previous": SLOT,
        "appointment": {
            **SLOT,
            "slot_id": "RXA01:riverside-main:XR:2026-03-05T10:00:00Z",
            "start": AT + timedelta(days=3),
            "end": AT + timedelta(days=3, minutes=10),
        },
        "reason": "patient_request",
        "wait_seconds": 259200.0,
        "within_target": True,
    },
    ev.AppointmentDeferred: {
        **BASE,
        "reason": "Caring responsibilities this week",
        "available_from": date(2026, 3, 16),
    },
    ev.AppointmentCancelled: {**BASE, "appointment": SLOT, "reason": "referral_cancelled"},
    ev.AppointmentMissed: {**BASE, "appointment": SLOT, "dna_count": 1, "next_step": "rebook"},
    ev.ReferralReturnedAfterDna: {**BASE, "dna_count": 2},
    ev.WalkInAuthorised: {
        **BASE,
        "provider_ods": "RXA01",
        "site_id": "riverside-main",
        "valid_from": AT,
        "valid_until": AT + timedelta(days=14),
        "modality": "XR",
        "examination_code": "XCHES",
    },
    ev.WaitTargetBreached: {
        **BASE,
        "priority": "urgent",
        "target_days": 7,
        "earliest_available": AT + timedelta(days=9),
    },
    ev.PatientArrived: {**BASE, "provider_ods": "RXA01", "site_id": "riverside-main"},
    ev.ExaminationCompleted: {
        **BASE,
        "provider_ods": "RXA01",
        "site_id": "riverside-main",
        "study": STUDY,
        "modality": "XR",
        "examination_code": "XCHES",
        "performed_by": "HCPC-RA12345",
    },
    ev.ExaminationAbandoned: {**BASE, "provider_ods": "RXA01", "reason": "Patient unable to stand"},
    ev.ReportingScheduled: {
        **BASE,
        "due_at": AT + timedelta(days=1),
        "rule": "next_working_day",
        "provider_ods": "RXA01",
    },
    ev.ReportIssued: {
        **BASE,
        **REPORT,
        "status": "final",
        "text": "The lungs are clear.",
        "conclusion": "Normal chest.",
        "finding_flag": "routine",
        "reported_by": "GMC-7654321",
        "key_images": [STUDY],
        "examination_completed_at": AT - timedelta(hours=3),
        "due_at": AT + timedelta(days=1),
        "within_target": True,
    },
    ev.ReportAddended: {
        **BASE,
        **REPORT,
        "addendum_id": "ADD-1",
        "text": "Comparison with 2024 film: unchanged.",
        "finding_flag": "routine",
        "reported_by": "GMC-7654321",
    },
    ev.ReportDelayed: {
        **BASE,
        "reason": "mdt",
        "new_due_at": AT + timedelta(days=2),
        "provider_ods": "RXA01",
        "practice_ods": "A81001",
    },
    ev.ReportDelivered: {
        **BASE,
        "report_id": "RPT-0001",
        "practice_ods": "A81001",
        "receipt_id": "rcpt-7f3a",
        "attempts": 1,
        "transport": "http",
    },
    ev.ReportDeliveryFailed: {
        **BASE,
        "report_id": "RPT-0001",
        "practice_ods": "A81001",
        "attempts": 5,
        "error_class": "ConnectTimeout",
    },
    ev.ReportAcknowledged: {
        **BASE,
        "report_id": "RPT-0001",
        "acknowledged_by": "G1234567",
        "action": "Reviewed.",
    },
    ev.AlertRaised: {
        **BASE,
        "alert_id": "alert-1",
        "report_id": "RPT-0001",
        "finding_flag": "critical",
        "recipient_role": "requesting_gp",
        "acknowledge_by": AT + timedelta(hours=1),
    },
    ev.AlertEscalated: {
        **BASE,
        "alert_id": "alert-1",
        "level": 1,
        "recipient_role": "practice_duty_clinician",
        "acknowledge_by": AT + timedelta(hours=2),
    },
    ev.PatientNotified: {**BASE, "notice": "appointment_booked", "channel": "log"},
    ev.ReferrerNotified: {**BASE, "notice": "returned", "channel": "log"},
    ev.ProviderOrderBooked: {
        **BASE,
        "nhs_number": NHS,
        "examination_code": "XCHES",
        "modality": "XR",
        "protocol": "PA chest",
        "priority": "routine",
        "clinical_question": DETAILS["clinical_question"],
        "appointment": SLOT,
    },
    ev.ProviderOrderRebooked: {**BASE, "appointment": SLOT, "previous": SLOT},
    ev.ProviderOrderCancelled: {**BASE, "reason": "referral_cancelled"},
    ev.ProviderWalkInAuthorised: {
        **BASE,
        "nhs_number": NHS,
        "examination_code": "XCHES",
        "modality": "XR",
        "protocol": "PA chest",
        "clinical_question": DETAILS["clinical_question"],
        "site_id": "riverside-main",
        "valid_from": AT,
        "valid_until": AT + timedelta(days=14),
    },
    ev.ProviderPatientArrived: {**BASE, "site_id": "riverside-main"},
    ev.ProviderPatientDidNotAttend: {**BASE, "slot_id": SLOT["slot_id"]},
    ev.ProviderExaminationCompleted: {
        **BASE,
        "site_id": "riverside-main",
        "study": STUDY,
        "performed_by": "HCPC-RA12345",
    },
    ev.ProviderExaminationAbandoned: {**BASE, "reason": "Patient unable to stand"},
    ev.ProviderReportIssued: {
        **BASE,
        "report_id": "RPT-0001",
        "status": "final",
        "text": "The lungs are clear.",
        "conclusion": "Normal chest.",
        "finding_flag": "routine",
        "reported_by": "GMC-7654321",
        "key_images": [STUDY],
    },
    ev.ProviderReportAddended: {
        **BASE,
        "report_id": "RPT-0001",
        "addendum_id": "ADD-1",
        "text": "Unchanged from 2024.",
        "finding_flag": "routine",
        "reported_by": "GMC-7654321",
    },
    ev.ProviderReportDelayed: {**BASE, "reason": "mdt", "note": "For lung MDT on Thursday."},
}


def example(model: type[PathwayEvent]) -> PathwayEvent:
    """A valid instance of an event model (KeyError if a new event has no example yet)."""
    try:
        data = _EXAMPLES[model]
    except KeyError:
        raise KeyError(
            f"{model.__name__} has no example in pathway_schemas.examples: add one"
        ) from None
    return model.model_validate(data)


def all_examples() -> list[PathwayEvent]:
    return [example(model) for model in EVENT_TYPES.values()]
