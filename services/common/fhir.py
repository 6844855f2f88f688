"""FHIR answers at the HTTP edge: OperationOutcome errors and routes that only speak FHIR.

Shared by every service with a FHIR endpoint (request's ServiceRequest intake, notify's
Task acknowledgement); each says how its own pathway errors map onto FHIR elements.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from fastapi import HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fhir.resources.R4B.operationoutcome import OperationOutcome
from pydantic import BaseModel, ValidationError

from services.common.errors import Denied, NotFound, PathwayError, Rejected
from services.common.messaging import OUTAGE_ERRORS

R = TypeVar("R", bound=BaseModel)

FHIR_JSON = "application/fhir+json"

IssueType = Literal[
    "invalid",
    "structure",
    "required",
    "value",
    "security",
    "forbidden",
    "not-found",
    "conflict",
    "business-rule",
    "not-supported",
    "transient",
    "exception",
    "informational",
    "duplicate",
    "too-costly",
]


@dataclass(frozen=True)
class Issue:
    code: IssueType
    diagnostics: str
    expression: str | None = None
    severity: Literal["fatal", "error", "warning", "information"] = "error"


class FhirError(Exception):
    """A request answered with an OperationOutcome and this HTTP status."""

    def __init__(
        self, status: int, issues: Sequence[Issue], headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__("; ".join(i.diagnostics for i in issues))
        self.status = status
        self.issues = tuple(issues)
        self.headers = dict(headers or {})


def operation_outcome(issues: Iterable[Issue]) -> dict[str, Any]:
    """A valid OperationOutcome (checked by its model) naming each issue."""
    resource = {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": i.severity,
                "code": i.code,
                "diagnostics": i.diagnostics[:1000],
                **({"expression": [i.expression]} if i.expression else {}),
            }
            for i in issues
        ]
        or [{"severity": "information", "code": "informational", "diagnostics": "ok"}],
    }
    return OperationOutcome.model_validate(resource).model_dump(
        mode="json", by_alias=True, exclude_none=True
    )


def outcome_response(error: FhirError) -> JSONResponse:
    return JSONResponse(
        status_code=error.status,
        content=operation_outcome(error.issues),
        media_type=FHIR_JSON,
        headers=error.headers,
    )


def fhir_path(location: Sequence[str | int], root: str) -> str:
    """`("contained", 1, "id")` → `ServiceRequest.contained[1].id`."""
    path = root
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def parse_resource(body: bytes, model: type[R], *, max_bytes: int) -> R:
    """A request body as one FHIR resource of `model`'s type; FhirError naming each bad element
    (413 too large, 400 not JSON, not that resource, or not valid as it)."""
    name = model.__name__
    if len(body) > max_bytes:
        raise FhirError(413, [Issue("too-costly", f"the body is over {max_bytes} bytes")])
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise FhirError(400, [Issue("structure", "the body is not JSON")]) from None
    if not isinstance(payload, dict) or payload.get("resourceType") != name:
        raise FhirError(
            400, [Issue("structure", f"the body must be a {name} resource", "resourceType")]
        )
    try:
        return model.model_validate(payload)
    except ValidationError as error:
        issues = [
            Issue(
                "required"
                if "required" in str(e["msg"]) or e["type"] == "missing"
                else "structure",
                str(e["msg"]).removeprefix("Value error, ").split("\n")[0],
                fhir_path(e["loc"], name),
            )
            for e in error.errors(include_input=False, include_url=False, include_context=False)
        ]
        raise FhirError(400, issues) from None


def issue_type(error: PathwayError) -> IssueType:
    if isinstance(error, Denied):
        return "forbidden"
    if isinstance(error, NotFound):
        return "not-found"
    if isinstance(error, Rejected):
        return "conflict"
    return "business-rule"


def fhir_route(describe: Callable[[PathwayError], FhirError]) -> type[APIRoute]:
    """A route class whose every answer is FHIR: errors, authentication included."""

    class FhirRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def route(request: Request) -> Response:
                try:
                    return await handler(request)
                except FhirError as error:
                    return outcome_response(error)
                except PathwayError as error:
                    return outcome_response(describe(error))
                except HTTPException as error:
                    kinds: dict[int, IssueType] = {
                        401: "security",
                        403: "forbidden",
                        404: "not-found",
                    }
                    issue = Issue(kinds.get(error.status_code, "invalid"), str(error.detail))
                    return outcome_response(FhirError(error.status_code, [issue], error.headers))
                except RequestValidationError as error:
                    issues = [
                        Issue(
                            "invalid",
                            str(e.get("msg", "")).removeprefix("Value error, "),
                            ".".join(str(p) for p in e.get("loc", ())),
                        )
                        for e in error.errors()
                    ]
                    return outcome_response(FhirError(422, issues))
                except OUTAGE_ERRORS as error:
                    issue = Issue(
                        "transient", f"a dependency is unavailable ({type(error).__name__})"
                    )
                    return outcome_response(FhirError(503, [issue], {"Retry-After": "5"}))

            return route

    return FhirRoute
