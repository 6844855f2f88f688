"""Read models of the reporting API: examinations with their reports and the patient's priors."""

from __future__ import annotations

import asyncio
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from pathway_schemas.events import ReportStatus
from pathway_schemas.values import CareSetting, FindingFlag, Modality, Priority, StudyReference
from services.reporting.repository import Document, ReportingRepository, to_referral
from services.reporting.service import Rule, State


class _View(BaseModel):
    model_config = ConfigDict(frozen=True)


class AddendumView(_View):
    addendum_id: str
    text: str
    finding_flag: FindingFlag
    reported_by: str
    added_at: datetime


class ReportView(_View):
    report_id: str
    referral_id: str
    status: ReportStatus
    provider_ods: str
    text: str
    conclusion: str
    finding_flag: FindingFlag
    reported_by: str
    key_images: tuple[StudyReference, ...]
    issued_at: datetime
    within_target: bool
    addenda: tuple[AddendumView, ...] = Field(
        description="Oldest first; the report above is never changed"
    )


class PriorView(_View):
    """An earlier examination of the same patient, at any provider, with its reports."""

    referral_id: str
    provider_ods: str | None
    examination_code: str | None
    modality: Modality | None
    completed_at: datetime
    study: StudyReference | None
    reports: tuple[ReportView, ...]


class ExaminationView(_View):
    referral_id: str
    state: State
    nhs_number: str | None
    practice_ods: str | None
    provider_ods: str | None
    site_id: str | None
    examination_code: str | None
    modality: Modality | None
    priority: Priority | None
    care_setting: CareSetting | None
    completed_at: datetime | None
    due_at: datetime | None
    rule: Rule | None
    overdue: bool
    study: StudyReference | None
    reports: tuple[ReportView, ...]
    priors: tuple[PriorView, ...] = Field(
        description="Earlier examinations of the patient from every provider, newest first"
    )


class WorklistView(_View):
    provider_ods: str
    as_of: datetime
    examinations: tuple[ExaminationView, ...] = Field(
        description="Awaiting a final report, earliest deadline first"
    )


def _report(doc: Document) -> ReportView:
    return ReportView(
        report_id=doc["_id"],
        referral_id=doc["referral_id"],
        status=doc["status"],
        provider_ods=doc["provider_ods"],
        text=doc["text"],
        conclusion=doc["conclusion"],
        finding_flag=doc["finding_flag"],
        reported_by=doc["reported_by"],
        key_images=tuple(StudyReference.model_validate(k) for k in doc.get("key_images", [])),
        issued_at=doc["issued_at"],
        within_target=doc["within_target"],
        addenda=tuple(AddendumView.model_validate(a) for a in doc.get("addenda", [])),
    )


def _study(doc: Document) -> StudyReference | None:
    return StudyReference.model_validate(doc["study"]) if doc.get("study") else None


async def examinations(
    repository: ReportingRepository, docs: list[Document], now: datetime, priors_limit: int
) -> list[ExaminationView]:
    """Views of these referrals, each with its priors; a fixed number of indexed queries per referral."""
    priors = await asyncio.gather(
        *(
            repository.priors(doc["nhs_number"], doc.get("completed_at") or now, priors_limit)
            if doc.get("nhs_number")
            else _none()
            for doc in docs
        )
    )
    ids = {doc["_id"] for doc in docs} | {p["_id"] for group in priors for p in group}
    reports: dict[str, list[ReportView]] = {}
    for report in await repository.reports_of(sorted(ids)):
        reports.setdefault(report["referral_id"], []).append(_report(report))
    views = []
    for doc, earlier in zip(docs, priors, strict=True):
        referral = to_referral(doc)
        views.append(
            ExaminationView(
                referral_id=referral.referral_id,
                state=referral.state,
                nhs_number=referral.nhs_number,
                practice_ods=referral.practice_ods,
                provider_ods=referral.provider_ods,
                site_id=doc.get("examination_site_id") or referral.site_id,
                examination_code=referral.examination_code,
                modality=referral.modality,
                priority=referral.priority,
                care_setting=referral.care_setting,
                completed_at=referral.completed_at,
                due_at=referral.due_at,
                rule=referral.rule,
                overdue=referral.state is State.COMPLETED
                and referral.due_at is not None
                and referral.due_at < now,
                study=_study(doc),
                reports=tuple(reports.get(referral.referral_id, ())),
                priors=tuple(
                    PriorView(
                        referral_id=p["_id"],
                        provider_ods=p.get("provider_ods"),
                        examination_code=p.get("examination_code"),
                        modality=p.get("modality"),
                        completed_at=p["completed_at"],
                        study=_study(p),
                        reports=tuple(reports.get(p["_id"], ())),
                    )
                    for p in earlier
                    if p["_id"] != referral.referral_id
                ),
            )
        )
    return views


async def _none() -> list[Document]:
    return []
