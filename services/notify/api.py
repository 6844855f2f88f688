"""The notify HTTP API: acknowledgement by the practice, and what operations need to see.

- POST /reports/{report_id}/acknowledge (practice): a clinician acknowledges receipt and
  action of the report, or of one addendum (`addendum_id`); recorded on the timeline as
  ReportAcknowledged; stops the alert's escalation; a repeat returns the first answer.
- GET /reports/{report_id} (the report's practice, or an operator): each version with its
  delivery, receipt and acknowledgement, and its alerts.
- GET /alerts, GET /deliveries, POST /deliveries/{delivery_id}/redeliver (operator).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel, ConfigDict, Field

from pathway_schemas.values import FindingFlag, PersonId
from services.common.app import Runtime
from services.common.auth import Principal, Role, require
from services.common.errors import Denied, NotFound
from services.common.tracing import continued_trace
from services.notify.metrics import NotifyMetrics
from services.notify.policy import version_id
from services.notify.repository import NotifyRepository
from services.notify.service import Acknowledgement, NotifyService

Document = dict[str, Any]
ReportId = Annotated[str, Path(min_length=1, max_length=64, description="The report's id")]
PracticeClinician = Annotated[Principal, Depends(require(Role.PRACTICE))]
PracticeOrOperator = Annotated[Principal, Depends(require(Role.PRACTICE, Role.OPERATOR))]
operator = require(Role.OPERATOR)


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True)


class AcknowledgementRequest(_Model):
    model_config = ConfigDict(frozen=True, extra="forbid")

    addendum_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="Acknowledge this addendum; leave out to acknowledge the report itself",
    )
    acknowledged_by: PersonId | None = Field(
        default=None,
        description="The clinician who acknowledged (defaults to the calling practice system)",
    )
    action: str = Field(default="", max_length=2000, description="What the practice did about it")


class AcknowledgementView(_Model):
    report_id: str
    addendum_id: str | None
    referral_id: str
    finding_flag: FindingFlag
    acknowledged_at: datetime
    acknowledged_by: str
    action: str
    already_acknowledged: bool

    @classmethod
    def of(cls, ack: Acknowledgement) -> AcknowledgementView:
        return cls(
            report_id=ack.report_id,
            addendum_id=ack.addendum_id,
            referral_id=ack.referral_id,
            finding_flag=ack.finding_flag,
            acknowledged_at=ack.acknowledged_at,
            acknowledged_by=ack.acknowledged_by,
            action=ack.action,
            already_acknowledged=ack.already,
        )


class DeliveryView(_Model):
    delivery_id: str
    referral_id: str
    report_id: str
    addendum_id: str | None
    practice_ods: str
    state: Literal["pending", "delivered", "failed"]
    attempts: int
    next_attempt_at: datetime | None = None
    receipt_id: str | None = None
    delivered_at: datetime | None = None
    last_error: str | None = None

    @classmethod
    def of(cls, document: Document) -> DeliveryView:
        return cls.model_validate({**document, "delivery_id": document["_id"]})


class AlertView(_Model):
    alert_id: str
    referral_id: str
    report_id: str
    addendum_id: str | None
    finding_flag: FindingFlag
    state: Literal["open", "acknowledged"]
    level: int
    recipient_role: str
    raised_at: datetime
    acknowledge_by: datetime
    next_escalation_at: datetime | None
    acknowledged_at: datetime | None = None

    @classmethod
    def of(cls, document: Document) -> AlertView:
        return cls.model_validate({**document, "alert_id": document["_id"]})


class VersionView(_Model):
    addendum_id: str | None
    status: str
    finding_flag: FindingFlag
    opened_at: datetime
    delivered_at: datetime | None
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    action: str = ""


class ReportView(_Model):
    report_id: str
    referral_id: str
    practice_ods: str
    versions: list[VersionView]
    deliveries: list[DeliveryView]
    alerts: list[AlertView]
    open_acknowledgements: int = Field(description="Versions still owed an acknowledgement")


class AcknowledgementDesk:
    """Acknowledge, then measure: shared by the API and the local practice inbox."""

    def __init__(self, runtime: Runtime, service: NotifyService, metrics: NotifyMetrics) -> None:
        self.runtime = runtime
        self.service = service
        self.metrics = metrics
        self.tracer = runtime.tracer_provider.get_tracer("pathway.notify.acknowledgement")

    async def acknowledge(
        self,
        *,
        practice_ods: str,
        report_id: str,
        addendum_id: str | None,
        acknowledged_by: str,
        action: str,
    ) -> Acknowledgement:
        # The practice acknowledges later, in a call of its own: ReportAcknowledged joins the
        # trace of the report it closes, and the call's span is linked to it.
        version = await self.service.repository.version(version_id(report_id, addendum_id))
        with continued_trace(
            self.tracer,
            "acknowledge report",
            version.get("trace") if version else None,
            attributes={"job.kind": "acknowledgement"},
        ):
            outcome = await self.runtime.commit(
                lambda tx: self.service.acknowledge(
                    tx,
                    practice_ods=practice_ods,
                    report_id=report_id,
                    addendum_id=addendum_id,
                    acknowledged_by=acknowledged_by,
                    action=action,
                )
            )
        ack = outcome.value
        assert ack is not None
        if not ack.already:
            elapsed = (ack.acknowledged_at - ack.owed_since).total_seconds()
            self.metrics.acknowledgement_seconds.labels(ack.finding_flag.value).observe(
                max(0.0, elapsed)
            )
        return ack


def _practice_of(principal: Principal) -> str:
    if principal.organisation is None:
        raise Denied("this practice key is bound to no practice (organisation)")
    return principal.organisation


def router(
    desk: AcknowledgementDesk,
    repository: NotifyRepository,
    service: NotifyService,
    wake: Callable[[], None],
) -> APIRouter:
    api = APIRouter()

    @api.post(
        "/reports/{report_id}/acknowledge",
        tags=["acknowledgement"],
        summary="Acknowledge receipt and action of a report or one of its addenda",
        response_model=AcknowledgementView,
        responses={
            403: {"description": "Not this practice's report"},
            404: {"description": "Unknown"},
        },
    )
    async def acknowledge(
        report_id: ReportId,
        request: AcknowledgementRequest,
        principal: PracticeClinician,
    ) -> AcknowledgementView:
        ack = await desk.acknowledge(
            practice_ods=_practice_of(principal),
            report_id=report_id,
            addendum_id=request.addendum_id,
            acknowledged_by=request.acknowledged_by or principal.name,
            action=request.action,
        )
        return AcknowledgementView.of(ack)

    @api.get(
        "/reports/{report_id}",
        tags=["acknowledgement"],
        summary="A report's versions: delivery, receipt, acknowledgement and alerts",
        response_model=ReportView,
    )
    async def report_status(report_id: ReportId, principal: PracticeOrOperator) -> ReportView:
        versions = await repository.versions_of(report_id)
        deliveries = await repository.deliveries_of(report_id)
        if not versions and not deliveries:
            raise NotFound(f"report {report_id} has not been issued to any practice")
        owner = (versions or deliveries)[0]
        if principal.role is Role.PRACTICE and owner["practice_ods"] != principal.organisation:
            raise Denied(f"report {report_id} was not sent to your practice")
        alerts = await repository.alerts_of(report_id)
        return ReportView(
            report_id=report_id,
            referral_id=owner["referral_id"],
            practice_ods=owner["practice_ods"],
            versions=[VersionView.model_validate(v) for v in versions],
            deliveries=[DeliveryView.of(d) for d in deliveries],
            alerts=[AlertView.of(a) for a in alerts],
            open_acknowledgements=sum(1 for v in versions if v.get("acknowledged_at") is None),
        )

    @api.get(
        "/alerts",
        tags=["operations"],
        summary="Alerts by state, newest first",
        response_model=list[AlertView],
        dependencies=[Depends(operator)],
    )
    async def list_alerts(
        state: Literal["open", "acknowledged"] = "open",
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
    ) -> list[AlertView]:
        return [AlertView.of(a) for a in await repository.list_alerts(state, limit)]

    @api.get(
        "/deliveries",
        tags=["operations"],
        summary="Deliveries by state (failed ones need a person)",
        response_model=list[DeliveryView],
        dependencies=[Depends(operator)],
    )
    async def list_deliveries(
        state: Literal["pending", "delivered", "failed"] = "failed",
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
    ) -> list[DeliveryView]:
        return [DeliveryView.of(d) for d in await repository.list_deliveries(state, limit)]

    @api.post(
        "/deliveries/{delivery_id}/redeliver",
        tags=["operations"],
        summary="Send a failed delivery again, with a fresh set of attempts",
        response_model=DeliveryView,
        dependencies=[Depends(operator)],
    )
    async def redeliver(
        delivery_id: Annotated[str, Path(min_length=1, max_length=64)],
    ) -> DeliveryView:
        outcome = await desk.runtime.commit(lambda tx: service.redeliver(tx, delivery_id))
        assert outcome.value is not None
        wake()
        return DeliveryView.of(outcome.value)

    return api
