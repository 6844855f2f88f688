"""The reporting HTTP API: worklists with priors, examinations, reports, addenda and delays.

A provider's system (and a reporter bound to an organisation) sees only its own provider's
examinations; reporters and operators without an organisation see every provider's.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from pathway_schemas.events import DelayReason, ReportStatus
from pathway_schemas.values import FindingFlag, PersonId, StudyReference
from services.common.app import Runtime
from services.common.auth import Principal, Role, require
from services.common.errors import Denied, Invalid, NotFound
from services.common.store import Tx
from services.reporting import views
from services.reporting.commands import (
    AddendumContent,
    Applied,
    ReportContent,
    Reporting,
    new_addendum_id,
    new_report_id,
)
from services.reporting.intake import ProviderIntake
from services.reporting.repository import ReportingRepository, to_referral
from services.reporting.service import Referral, Rule

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=8,
        max_length=128,
        pattern=r"^[A-Za-z0-9._:-]+$",
        description="Send the same key again to retry safely: the command is applied once",
    ),
]


class _Body(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)


class ReportRequest(_Body):
    status: ReportStatus
    text: str = Field(min_length=1, max_length=20000)
    conclusion: str = Field(min_length=1, max_length=4000)
    finding_flag: FindingFlag
    key_images: tuple[StudyReference, ...] = Field(default=(), max_length=100)


class AddendumRequest(_Body):
    text: str = Field(min_length=1, max_length=20000)
    finding_flag: FindingFlag


class DelayRequest(_Body):
    reason: DelayReason = DelayReason.MDT
    note: str = Field(default="", max_length=2000)


class ReportReceipt(_Body):
    referral_id: str
    report_id: str
    status: ReportStatus
    due_at: datetime
    within_target: bool


class AddendumReceipt(_Body):
    referral_id: str
    report_id: str
    addendum_id: str


class Schedule(_Body):
    referral_id: str
    due_at: datetime
    rule: Rule


_PERSON: TypeAdapter[str] = TypeAdapter(PersonId)


def reporter_id(principal: Principal) -> str:
    """The reporter recorded on a report is the authenticated principal, never a body field."""
    try:
        return _PERSON.validate_python(principal.name)
    except ValidationError:
        raise Invalid(
            "the caller's name is not a valid reporter id: check config/principals.json"
        ) from None


Viewer = Annotated[Principal, Depends(require(Role.REPORTER, Role.OPERATOR, Role.PROVIDER))]
Reporter = Annotated[Principal, Depends(require(Role.REPORTER))]


def router(
    runtime: Runtime,
    repository: ReportingRepository,
    reporting: Reporting,
    intake: ProviderIntake,
    providers: tuple[str, ...],
    *,
    priors_limit: int,
    worklist_limit: int,
) -> APIRouter:
    api = APIRouter(tags=["reporting"])

    def deny(message: str) -> Denied:
        runtime.metrics.authz_denied.labels(runtime.service, "http").inc()
        return Denied(message)

    def check_access(principal: Principal, provider: str | None) -> None:
        bound = principal.role is Role.PROVIDER or principal.organisation is not None
        if bound and (provider is None or principal.organisation != provider):
            raise deny("this examination belongs to another provider")

    async def examined_referral(referral_id: str, principal: Principal) -> Referral:
        referral = await repository.referral(referral_id)
        if referral is None or not referral.details_known:
            raise NotFound("no such referral is known to reporting")
        check_access(principal, referral.provider_ods)
        return referral

    @api.get(
        "/worklist", summary="A provider's reporting worklist, earliest deadline first, with priors"
    )
    async def worklist(
        principal: Viewer,
        provider: Annotated[
            str | None, Query(description="Provider ODS code (a provider sees its own)")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> views.WorklistView:
        code = (provider or principal.organisation or "").strip().upper()
        if not code:
            raise Invalid("provider is required: /worklist?provider=<ODS code>")
        check_access(principal, code)
        if code not in providers and code not in await repository.assigned_providers():
            raise NotFound(f"no provider {code} is configured or has referrals assigned")
        now = runtime.clock.now()
        docs = await repository.worklist(code, min(limit, worklist_limit))
        entries = await views.examinations(repository, docs, now, priors_limit)
        return views.WorklistView(provider_ods=code, as_of=now, examinations=tuple(entries))

    @api.get(
        "/examinations/{referral_id}",
        summary="One examination with its reports and the patient's priors",
    )
    async def examination(referral_id: str, principal: Viewer) -> views.ExaminationView:
        referral = await examined_referral(referral_id, principal)
        doc = await repository.referral_document(referral.referral_id)
        if doc is None:
            raise NotFound("no such referral is known to reporting")
        [view] = await views.examinations(repository, [doc], runtime.clock.now(), priors_limit)
        return view

    @api.post(
        "/examinations/{referral_id}/reports",
        status_code=201,
        summary="Issue a preliminary or final report (never overwritten; a second final is refused)",
    )
    async def issue_report(
        referral_id: str,
        body: ReportRequest,
        principal: Reporter,
        idempotency_key: IdempotencyKey = None,
    ) -> ReportReceipt:
        await examined_referral(referral_id, principal)
        report_id = new_report_id(idempotency_key, scope=f"{referral_id}/{principal.name}")
        content = ReportContent(
            status=body.status,
            text=body.text,
            conclusion=body.conclusion,
            finding_flag=body.finding_flag,
            reported_by=reporter_id(principal),
            key_images=body.key_images,
        )

        async def work(tx: Tx) -> Applied:
            referral = await repository.referral(referral_id, tx)
            if referral is None:
                raise NotFound("no such referral is known to reporting")
            return await reporting.issue_report(tx, referral, report_id, content, source="reporter")

        cause = (
            f"report:{referral_id}:{principal.name}:{idempotency_key}" if idempotency_key else None
        )
        outcome = await runtime.commit(work, cause_id=cause)
        intake.observe(outcome)
        report = await repository.report(report_id)
        if report is None:
            raise NotFound("the report was not recorded")
        referral = await repository.referral(referral_id)
        due_at = referral.due_at if referral and referral.due_at else report["issued_at"]
        return ReportReceipt(
            referral_id=referral_id,
            report_id=report_id,
            status=report["status"],
            due_at=due_at,
            within_target=report["within_target"],
        )

    @api.post(
        "/reports/{report_id}/addenda",
        status_code=201,
        summary="Add an addendum; the report stays as it was",
    )
    async def addend(
        report_id: str,
        body: AddendumRequest,
        principal: Reporter,
        idempotency_key: IdempotencyKey = None,
    ) -> AddendumReceipt:
        report = await repository.report(report_id)
        if report is None:
            raise NotFound("no such report")
        referral_id: str = report["referral_id"]
        await examined_referral(referral_id, principal)
        addendum_id = new_addendum_id(idempotency_key, scope=f"{report_id}/{principal.name}")
        content = AddendumContent(
            text=body.text, finding_flag=body.finding_flag, reported_by=reporter_id(principal)
        )

        async def work(tx: Tx) -> Applied:
            doc = await repository.referral_document(referral_id, tx)
            if doc is None:
                raise NotFound("no such referral is known to reporting")
            return await reporting.addend(
                tx, to_referral(doc), report_id, addendum_id, content, source="reporter"
            )

        cause = (
            f"addendum:{report_id}:{principal.name}:{idempotency_key}" if idempotency_key else None
        )
        await runtime.commit(work, cause_id=cause)
        return AddendumReceipt(
            referral_id=referral_id, report_id=report_id, addendum_id=addendum_id
        )

    @api.post(
        "/examinations/{referral_id}/delay",
        summary="MDT or specialist opinion needed: the deadline moves and referrer and patient are told",
    )
    async def delay(referral_id: str, body: DelayRequest, principal: Reporter) -> Schedule:
        await examined_referral(referral_id, principal)

        async def work(tx: Tx) -> Applied:
            referral = await repository.referral(referral_id, tx)
            if referral is None:
                raise NotFound("no such referral is known to reporting")
            return await reporting.delay(tx, referral, body.reason, body.note, tx.now)

        # One delay per referral: a repeat (or a retry) leaves the deadline where it is.
        outcome = await runtime.commit(work)
        applied = outcome.value
        if applied is None or applied.due_at is None or applied.rule is None:
            raise NotFound("the examination has no deadline")
        return Schedule(referral_id=referral_id, due_at=applied.due_at, rule=applied.rule)

    return api
