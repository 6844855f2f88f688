"""FHIR R4 at notify's edge: acknowledgement as a `Task`, and the local inbox as a FHIR search.

- POST /fhir/Task (practice): a Task with status `completed` whose `focus` is a delivered
  DiagnosticReport (`DiagnosticReport/ver-…` as delivered, or an identifier reference with
  the report-id system) acknowledges that report or addendum through the same rules as
  POST /reports/{report_id}/acknowledge. `owner` (a Practitioner identifier) is who
  acknowledged, `note` what was done. Answers 201 with the Task as recorded, 200 when it
  was acknowledged before, or an OperationOutcome.
- GET /inbox/{practice_ods}/fhir/DiagnosticReport (the practice; embedded runs only): what
  the local practice inbox received, as a searchset Bundle of the resources exactly as sent.
Field by field: docs/interop.md.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request, Response
from fastapi.responses import JSONResponse
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.task import Task

from services.common.auth import Principal, Role, require
from services.common.errors import Denied, PathwayError
from services.common.fhir import (
    FHIR_JSON,
    FhirError,
    Issue,
    fhir_route,
    issue_type,
    outcome_response,
    parse_resource,
)
from services.notify import fhir
from services.notify.api import AcknowledgementDesk
from services.notify.policy import version_id
from services.notify.repository import NotifyRepository
from services.notify.service import Acknowledgement

MAX_BODY_BYTES = 256 * 1024
MAX_ACTION = 2000
_PERSON_ID = re.compile(r"^[A-Za-z0-9._:@-]{1,64}$")
_FOCUS = re.compile(r"(?:^|/)DiagnosticReport/([A-Za-z0-9.-]{1,64})$")


# --------------------------------------------------------------------------- OperationOutcome
# The same answer shape as the request service's FHIR intake (services never import each
# other; a candidate for the kit).


def _describe(error: PathwayError) -> FhirError:
    return FhirError(error.http_status, [Issue(issue_type(error), error.message, "Task.focus")])


FhirRoute = fhir_route(_describe)
_answer = outcome_response


# --------------------------------------------------------------------------- the Task


@dataclass(frozen=True)
class TaskRequest:
    task: Task
    focus_id: str | None  # a DiagnosticReport id as delivered (ver-…)
    report_id: str | None  # or the report id, from an identifier reference
    acknowledged_by: str | None
    action: str


def read_task(body: bytes) -> TaskRequest:
    """What an acknowledging Task says; FhirError (400 or 422) naming each bad element."""
    task = parse_resource(body, Task, max_bytes=MAX_BODY_BYTES)
    issues: list[Issue] = []
    if task.status != "completed":
        issues.append(
            Issue(
                "business-rule",
                "an acknowledgement is a Task with status completed (the report was read and acted on)",
                "Task.status",
            )
        )
    focus_id = report_id = None
    if task.focus is None:
        issues.append(Issue("required", "focus: the DiagnosticReport acknowledged", "Task.focus"))
    elif task.focus.reference:
        match = _FOCUS.search(task.focus.reference)
        if match is None:
            issues.append(
                Issue(
                    "value", "focus must reference DiagnosticReport/{id} as delivered", "Task.focus"
                )
            )
        else:
            focus_id = match[1]
    elif task.focus.identifier is not None:
        if task.focus.identifier.system == fhir.REPORT_ID_SYSTEM and task.focus.identifier.value:
            report_id = str(task.focus.identifier.value)
        else:
            issues.append(
                Issue(
                    "value",
                    f"an identifier focus uses system {fhir.REPORT_ID_SYSTEM} (an addendum: "
                    "reference DiagnosticReport/{id} as delivered)",
                    "Task.focus.identifier",
                )
            )
    else:
        issues.append(Issue("required", "focus needs a reference or an identifier", "Task.focus"))
    acknowledged_by = None
    if task.owner is not None:
        identifier = task.owner.identifier
        value = identifier.value if identifier is not None else None
        if not value or not _PERSON_ID.fullmatch(value):
            issues.append(
                Issue(
                    "value",
                    "owner is the acknowledging clinician by identifier (1-64 letters, digits, . _ : @ -)",
                    "Task.owner.identifier",
                )
            )
        else:
            acknowledged_by = value
    action = "\n".join(note.text for note in task.note or () if note.text)
    if len(action) > MAX_ACTION:
        issues.append(Issue("value", f"note is at most {MAX_ACTION} characters", "Task.note"))
    if issues:
        raise FhirError(422, issues)
    return TaskRequest(task, focus_id, report_id, acknowledged_by, action)


def task_id(report_id: str, addendum_id: str | None) -> str:
    """The acknowledgement's resource id: one per report version."""
    return "ack-" + version_id(report_id, addendum_id).removeprefix("ver_")


