"""What notify keeps about a referral and its reports, to deliver them and address notices.

Learned from the events it consumes (no service reads another's store): the referral's
practice, referrer and patient from ReferralSubmitted / ReferralAmended; the report and its
addenda from ReportIssued / ReportAddended.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from pathway_schemas.events import ReportAddended, ReportIssued, ReportStatus
from pathway_schemas.values import FindingFlag, StudyReference


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class ReferralRecord(_Record):
    referral_id: str
    practice_ods: str
    referrer_id: str
    nhs_number: str
    examination_code: str


class Addendum(_Record):
    addendum_id: str
    text: str
    finding_flag: FindingFlag
    reported_by: str
    addended_at: datetime


class ReportRecord(_Record):
    report_id: str
    referral_id: str
    status: ReportStatus | None = None  # None: only an addendum has been seen
    practice_ods: str
    provider_ods: str
    text: str = ""
    conclusion: str = ""
    finding_flag: FindingFlag | None = None
    reported_by: str = ""
    key_images: tuple[StudyReference, ...] = ()
    examination_completed_at: datetime | None = None
    issued_at: datetime | None = None
    addenda: tuple[Addendum, ...] = ()

    def addendum(self, addendum_id: str) -> Addendum | None:
        return next((a for a in self.addenda if a.addendum_id == addendum_id), None)


def report_fields(event: ReportIssued) -> dict[str, Any]:
    """The stored fields of an issued report (a final replaces a preliminary's content)."""
    return {
        "report_id": event.report_id,
        "referral_id": event.referral_id,
        "status": event.status.value,
        "practice_ods": event.practice_ods,
        "provider_ods": event.provider_ods,
        "text": event.text,
        "conclusion": event.conclusion,
        "finding_flag": event.finding_flag.value,
        "reported_by": event.reported_by,
        "key_images": [image.model_dump() for image in event.key_images],
        "examination_completed_at": event.examination_completed_at,
        "issued_at": event.occurred_at,
    }


def addendum_fields(event: ReportAddended) -> dict[str, Any]:
    return {
        "addendum_id": event.addendum_id,
        "text": event.text,
        "finding_flag": event.finding_flag.value,
        "reported_by": event.reported_by,
        "addended_at": event.occurred_at,
    }
