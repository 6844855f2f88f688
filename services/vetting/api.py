"""The vetting worklist API: clinicians list and decide; operators may read.

Decisions are idempotent two ways: with an `Idempotency-Key` header a repeat of the request
returns the first answer; without one, a second decision on an item that is no longer
waiting gets 409 with the decision it already has. Either way one decision, one event.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from pathway_schemas.catalogue import CATALOGUE
from pathway_schemas.values import CareSetting, FieldError, GuidanceAdvice, Modality, Priority
from services.common.app import Runtime
from services.common.auth import Principal, Role, require
from services.common.errors import NotFound
from services.common.store import Tx
from services.common.tracing import continued_trace
from services.vetting import service
from services.vetting.metrics import VettingMetrics
from services.vetting.repository import ConcurrentChange, WorklistRepository
from services.vetting.service import (
    AcceptCommand,
    Decision,
    DecisionOutcome,
    HistoryEntry,
    NotWaiting,
    QueryCommand,
    ReturnCommand,
    State,
    Step,
    VettingPolicy,
    WorklistItem,
)

ReferralIdPath = Annotated[str, Path(pattern=r"^ref_[0-9a-f]{32}$", description="The referral id")]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=128,
        pattern=r"^[\x21-\x7e]+$",
        description="Repeat a request with the same key to get its first answer, never a second decision",
    ),
]

# Module level: the handlers' annotations are resolved against this module's names.
Reader = Annotated[Principal, Depends(require(Role.VETTING_CLINICIAN, Role.OPERATOR))]
Clinician = Annotated[Principal, Depends(require(Role.VETTING_CLINICIAN))]


class DecisionView(Decision):
    referral_id: str


class WorklistEntryView(BaseModel):
    model_config = ConfigDict(frozen=True)

    referral_id: str
    state: State
    priority: Priority
    modality: Modality
    examination_code: str
    examination_name: str
    ionising: bool
    care_setting: CareSetting
    practice_ods: str
    referrer_id: str
    nhs_number: str | None = Field(description="Shown to vetting clinicians only")
    clinical_question: str | None = Field(description="Shown to vetting clinicians only")
    guidance: GuidanceAdvice
    duplicate: bool = Field(
        description="Earlier referrals for this patient and examination were flagged"
    )
    duplicate_of: tuple[str, ...]
    received_at: datetime
    entered_at: datetime = Field(
        description="When it last entered vetting (submission, amendment or answer)"
    )
    age_seconds: float = Field(description="Time on the worklist since entered_at")
    why: str = Field(description="Why a person must vet it")
    open_query_id: str | None
    decision: Decision | None
    history: tuple[HistoryEntry, ...] = Field(
        description="Audit trail: returns, queries, answers, amendments"
    )


class WorklistPage(BaseModel):
    items: list[WorklistEntryView]
    generated_at: datetime


class ConflictView(BaseModel):
    detail: str
    errors: list[FieldError] = []
    state: State
    decision: DecisionView | None


def entry_view(item: WorklistItem, now: datetime, principal: Principal) -> WorklistEntryView:
    facts = item.referral
    clinician = principal.role is Role.VETTING_CLINICIAN
    history = item.history
    decision = item.decision
    if not clinician:
        # Operators watch the queue, not the patient: no identifiers or clinical text.
        history = tuple(_redacted_entry(e) for e in history)
        decision = _redacted_decision(decision)
    return WorklistEntryView(
        referral_id=item.referral_id,
        state=item.state,
        priority=facts.priority,
        modality=facts.modality,
        examination_code=facts.examination_code,
        examination_name=CATALOGUE[facts.examination_code].name,
        ionising=facts.ionising,
        care_setting=facts.care_setting,
        practice_ods=facts.practice_ods,
        referrer_id=facts.referrer_id,
        nhs_number=facts.nhs_number if clinician else None,
        clinical_question=facts.clinical_question if clinician else None,
        guidance=facts.guidance,
        duplicate=bool(facts.duplicate_of),
        duplicate_of=facts.duplicate_of,
        received_at=item.received_at,
        entered_at=item.entered_at,
        age_seconds=service.age_seconds(item.entered_at, now),
        why=item.why,
        open_query_id=item.open_query_id,
        decision=decision,
        history=history,
    )


def _redacted_decision(decision: Decision | None) -> Decision | None:
    if decision is None:
        return None
    return decision.model_copy(update={"advice": None, "question": None})


def _redacted_entry(entry: HistoryEntry) -> HistoryEntry:
    # Only the service's own words (why it was queued) are free of clinical text.
    note = entry.note if entry.kind is service.HistoryKind.QUEUED else ""
    return entry.model_copy(update={"note": note, "decision": _redacted_decision(entry.decision)})


def _decision_view(referral_id: str, decision: Decision) -> DecisionView:
    return DecisionView(referral_id=referral_id, **decision.model_dump())


def _conflict(
    referral_id: str, message: str, state: State, decision: Decision | None
) -> JSONResponse:
    body = ConflictView(
        detail=message,
        state=state,
        decision=_decision_view(referral_id, decision) if decision else None,
    )
    return JSONResponse(status_code=409, content=body.model_dump(mode="json"))


def worklist_router(
    runtime: Runtime, repository: WorklistRepository, policy: VettingPolicy, metrics: VettingMetrics
) -> APIRouter:
    router = APIRouter(prefix="/worklist", tags=["worklist"])
    tracer = runtime.tracer_provider.get_tracer("pathway.vetting.decision")
    decision_responses: dict[int | str, dict[str, object]] = {
        404: {"description": "No such referral in vetting"},
        409: {"model": ConflictView, "description": "Not waiting: already decided, or cancelled"},
        422: {"description": "Invalid decision; `errors` names the fields"},
    }

    @router.get(
        "",
        response_model=WorklistPage,
        summary="Referrals waiting for vetting, urgent first, then oldest",
    )
    async def list_worklist(
        principal: Reader,
        modality: Modality | None = None,
        priority: Priority | None = None,
        min_age_minutes: Annotated[
            int, Query(ge=0, le=525_600, description="Only items waiting this long")
        ] = 0,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
    ) -> WorklistPage:
        now = runtime.clock.now()
        items = await repository.waiting(
            modality=modality,
            priority=priority,
            entered_before=now - timedelta(minutes=min_age_minutes) if min_age_minutes else None,
            limit=limit,
        )
        return WorklistPage(items=[entry_view(i, now, principal) for i in items], generated_at=now)

    @router.get(
        "/{referral_id}",
        response_model=WorklistEntryView,
        summary="One referral in vetting, any state",
    )
    async def get_item(referral_id: ReferralIdPath, principal: Reader) -> WorklistEntryView:
        item = await repository.load(referral_id)
        if item is None:
            raise NotFound("no referral with this id in vetting")
        return entry_view(item, runtime.clock.now(), principal)

    async def decide(
        referral_id: str,
        key: str | None,
        outcome: DecisionOutcome,
        rule: Callable[[WorklistItem, datetime], Step],
    ) -> DecisionView | JSONResponse:
        async def work(tx: Tx) -> Step:
            item = await repository.load(referral_id, tx)
            if item is None:
                raise NotFound("no referral with this id in vetting")
            return await repository.record(tx, rule(item, tx.now), previous=item)

        cause = f"vetting-decision:{referral_id}:{key}" if key else None
        # The decision, and the event it emits, join the trace of the referral's submission;
        # this call's own span is linked to it.
        with continued_trace(
            tracer,
            "vetting decision",
            await repository.trace_of(referral_id),
            attributes={"job.kind": "vetting_decision", "vetting.outcome": outcome.value},
        ):
            try:
                result = await runtime.commit(work, cause_id=cause)
            except NotWaiting as refused:
                return _conflict(referral_id, refused.message, refused.state, refused.decision)
            except ConcurrentChange:
                current = await repository.load(referral_id)
                assert current is not None
                message = "another decision was made at the same moment"
                return _conflict(referral_id, message, current.state, current.decision)
        if result.duplicate:
            return await _replay(referral_id, key, outcome)
        assert result.value is not None
        assert result.value.decision is not None
        metrics.record(result.value)
        return _decision_view(referral_id, result.value.decision)

    async def _replay(
        referral_id: str, key: str | None, outcome: DecisionOutcome
    ) -> DecisionView | JSONResponse:
        item = await repository.load(referral_id)
        earlier = item.decision_under_key(key) if item is not None and key else None
        if item is None or earlier is None:
            raise NotFound("no decision under this Idempotency-Key")
        if earlier.outcome is not outcome:
            message = (
                f"this Idempotency-Key was used for an earlier decision ({earlier.outcome.value})"
            )
            return _conflict(referral_id, message, item.state, earlier)
        return _decision_view(referral_id, earlier)

    @router.post(
        "/{referral_id}/accept",
        response_model=DecisionView,
        responses=decision_responses,
        summary="Justify and accept: protocol, confirmed priority, practitioner for ionising examinations",
    )
    async def accept(
        referral_id: ReferralIdPath,
        command: AcceptCommand,
        principal: Clinician,
        idempotency_key: IdempotencyKey = None,
    ) -> DecisionView | JSONResponse:
        return await decide(
            referral_id,
            idempotency_key,
            DecisionOutcome.ACCEPTED,
            lambda item, now: service.accept(
                item,
                command,
                by=principal.name,
                now=now,
                policy=policy.open_access,
                idempotency_key=idempotency_key,
            ),
        )

    @router.post(
        "/{referral_id}/return",
        response_model=DecisionView,
        responses=decision_responses,
        summary="Return to the referrer with a reason and advice",
    )
    async def return_referral(
        referral_id: ReferralIdPath,
        command: ReturnCommand,
        principal: Clinician,
        idempotency_key: IdempotencyKey = None,
    ) -> DecisionView | JSONResponse:
        return await decide(
            referral_id,
            idempotency_key,
            DecisionOutcome.RETURNED,
            lambda item, now: service.return_to_referrer(
                item, command, by=principal.name, now=now, idempotency_key=idempotency_key
            ),
        )

    @router.post(
        "/{referral_id}/query",
        response_model=DecisionView,
        responses=decision_responses,
        summary="Ask the referrer a question; the answer brings it back to the worklist",
    )
    async def query(
        referral_id: ReferralIdPath,
        command: QueryCommand,
        principal: Clinician,
        idempotency_key: IdempotencyKey = None,
    ) -> DecisionView | JSONResponse:
        query_id = f"q_{uuid.uuid4().hex[:16]}"
        return await decide(
            referral_id,
            idempotency_key,
            DecisionOutcome.QUERIED,
            lambda item, now: service.query_referrer(
                item,
                command,
                by=principal.name,
                now=now,
                query_id=query_id,
                idempotency_key=idempotency_key,
            ),
        )

    return router
