"""The request service's HTTP API: submit, read, list, cancel, answer, amend, and ask for guidance.

Request models are strict (unknown fields refused, every string bounded, no normalising of
identifiers), so that the OpenAPI document says exactly what is accepted. Every refusal is a
4xx whose body names each bad field (`ErrorBody`).
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime
from typing import Annotated, Any

import nhs_number
from fastapi import APIRouter, Depends, Header, Path, Query, Response
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from pathway_schemas.catalogue import CATALOGUE
from pathway_schemas.events import CancellationReason, ReferralDetails
from pathway_schemas.values import (
    CareSetting,
    FieldError,
    GuidanceAdvice,
    GuidanceOutcome,
    PersonId,
    Priority,
)
from services.common.auth import Principal, Role, require
from services.common.errors import Denied, Invalid, NotFound
from services.request import service
from services.request.commands import Referrals, contract
from services.request.repository import Document, PageQuery
from services.request.timeline import ReferralState

# --------------------------------------------------------------------------- field types

_NO_CONTROL_CHARACTERS = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"
REFERRAL_ID_PATTERN = r"^ref_[0-9a-f]{32}$"
IDEMPOTENCY_KEY_PATTERN = r"^[A-Za-z0-9._:-]{8,128}$"
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)


def _nhs_check_digit(value: str) -> str:
    digits = value.replace(" ", "").replace("-", "")
    if not nhs_number.is_valid(digits):
        raise ValueError(
            "the NHS number fails its Modulus 11 check digit: check it was typed correctly"
        )
    return digits


def _in_catalogue(value: str) -> str:
    if value not in CATALOGUE:
        raise ValueError("not in the examination catalogue; the OpenAPI document lists the codes")
    return value


def _has_words(value: str) -> str:
    if len(value.strip()) < 3 or not any(c.isalnum() for c in value):
        raise ValueError("needs at least three characters, with letters or digits")
    return value


def _has_text(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


def _instant(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("needs a UTC offset, e.g. 2026-03-01T00:00:00Z")
    try:
        moment = value.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"must lie between {EARLIEST.year} and {LATEST.year}") from None
    if not EARLIEST <= moment < LATEST:
        raise ValueError(f"must lie between {EARLIEST.year} and {LATEST.year}")
    return moment


NhsNumberInput = Annotated[
    str,
    Field(
        pattern=r"^[0-9]{3}[ -]?[0-9]{3}[ -]?[0-9]{4}$",
        description="NHS number: 10 digits (spaces or dashes allowed between the 3-3-4 groups), valid Modulus 11",
        examples=["943 476 5919"],
    ),
    AfterValidator(_nhs_check_digit),
]
OdsInput = Annotated[
    str,
    Field(pattern=r"^[A-Z0-9]{3,10}$", description="ODS code of a practice", examples=["A81001"]),
]
ExaminationInput = Annotated[
    str,
    Field(
        min_length=5,
        max_length=5,
        description="Examination code from the catalogue",
        examples=["XCHES"],
        json_schema_extra={"enum": sorted(CATALOGUE)},
    ),
    AfterValidator(_in_catalogue),
]
ClinicalQuestion = Annotated[
    str,
    Field(
        min_length=3,
        max_length=4000,
        pattern=_NO_CONTROL_CHARACTERS,
        examples=["Cough for six weeks in a smoker"],
    ),
    AfterValidator(_has_words),
]
Answer = Annotated[
    str,
    Field(min_length=1, max_length=4000, pattern=_NO_CONTROL_CHARACTERS),
    AfterValidator(_has_text),
]
Note = Annotated[str, Field(max_length=2000, pattern=_NO_CONTROL_CHARACTERS)]
Instant = Annotated[datetime, AfterValidator(_instant)]


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SubmitReferral(_Input):
    nhs_number: NhsNumberInput
    practice_ods: OdsInput | None = Field(
        default=None, description="Defaults to the calling practice; must equal it"
    )
    referrer_id: PersonId
    examination_code: ExaminationInput
    clinical_question: ClinicalQuestion
    priority: Priority
    care_setting: CareSetting = CareSetting.GP


class CancelReferral(_Input):
    reason: CancellationReason
    cancelled_by: PersonId
    note: Note = ""


class AnswerQuery(_Input):
    query_id: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[\x21-\x7e]+$")]
    answer: Answer
    answered_by: PersonId


_AMENDABLE = ("referrer_id", "examination_code", "clinical_question", "priority", "care_setting")


class AmendReferral(_Input):
    """Only the fields given change; at least one must be given."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={"anyOf": [{"required": [name]} for name in _AMENDABLE]},
    )

    referrer_id: PersonId | None = None
    examination_code: ExaminationInput | None = None
    clinical_question: ClinicalQuestion | None = None
    priority: Priority | None = None
    care_setting: CareSetting | None = None
    amended_by: PersonId
    note: Note = ""