def recorded_task(request: TaskRequest, ack: Acknowledgement) -> dict[str, Any]:
    body = request.task.model_dump(mode="json", by_alias=True, exclude_none=True)
    body["id"] = task_id(ack.report_id, ack.addendum_id)
    body["status"] = "completed"
    body["businessStatus"] = {"text": "already acknowledged" if ack.already else "acknowledged"}
    moment = ack.acknowledged_at.isoformat()
    body["lastModified"] = moment
    body["executionPeriod"] = {**body.get("executionPeriod", {}), "end": moment}
    if ack.already or "owner" not in body:
        # The acknowledgement on record: the first one, when this is a repeat.
        body["owner"] = {
            "identifier": {"system": fhir.PERSON_ID_SYSTEM, "value": ack.acknowledged_by}
        }
    return Task.model_validate(body).model_dump(mode="json", by_alias=True, exclude_none=True)


def _fhir_answer(description: str) -> dict[str, Any]:
    """An OpenAPI response whose body is a FHIR resource (the resource or an OperationOutcome)."""
    return {
        "description": description,
        "content": {FHIR_JSON: {"schema": {"type": "object", "required": ["resourceType"]}}},
    }


def fhir_router(desk: AcknowledgementDesk, repository: NotifyRepository) -> APIRouter:
    router = APIRouter(prefix="/fhir", tags=["FHIR R4"], route_class=FhirRoute)

    @router.post(
        "/Task",
        status_code=201,
        summary="Acknowledge a delivered report (or addendum) with a completed FHIR R4 Task",
        responses={
            201: _fhir_answer("Recorded: the resource as recorded"),
            200: _fhir_answer("Acknowledged before: the Task as first recorded"),
            400: _fhir_answer("Not a valid FHIR Task: an OperationOutcome"),
            403: _fhir_answer("Not this practice's report: an OperationOutcome"),
            404: _fhir_answer("No such report version: an OperationOutcome"),
            422: _fhir_answer("Not an acknowledgement: an OperationOutcome per element"),
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    FHIR_JSON: {"schema": {"type": "object", "title": "Task (FHIR R4)"}},
                    "application/json": {"schema": {"type": "object"}},
                },
            }
        },
    )
    async def acknowledge_task(
        request: Request,
        principal: Annotated[Principal, Depends(require(Role.PRACTICE))],
    ) -> Response:
        if principal.organisation is None:
            raise Denied("this practice key is bound to no practice (organisation)")
        task = read_task(await request.body())
        if task.focus_id is not None:
            wanted = fhir.version_id_of(task.focus_id)
            version = await repository.version(wanted) if wanted else None
            if version is None:
                raise FhirError(
                    404,
                    [
                        Issue(
                            "not-found",
                            "no DiagnosticReport with that id was delivered",
                            "Task.focus",
                        )
                    ],
                )
            report_id, addendum_id = str(version["report_id"]), version.get("addendum_id")
        else:
            assert task.report_id is not None
            report_id, addendum_id = task.report_id, None
        ack = await desk.acknowledge(
            practice_ods=principal.organisation,
            report_id=report_id,
            addendum_id=addendum_id,
            acknowledged_by=task.acknowledged_by or principal.name,
            action=task.action,
        )
        return JSONResponse(
            status_code=200 if ack.already else 201,
            content=recorded_task(task, ack),
            media_type=FHIR_JSON,
            headers={"Location": f"/fhir/Task/{task_id(ack.report_id, ack.addendum_id)}"},
        )

    return router


PracticeOds = Annotated[
    str, Path(pattern=r"^[A-Z0-9]{3,10}$", description="The practice's ODS code")
]


def inbox_fhir_router(repository: NotifyRepository) -> APIRouter:
    router = APIRouter(prefix="/inbox", tags=["local practice inbox"], route_class=FhirRoute)

    @router.get(
        "/{practice_ods}/fhir/DiagnosticReport",
        summary="What the practice received, as a FHIR searchset Bundle (newest first)",
        response_class=JSONResponse,
    )
    async def search_reports(
        request: Request,
        practice_ods: PracticeOds,
        principal: Annotated[Principal, Depends(require(Role.PRACTICE))],
    ) -> Response:
        if principal.organisation != practice_ods:
            raise Denied(f"this key is not for practice {practice_ods}")
        cursor = repository.inbox.find({"practice_ods": practice_ods}).sort("received_at", -1)
        base_url = str(request.base_url).rstrip("/")
        entries = []
        async for document in cursor.limit(200):
            resource = json.loads(document["resource"])
            entries.append(
                {
                    "fullUrl": f"{base_url}/fhir/DiagnosticReport/{resource.get('id', '')}",
                    "resource": resource,
                    "search": {"mode": "match"},
                }
            )
        bundle = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(entries),
            "entry": entries,
        }
        return JSONResponse(
            content=Bundle.model_validate(bundle).model_dump(
                mode="json", by_alias=True, exclude_none=True
            ),
            media_type=FHIR_JSON,
        )

    return router
