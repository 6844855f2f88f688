"""Units of work of the reporting service, shared by the Kafka handlers and the HTTP API.

Each runs inside `runtime.commit` (one transaction): it reads what it needs, applies one
rule from `service`, writes the change and emits the canonical events it causes.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from pathway_schemas.events import (
    DelayReason,
    ExaminationAbandoned,
    ExaminationCompleted,
    PatientArrived,
    ReferralAmended,
    ReferralSubmitted,
    ReportAddended,
    ReportDelayed,
    ReportingScheduled,
    ReportIssued,
    ReportStatus,
    VettingAccepted,
)
from pathway_schemas.values import CareSetting, FindingFlag, Modality, Priority, StudyReference
from services.common.errors import Rejected
from services.common.store import Tx
from services.reporting import service
from services.reporting.repository import Document, ReportingRepository
from services.reporting.service import Referral, Rule, State, TurnaroundPolicy

_IDS = uuid.UUID("0d7c2b8e-3c8a-4f7e-9a51-6f0f1d2e3b4c")


def report_id_from_provider(referral_id: str, provider: str, provider_report_id: str) -> str:
    """Our id of a provider's report: stable, so a resent report is recognised, and unique across providers."""
    return "rpt_" + uuid.uuid5(_IDS, f"{referral_id}/{provider}/{provider_report_id}").hex


def addendum_id_from_provider(report_id: str, provider_addendum_id: str) -> str:
    return "add_" + uuid.uuid5(_IDS, f"{report_id}/{provider_addendum_id}").hex


def new_report_id(idempotency_key: str | None = None, scope: str = "") -> str:
    """A reporter's report id: derived from the idempotency key when there is one (a retry finds it)."""
    return "rpt_" + (
        uuid.uuid5(_IDS, f"{scope}/{idempotency_key}").hex if idempotency_key else uuid.uuid4().hex
    )


def new_addendum_id(idempotency_key: str | None = None, scope: str = "") -> str:
    return "add_" + (
        uuid.uuid5(_IDS, f"{scope}/{idempotency_key}").hex if idempotency_key else uuid.uuid4().hex
    )


@dataclass(frozen=True)
class ReportContent:
    status: ReportStatus
    text: str
    conclusion: str
    finding_flag: FindingFlag
    reported_by: str
    key_images: tuple[StudyReference, ...] = ()
    # When the reporter signed it in the provider's system; the turnaround clock stops when
    # the report is available on the pathway (the unit of work's time), not at signing.
    signed_at: datetime | None = None


@dataclass(frozen=True)
class AddendumContent:
    text: str
    finding_flag: FindingFlag
    reported_by: str


@dataclass(frozen=True)
class FinalReport:
    """What the turnaround metrics need of a final report."""

    priority: Priority
    care_setting: CareSetting
    turnaround_s: float
    within_target: bool


@dataclass(frozen=True)
class Applied:
    """What a unit of work did: for the API's answer and the metrics (after the commit)."""

    changed: bool = True
    report_id: str | None = None
    addendum_id: str | None = None
    due_at: datetime | None = None
    rule: Rule | None = None
    within_target: bool | None = None
    final: FinalReport | None = None


Source = Literal["provider", "reporter"]