class GuidanceRequest(_Input):
    examination_code: ExaminationInput
    clinical_question: ClinicalQuestion
    priority: Priority = Priority.ROUTINE


# --------------------------------------------------------------------------- responses


class FieldErrorView(BaseModel):
    field: str
    message: str


class ErrorBody(BaseModel):
    detail: str
    errors: list[FieldErrorView] = []


class GuidanceView(BaseModel):
    outcome: GuidanceOutcome
    rule_id: str | None
    message: str
    disclaimer: str


class TimelineEntryView(BaseModel):
    event_id: str
    event_type: str
    occurred_at: datetime
    emitted_at: datetime
    received_at: datetime
    actor: str
    trace_id: str | None
    detail: dict[str, str]


class ReferralView(BaseModel):
    referral_id: str
    state: ReferralState
    open: bool
    practice_ods: str
    referrer_id: str
    nhs_number: str
    examination_code: str
    modality: str
    ionising: bool
    clinical_question: str
    priority: str
    care_setting: str
    channel: str
    guidance: GuidanceView
    duplicate_of: list[str]
    warnings: list[str] = Field(description="Guidance and duplicate warnings for the referrer")
    open_query_id: str | None = Field(
        description="The vetting query to answer, when the state is queried"
    )
    submitted_at: datetime
    updated_at: datetime
    timeline: list[TimelineEntryView]


class ReferralSummary(BaseModel):
    referral_id: str
    state: ReferralState
    practice_ods: str
    nhs_number: str
    examination_code: str
    modality: str
    priority: str
    guidance_outcome: GuidanceOutcome
    duplicate_of: list[str]
    submitted_at: datetime
    updated_at: datetime


class ReferralPage(BaseModel):
    items: list[ReferralSummary]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null on the last page"
    )


_ERROR_TEXT = {
    400: "The body could not be read (not UTF-8 JSON)",
    401: "No API key, or an unknown one",
    403: "The caller's role or organisation may not do this",
    404: "No such referral visible to the caller",
    409: "The referral's state does not allow this, or the idempotency key was used for another referral",
    422: "Bad input: `errors` names each bad field",
}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorBody, "description": _ERROR_TEXT[code]} for code in codes}


# --------------------------------------------------------------------------- paging


