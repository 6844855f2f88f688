"""Builders of the events the reporting service consumes, for its tests."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

from pathway_schemas import new_referral_id, topics
from pathway_schemas.base import PathwayEvent
from pathway_schemas.catalogue import examination
from pathway_schemas.events import (
    Appointment,
    AppointmentBooked,
    ProviderExaminationCompleted,
    ProviderPatientArrived,
    ProviderReportAddended,
    ProviderReportDelayed,
    ProviderReportIssued,
    VettingAccepted,
    WalkInAuthorised,
)
from pathway_schemas.values import StudyReference

# Monday 8 June 2026, 09:00 in London (BST).
T0 = datetime(2026, 6, 8, 8, 0, tzinfo=UTC)
PATIENT = "9434765919"
OTHER_PATIENT = "4010232137"
RXA01, NWX02 = "RXA01", "NWX02"

_studies = itertools.count(1)


def study() -> StudyReference:
    n = next(_studies)
    return StudyReference(
        study_instance_uid=f"1.2.826.0.1.3680043.8.498.{n}", accession_number=f"ACC{n}"
    )


def accepted(
    referral_id: str | None = None,
    *,
    nhs_number: str = PATIENT,
    code: str = "XCHES",
    priority: str = "routine",
    care_setting: str = "gp",
    **overrides: Any,
) -> VettingAccepted:
    exam = examination(code)
    fields: dict[str, Any] = {
        "referral_id": referral_id or new_referral_id(),
        "occurred_at": T0 - timedelta(days=14),
        "nhs_number": nhs_number,
        "practice_ods": "A81001",
        "referrer_id": "G1234567",
        "examination_code": code,
        "modality": exam.modality,
        "ionising": exam.ionising,
        "clinical_question": "Cough for six weeks in a smoker",
        "care_setting": care_setting,
        "priority": priority,
        "protocol": "PA chest",
        "referral_received_at": T0 - timedelta(days=15),
        "justified_by": "dr.vetting",
        "decided_by": "dr.vetting",
    }
    fields.update(overrides)
    return VettingAccepted(**fields)


def booked(
    of: VettingAccepted, provider: str, *, start: datetime | None = None
) -> AppointmentBooked:
    start = start or T0 - timedelta(days=1)
    return AppointmentBooked(
        referral_id=of.referral_id,
        occurred_at=of.occurred_at + timedelta(hours=1),
        appointment=Appointment(
            provider_ods=provider,
            site_id=f"{provider}-MAIN",
            slot_id=f"slot-{of.referral_id[-8:]}",
            start=start,
            end=start + timedelta(minutes=10),
        ),
        booked_by="patient",
        priority=of.priority,
        modality=of.modality,
        examination_code=of.examination_code,
        wait_seconds=86400.0,
        within_target=True,
    )


def walk_in(of: VettingAccepted, provider: str) -> WalkInAuthorised:
    return WalkInAuthorised(
        referral_id=of.referral_id,
        occurred_at=of.occurred_at + timedelta(hours=1),
        provider_ods=provider,
        site_id=f"{provider}-MAIN",
        valid_from=T0 - timedelta(days=1),
        valid_until=T0 + timedelta(days=30),
        modality=of.modality,
        examination_code=of.examination_code,
    )


def arrived(referral_id: str, at: datetime) -> ProviderPatientArrived:
    return ProviderPatientArrived(referral_id=referral_id, occurred_at=at, site_id="MAIN")


def completed(
    referral_id: str, at: datetime, of_study: StudyReference | None = None
) -> ProviderExaminationCompleted:
    return ProviderExaminationCompleted(
        referral_id=referral_id,
        occurred_at=at,
        site_id="MAIN",
        study=of_study or study(),
        performed_by="radiographer.1",
    )


def provider_report(
    referral_id: str, at: datetime, *, report_id: str = "R-1", status: str = "final"
) -> ProviderReportIssued:
    return ProviderReportIssued(
        referral_id=referral_id,
        occurred_at=at,
        report_id=report_id,
        status=status,
        text="Lungs clear. Heart size normal.",
        conclusion="Normal chest radiograph.",
        finding_flag="routine",
        reported_by="dr.nwx.reporter",
    )


def provider_addendum(
    referral_id: str, at: datetime, *, report_id: str = "R-1", addendum_id: str = "A-1"
) -> ProviderReportAddended:
    return ProviderReportAddended(
        referral_id=referral_id,
        occurred_at=at,
        report_id=report_id,
        addendum_id=addendum_id,
        text="Addendum: a small nodule in the left upper zone; CT advised.",
        finding_flag="unexpected_significant",
        reported_by="dr.nwx.reporter",
    )


def provider_delay(referral_id: str, at: datetime) -> ProviderReportDelayed:
    return ProviderReportDelayed(
        referral_id=referral_id, occurred_at=at, reason="specialist_opinion"
    )


def canonical(*events: PathwayEvent) -> list[tuple[PathwayEvent, str]]:
    return [(event, event.topic) for event in events]


def from_provider(provider: str, *events: PathwayEvent) -> list[tuple[PathwayEvent, str]]:
    return [(event, topics.provider_inbound(provider)) for event in events]
