"""Events and records for the notify unit tests (synthetic patients only)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nhs_number

from pathway_schemas import new_referral_id
from pathway_schemas.events import ReferralSubmitted, ReportAddended, ReportIssued
from pathway_schemas.values import StudyReference
from services.notify.records import ReferralRecord, ReportRecord, addendum_fields, report_fields

AT = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
STUDY = StudyReference(study_instance_uid="1.2.826.0.1.3680043.8.498.1", accession_number="ACC123")


def report_issued(**changes: Any) -> ReportIssued:
    values: dict[str, Any] = {
        "referral_id": new_referral_id(),
        "occurred_at": AT,
        "report_id": "RPT-0001",
        "status": "final",
        "provider_ods": "RXA01",
        "practice_ods": "A81001",
        "text": "The lungs are clear.",
        "conclusion": "Normal chest.",
        "finding_flag": "routine",
        "reported_by": "GMC-7654321",
        "key_images": [STUDY],
        "examination_completed_at": AT - timedelta(hours=3),
        "due_at": AT + timedelta(days=1),
        "within_target": True,
    }
    values.update(changes)
    return ReportIssued.model_validate(values)


def report_addended(issued: ReportIssued, **changes: Any) -> ReportAddended:
    values: dict[str, Any] = {
        "referral_id": issued.referral_id,
        "occurred_at": AT + timedelta(hours=2),
        "report_id": issued.report_id,
        "addendum_id": "ADD-1",
        "provider_ods": issued.provider_ods,
        "practice_ods": issued.practice_ods,
        "text": "Comparison with the 2024 film: a new 8 mm nodule in the right upper lobe.",
        "finding_flag": "unexpected_significant",
        "reported_by": "GMC-7654321",
    }
    values.update(changes)
    return ReportAddended.model_validate(values)


def record(issued: ReportIssued, *addenda: ReportAddended) -> ReportRecord:
    return ReportRecord.model_validate(
        {**report_fields(issued), "addenda": [addendum_fields(a) for a in addenda]}
    )


def referral_of(issued: ReportIssued) -> ReferralRecord:
    return ReferralRecord(
        referral_id=issued.referral_id,
        practice_ods=issued.practice_ods,
        referrer_id="G1234567",
        nhs_number="9434765919",
        examination_code="XCHES",
    )


def referral_submitted(
    referral_id: str, *, practice_ods: str = "A81001", referrer_id: str = "G1234567"
) -> ReferralSubmitted:
    return ReferralSubmitted(
        referral_id=referral_id,
        occurred_at=AT - timedelta(days=7),
        nhs_number=str(nhs_number.generate(for_region=nhs_number.REGION_SYNTHETIC)[0]),
        practice_ods=practice_ods,
        referrer_id=referrer_id,
        examination_code="XCHES",
        clinical_question="Cough for six weeks in a smoker",
        priority="routine",
        modality="XR",
        ionising=True,
        guidance={"outcome": "indicated"},
    )


def notify_config(path: Path, endpoints: dict[str, str], **sections: dict[str, Any]) -> Path:
    """A notify.json with these practice endpoints (development secrets) and policy sections."""
    document: dict[str, Any] = {
        "practices": [
            {"ods": ods, "endpoint": url, "secret_ref": f"dev:test-secret-{ods.lower()}"}
            for ods, url in endpoints.items()
        ],
        **sections,
    }
    path.write_text(json.dumps(document), "utf-8")
    return path