def encode_cursor(submitted_at: datetime, referral_id: str) -> str:
    raw = json.dumps([submitted_at.astimezone(UTC).isoformat(), referral_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The position a cursor stands for; Invalid (naming the parameter) for anything else."""
    try:
        at_text, referral_id = json.loads(
            base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        )
        at = _instant(datetime.fromisoformat(at_text))
        if (
            not isinstance(referral_id, str)
            or len(referral_id) != 36
            or not referral_id.startswith("ref_")
        ):
            raise ValueError("not a referral id")
    except (ValueError, TypeError, binascii.Error):
        raise Invalid(
            "the cursor is not one this service gave out",
            [
                FieldError(
                    field="query:cursor", message="not from a previous page; start again without it"
                )
            ],
        ) from None
    return at, referral_id


# --------------------------------------------------------------------------- routes

ReferralIdPath = Annotated[str, Path(pattern=REFERRAL_ID_PATTERN, description="The referral id")]
READERS = (Role.PRACTICE, Role.PROVIDER, *sorted(service.READ_ANY))


async def readable_by(referrals: Referrals, referral_id: str, principal: Principal) -> Document:
    """The referral if the principal may read it (`GET /referrals/{id}` and the FHIR read).

    NotFound, counted as a denial, both when there is none and when it is not theirs: a
    caller learns nothing of other practices' referrals.
    """
    try:
        return await referrals.readable(
            referral_id,
            lambda d: service.may_read(principal, d["practice_ods"], d.get("providers", ())),
        )
    except NotFound:
        runtime = referrals.runtime
        runtime.metrics.authz_denied.labels(runtime.service, "http").inc()
        raise


def build_router(referrals: Referrals) -> APIRouter:
    router = APIRouter(tags=["referrals"])
    window = referrals.duplicate_window_days
    disclaimer = referrals.rules.disclaimer
    denied = referrals.runtime.metrics.authz_denied.labels(referrals.runtime.service, "http")

    def view(document: Document) -> ReferralView:
        advice = GuidanceAdvice.model_validate(document["guidance"])
        return ReferralView(
            referral_id=document["_id"],
            state=ReferralState(document["state"]),
            open=document["open"],
            practice_ods=document["practice_ods"],
            referrer_id=document["referrer_id"],
            nhs_number=document["nhs_number"],
            examination_code=document["examination_code"],
            modality=document["modality"],
            ionising=document["ionising"],
            clinical_question=document["clinical_question"],
            priority=document["priority"],
            care_setting=document["care_setting"],
            channel=document["channel"],
            guidance=GuidanceView(**advice.model_dump(), disclaimer=disclaimer),
            duplicate_of=list(document["duplicate_of"]),
            warnings=service.warnings(advice, document["duplicate_of"], window),
            open_query_id=document.get("open_query_id"),
            submitted_at=document["submitted_at"],
            updated_at=document["updated_at"],
            timeline=[TimelineEntryView.model_validate(e) for e in document["timeline"]],
        )

    async def visible(referral_id: str, principal: Principal) -> Document:
        return await readable_by(referrals, referral_id, principal)

    async def actionable(
        referral_id: str, principal: Principal, *, operator_may: bool = False
    ) -> Document:
        def may(document: Document) -> bool:
            return service.may_act(principal, document["practice_ods"]) or (
                operator_may and principal.role is Role.OPERATOR
            )

        try:
            return await referrals.readable(referral_id, may)
        except NotFound:
            denied.inc()
            raise

    @router.post(
        "/referrals",
        status_code=201,
        summary="Submit a referral (idempotent by Idempotency-Key)",
        responses={
            200: {
                "model": ReferralView,
                "description": "This Idempotency-Key was used before: its referral",
            },
            **_errors(400, 401, 403, 409, 422),
        },
    )
    async def submit_referral(
        body: SubmitReferral,
        response: Response,
        principal: Annotated[Principal, Depends(require(Role.PRACTICE))],
        idempotency_key: Annotated[
            str,
            Header(
                alias="Idempotency-Key",
                pattern=IDEMPOTENCY_KEY_PATTERN,
                description="Your unique id for this request: a repeat returns the same referral",
            ),
        ],
    ) -> ReferralView:
        practice = body.practice_ods or principal.organisation
        if practice is None or practice != principal.organisation:
            referrals.metrics.rejected(
                "api",
                "wrong_practice",
                body.priority.value,
                CATALOGUE[body.examination_code].modality,
            )
            raise Denied(
                "you may refer only for your own practice",
                [
                    FieldError(
                        field="practice_ods",
                        message="must be your own practice's ODS code (or left out)",
                    )
                ],
            )
        details: ReferralDetails = contract(
            lambda: ReferralDetails(
                **body.model_dump(exclude={"practice_ods"}), practice_ods=practice
            )
        )
        submission = await referrals.submit(details, key=idempotency_key, channel="api")
        if not submission.created:
            response.status_code = 200
        return view(submission.referral)

    @router.get(
        "/referrals/{referral_id}",
        summary="One referral: the record, its state and its whole timeline",
        responses=_errors(401, 403, 404, 422),
    )
    async def get_referral(
        referral_id: ReferralIdPath,
        principal: Annotated[Principal, Depends(require(*READERS))],
    ) -> ReferralView:
        return view(await visible(referral_id, principal))

    @router.get(
        "/referrals",
        summary="A practice's referrals, newest first, by state and date submitted",
        responses=_errors(401, 403, 422),
    )
    async def list_referrals(
        principal: Annotated[Principal, Depends(require(Role.PRACTICE, Role.OPERATOR))],
        state: Annotated[
            ReferralState | None, Query(description="Only referrals in this state")
        ] = None,
        submitted_from: Annotated[
            Instant | None,
            Query(alias="from", description="Submitted at or after (RFC 3339, with offset)"),
        ] = None,
        submitted_to: Annotated[
            Instant | None,
            Query(alias="to", description="Submitted before (RFC 3339, with offset)"),
        ] = None,
        practice: Annotated[
            str | None,
            Query(pattern=r"^[A-Z0-9]{3,10}$", description="Operators: one practice (default all)"),
        ] = None,
        cursor: Annotated[
            str | None, Query(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_-]+$")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
    ) -> ReferralPage:
        if principal.role is Role.PRACTICE:
            if principal.organisation is None or (
                practice is not None and practice != principal.organisation
            ):
                denied.inc()
                raise Denied(
                    "a practice lists only its own referrals",
                    [
                        FieldError(
                            field="query:practice", message="must be your own practice or left out"
                        )
                    ],
                )
            practice = principal.organisation
        if (
            submitted_from is not None
            and submitted_to is not None
            and submitted_from >= submitted_to
        ):
            raise Invalid(
                "the date range is empty",
                [
                    FieldError(field="query:from", message="must be before `to`"),
                    FieldError(field="query:to", message="must be after `from`"),
                ],
            )
        documents = await referrals.repository.page(
            PageQuery(
                practice_ods=practice,
                state=state.value if state else None,
                submitted_from=submitted_from,
                submitted_to=submitted_to,
                after=decode_cursor(cursor) if cursor else None,
                limit=limit + 1,
            )
        )
        page = documents[:limit]
        more = len(documents) > limit
        return ReferralPage(
            items=[
                ReferralSummary(
                    referral_id=d["_id"],
                    state=ReferralState(d["state"]),
                    practice_ods=d["practice_ods"],
                    nhs_number=d["nhs_number"],
                    examination_code=d["examination_code"],
                    modality=d["modality"],
                    priority=d["priority"],
                    guidance_outcome=GuidanceOutcome(d["guidance"]["outcome"]),
                    duplicate_of=list(d["duplicate_of"]),
                    submitted_at=d["submitted_at"],
                    updated_at=d["updated_at"],
                )
                for d in page
            ],
            next_cursor=encode_cursor(page[-1]["submitted_at"], page[-1]["_id"]) if more else None,
        )

    @router.post(
        "/referrals/{referral_id}/cancel",
        summary="Cancel a referral (until the examination)",
        responses=_errors(400, 401, 403, 404, 409, 422),
    )
    async def cancel_referral(
        referral_id: ReferralIdPath,
        body: CancelReferral,
        principal: Annotated[Principal, Depends(require(Role.PRACTICE, Role.OPERATOR))],
    ) -> ReferralView:
        await actionable(referral_id, principal, operator_may=True)
        return view(
            await referrals.cancel(
                referral_id, reason=body.reason, cancelled_by=body.cancelled_by, note=body.note
            )
        )

    @router.post(
        "/referrals/{referral_id}/answer",
        summary="Answer the open vetting query; the referral re-enters vetting",
        responses=_errors(400, 401, 403, 404, 409, 422),
    )
    async def answer_query(
        referral_id: ReferralIdPath,
        body: AnswerQuery,
        principal: Annotated[Principal, Depends(require(Role.PRACTICE))],
    ) -> ReferralView:
        document = await actionable(referral_id, principal)
        return view(
            await referrals.answer(
                referral_id,
                query_id=body.query_id,
                answer=body.answer,
                answered_by=body.answered_by,
                practice=document["practice_ods"],
            )
        )

    @router.post(
        "/referrals/{referral_id}/amend",
        summary="Amend a returned referral; guidance and the duplicate check run again, then vetting",
        responses=_errors(400, 401, 403, 404, 409, 422),
    )
    async def amend_referral(
        referral_id: ReferralIdPath,
        body: AmendReferral,
        principal: Annotated[Principal, Depends(require(Role.PRACTICE))],
    ) -> ReferralView:
        await actionable(referral_id, principal)
        changes = body.model_dump(exclude={"amended_by", "note"}, exclude_none=True)
        if not changes:
            raise Invalid(
                "nothing to amend",
                [
                    FieldError(
                        field="(body)", message=f"give at least one of {', '.join(_AMENDABLE)}"
                    )
                ],
            )
        return view(
            await referrals.amend(referral_id, changes, amended_by=body.amended_by, note=body.note)
        )

    @router.post(
        "/guidance",
        summary="Referral guidance for an examination and indication, without submitting",
        responses=_errors(400, 401, 403, 422),
    )
    async def guidance(
        body: GuidanceRequest,
        principal: Annotated[
            Principal, Depends(require(Role.PRACTICE, Role.VETTING_CLINICIAN, Role.OPERATOR))
        ],
    ) -> GuidanceView:
        advice = referrals.advise(body.examination_code, body.clinical_question, body.priority)
        return GuidanceView(**advice.model_dump(), disclaimer=disclaimer)

    return router
