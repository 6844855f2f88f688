"""Small builders of referral events and worklist items for the vetting rules' tests."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pathway_schemas import new_referral_id
from pathway_schemas.catalogue import examination
from pathway_schemas.events import ReferralAmended, ReferralSubmitted
from pathway_schemas.values import GuidanceOutcome
from services.vetting.service import OpenAccessPolicy

T0 = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)

OPEN_ACCESS = OpenAccessPolicy(enabled=True, examination_codes=("XCHES", "XKNEL"))


def referral_fields(code: str = "XCHES", **overrides: Any) -> dict[str, Any]:
    exam = examination(code)
    fields: dict[str, Any] = {
        "referral_id": new_referral_id(),
        "occurred_at": T0,
        "nhs_number": "9434765919",
        "practice_ods": "A81001",
        "referrer_id": "G1234567",
        "examination_code": code,
        "clinical_question": "Cough for six weeks in a smoker",
        "priority": "routine",
        "modality": exam.modality,
        "ionising": exam.ionising,
        "guidance": {"outcome": GuidanceOutcome.INDICATED},
    }
    fields.update(overrides)
    return fields


def submitted(code: str = "XCHES", **overrides: Any) -> ReferralSubmitted:
    return ReferralSubmitted(**referral_fields(code, **overrides))


def amended(of: ReferralSubmitted, **overrides: Any) -> ReferralAmended:
    fields = of.model_dump()
    fields.update({"amended_by": of.referrer_id, "note": "added the smoking history"})
    fields.update(overrides)
    return ReferralAmended(**fields)