class Reporting:
    def __init__(self, repository: ReportingRepository, policy: TurnaroundPolicy) -> None:
        self.repository = repository
        self.policy = policy

    # ------------------------------------------------------------------ news from the canonical topics

    async def record_requested(
        self, tx: Tx, event: ReferralSubmitted | ReferralAmended
    ) -> Referral:
        before = await self.repository.referral(event.referral_id, tx)
        fields: Document = {
            "nhs_number": event.nhs_number,
            "practice_ods": event.practice_ods,
            "requested_priority": event.priority.value,
        }
        # Vetting's acceptance is the authority on what is examined; a late-read request must not undo it.
        if before is None or not before.accepted:
            fields |= {
                "care_setting": event.care_setting.value,
                "examination_code": event.examination_code,
                "modality": event.modality.value,
            }
        return await self.repository.update_referral(tx, event.referral_id, fields)

    async def record_accepted(self, tx: Tx, event: VettingAccepted) -> Referral:
        return await self.repository.update_referral(
            tx,
            event.referral_id,
            {
                "nhs_number": event.nhs_number,
                "practice_ods": event.practice_ods,
                "care_setting": event.care_setting.value,
                "examination_code": event.examination_code,
                "modality": event.modality.value,
                "confirmed_priority": event.priority.value,
                "accepted": True,
            },
        )

    async def record_cancelled(self, tx: Tx, referral_id: str) -> Referral:
        return await self.repository.update_referral(tx, referral_id, {"cancelled": True})

    async def assign(
        self, tx: Tx, referral_id: str, provider: str, site_id: str, slot_id: str | None
    ) -> Referral | None:
        """Record the provider a referral is booked with (or walk-in authorised at)."""
        before = await self.repository.referral(referral_id, tx)
        if not service.may_reassign(before):
            return before  # examined already: the examining provider stays
        return await self.repository.update_referral(
            tx,
            referral_id,
            {
                "provider_ods": provider,
                "site_id": site_id,
                "slot_id": slot_id,
                "state": State.PENDING.value,
            },
        )

    async def release(self, tx: Tx, referral_id: str, provider: str, slot_id: str) -> None:
        """A cancelled appointment frees the referral from its provider, unless it was moved since."""
        doc = await self.repository.referral_document(referral_id, tx)
        if doc is None or State(doc.get("state", State.PENDING)) not in service.OPEN_FOR_ASSIGNMENT:
            return
        if doc.get("provider_ods") == provider and doc.get("slot_id") in (slot_id, None):
            await self.repository.update_referral(
                tx, referral_id, {"provider_ods": None, "site_id": None, "slot_id": None}
            )

    # ------------------------------------------------------------------ examination

    async def arrive(
        self, tx: Tx, referral: Referral, site_id: str, occurred_at: datetime
    ) -> Applied:
        service.not_in_future(occurred_at, tx.now)
        if not service.check_arrival(referral):
            return Applied(changed=False)
        await self._transition(
            tx, referral, {"state": State.ARRIVED.value, "arrived_at": occurred_at}
        )
        tx.emit(
            PatientArrived(
                referral_id=referral.referral_id,
                occurred_at=occurred_at,
                provider_ods=_provider(referral),
                site_id=site_id,
            )
        )
        return Applied()

    async def complete(
        self,
        tx: Tx,
        referral: Referral,
        site_id: str,
        study: StudyReference,
        performed_by: str | None,
        occurred_at: datetime,
    ) -> Applied:
        service.not_in_future(occurred_at, tx.now)
        if not service.check_completion(referral, study.study_instance_uid):
            return Applied(changed=False, due_at=referral.due_at, rule=referral.rule)
        priority, care_setting = _clinical(referral)
        deadline = service.reporting_deadline(occurred_at, priority, care_setting, self.policy)
        await self._transition(
            tx,
            referral,
            {
                "state": State.COMPLETED.value,
                "examination_site_id": site_id,
                "study": study.model_dump(mode="json"),
                "performed_by": performed_by,
                "completed_at": occurred_at,
                "due_at": deadline.due_at,
                "rule": deadline.rule,
                "scheduled_rule": deadline.rule,
            },
        )
        provider = _provider(referral)
        modality, examination_code = _examination(referral)
        tx.emit(
            ExaminationCompleted(
                referral_id=referral.referral_id,
                occurred_at=occurred_at,
                provider_ods=provider,
                site_id=site_id,
                study=study,
                modality=modality,
                examination_code=examination_code,
                performed_by=performed_by,
            )
        )
        tx.emit(
            ReportingScheduled(
                referral_id=referral.referral_id,
                occurred_at=tx.now,
                due_at=deadline.due_at,
                rule=deadline.rule,
                provider_ods=provider,
            )
        )
        return Applied(due_at=deadline.due_at, rule=deadline.rule)

    async def abandon(
        self, tx: Tx, referral: Referral, reason: str, occurred_at: datetime
    ) -> Applied:
        service.not_in_future(occurred_at, tx.now)
        if not service.check_abandonment(referral):
            return Applied(changed=False)
        await self._transition(
            tx,
            referral,
            {"state": State.ABANDONED.value, "abandoned_at": occurred_at, "abandon_reason": reason},
        )
        tx.emit(
            ExaminationAbandoned(
                referral_id=referral.referral_id,
                occurred_at=occurred_at,
                provider_ods=_provider(referral),
                reason=reason,
            )
        )
        return Applied()

    # ------------------------------------------------------------------ reports

    async def issue_report(
        self,
        tx: Tx,
        referral: Referral,
        report_id: str,
        content: ReportContent,
        *,
        source: Source,
        source_report_id: str | None = None,
    ) -> Applied:
        """Issue a preliminary or final report; the turnaround clock stops when it is available (now)."""
        existing = await self.repository.report(report_id, tx)
        if existing is not None:
            if (
                existing["referral_id"] == referral.referral_id
                and existing["status"] == content.status.value
            ):
                return Applied(
                    changed=False, report_id=report_id, within_target=existing["within_target"]
                )
            raise Rejected(
                "this report id was already used for another report: send an addendum instead"
            )
        service.check_report(referral, content.status)
        priority, care_setting = _clinical(referral)
        completed_at, due_at = _examined(referral)
        now = tx.now
        on_time = service.within_target(now, due_at)
        provider = _provider(referral)
        await self.repository.insert_report(
            tx,
            {
                "_id": report_id,
                "referral_id": referral.referral_id,
                "nhs_number": referral.nhs_number,
                "provider_ods": provider,
                "status": content.status.value,
                "text": content.text,
                "conclusion": content.conclusion,
                "finding_flag": content.finding_flag.value,
                "reported_by": content.reported_by,
                "key_images": [image.model_dump(mode="json") for image in content.key_images],
                "issued_at": now,
                "signed_at": content.signed_at or now,
                "within_target": on_time,
                "source": source,
                "source_report_id": source_report_id,
                "addenda": [],
            },
        )
        final: FinalReport | None = None
        if content.status is ReportStatus.FINAL:
            moved = await self.repository.update_referral_if(
                tx,
                referral.referral_id,
                State.COMPLETED,
                {"state": State.REPORTED.value, "final_report_id": report_id, "reported_at": now},
            )
            if not moved:
                raise Rejected("a final report was issued meanwhile: add an addendum instead")
            turnaround = max(0.0, (now - completed_at).total_seconds())
            final = FinalReport(priority, care_setting, turnaround, on_time)
        tx.emit(
            ReportIssued(
                referral_id=referral.referral_id,
                occurred_at=now,
                report_id=report_id,
                status=content.status,
                provider_ods=provider,
                practice_ods=_practice(referral),
                text=content.text,
                conclusion=content.conclusion,
                finding_flag=content.finding_flag,
                reported_by=content.reported_by,
                key_images=content.key_images,
                examination_completed_at=completed_at,
                due_at=due_at,
                within_target=on_time,
            )
        )
        return Applied(
            report_id=report_id,
            due_at=due_at,
            rule=referral.rule,
            within_target=on_time,
            final=final,
        )

    async def addend(
        self,
        tx: Tx,
        referral: Referral,
        report_id: str,
        addendum_id: str,
        content: AddendumContent,
        *,
        source: Source,
        source_addendum_id: str | None = None,
    ) -> Applied:
        """Add to an issued report: the report itself is never changed."""
        report = await self.repository.report(report_id, tx)
        if report is None or report["referral_id"] != referral.referral_id:
            raise Rejected("no such report of this referral: an addendum needs an issued report")
        service.check_addendum(referral)
        added = await self.repository.add_addendum(
            tx,
            report_id,
            {
                "addendum_id": addendum_id,
                "text": content.text,
                "finding_flag": content.finding_flag.value,
                "reported_by": content.reported_by,
                "added_at": tx.now,
                "source": source,
                "source_addendum_id": source_addendum_id,
            },
        )
        if not added:
            return Applied(changed=False, report_id=report_id, addendum_id=addendum_id)
        tx.emit(
            ReportAddended(
                referral_id=referral.referral_id,
                occurred_at=tx.now,
                report_id=report_id,
                addendum_id=addendum_id,
                provider_ods=report["provider_ods"],
                practice_ods=_practice(referral),
                text=content.text,
                finding_flag=content.finding_flag,
                reported_by=content.reported_by,
            )
        )
        return Applied(report_id=report_id, addendum_id=addendum_id)

    async def delay(
        self, tx: Tx, referral: Referral, reason: DelayReason, note: str, occurred_at: datetime
    ) -> Applied:
        """MDT or specialist opinion: the deadline moves to N working days and referrer and patient are told."""
        if not service.check_delay(referral):
            return Applied(changed=False, due_at=referral.due_at, rule=referral.rule)
        completed_at, _ = _examined(referral)
        deadline = service.mdt_deadline(completed_at, self.policy)
        moved = await self.repository.update_referral_if(
            tx,
            referral.referral_id,
            State.COMPLETED,
            {
                "due_at": deadline.due_at,
                "rule": deadline.rule,
                "delay_reason": reason.value,
                "delay_note": note,
            },
        )
        if not moved:
            raise Rejected("a final report was issued meanwhile: nothing to delay")
        provider = _provider(referral)
        tx.emit(
            ReportingScheduled(
                referral_id=referral.referral_id,
                occurred_at=occurred_at,
                due_at=deadline.due_at,
                rule=deadline.rule,
                provider_ods=provider,
            )
        )
        tx.emit(
            ReportDelayed(
                referral_id=referral.referral_id,
                occurred_at=occurred_at,
                reason=reason,
                new_due_at=deadline.due_at,
                provider_ods=provider,
                practice_ods=_practice(referral),
            )
        )
        return Applied(due_at=deadline.due_at, rule=deadline.rule)

    async def _transition(self, tx: Tx, referral: Referral, fields: Document) -> None:
        if not await self.repository.update_referral_if(
            tx, referral.referral_id, referral.state, fields
        ):
            raise Rejected("the referral changed meanwhile: the event does not apply to its state")


# A referral reaches these steps only once its details and assignment are known
# (`Referral.ready_for_provider`); these helpers make that explicit to the type checker.


def _provider(referral: Referral) -> str:
    if referral.provider_ods is None:
        raise Rejected("the referral is not assigned to a provider")
    return referral.provider_ods


def _practice(referral: Referral) -> str:
    if referral.practice_ods is None:
        raise Rejected("the referral's practice is not known")
    return referral.practice_ods


def _clinical(referral: Referral) -> tuple[Priority, CareSetting]:
    if referral.priority is None or referral.care_setting is None:
        raise Rejected("the referral's priority and care setting are not known")
    return referral.priority, referral.care_setting


def _examination(referral: Referral) -> tuple[Modality, str]:
    if referral.modality is None or referral.examination_code is None:
        raise Rejected("the referral's examination is not known")
    return referral.modality, referral.examination_code


def _examined(referral: Referral) -> tuple[datetime, datetime]:
    if referral.completed_at is None or referral.due_at is None:
        raise Rejected("the examination is not completed")
    return referral.completed_at, referral.due_at
