"""FHIR R4 intake: a practice system POSTs a `ServiceRequest`; it becomes a referral.

The resource is validated with `fhir.resources` (the R4B models, the same shapes as R4 for
the elements used here), its Patient, Practitioner (or PractitionerRole) and Organization
are resolved from contained resources or identifier references, and the values are then
checked by the same input model as `POST /referrals` and submitted through the same use
case (`Referrals.submit`): the same guidance, duplicate check, registry check and
idempotency (the Idempotency-Key header, else the ServiceRequest's identifier).
Errors come back as an `OperationOutcome` with one issue per bad element (FHIRPath in
`expression`); values are never echoed. Field by field: docs/interop.md.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Request, Response
from fastapi.responses import JSONResponse
from fhir.resources.R4B.servicerequest import ServiceRequest
from pydantic import ValidationError

from pathway_schemas.catalogue import CATALOGUE
from pathway_schemas.events import ReferralDetails
from pathway_schemas.values import FieldError, GuidanceAdvice
from services.common.auth import Principal, Role, require
from services.common.errors import Invalid, NotFound, PathwayError
from services.common.fhir import (
    FHIR_JSON,
    FhirError,
    Issue,
    IssueType,
    fhir_route,
    issue_type,
    operation_outcome,
    parse_resource,
)
from services.request import service
from services.request.api import IDEMPOTENCY_KEY_PATTERN, READERS, SubmitReferral, readable_by
from services.request.commands import Referrals
from services.request.repository import Document
from services.request.timeline import ReferralState

MAX_BODY_BYTES = 1_000_000
_BASE = "https://imaging-pathway.example.nhs.uk/fhir"
REFERRAL_ID_SYSTEM = f"{_BASE}/Id/referral-id"
REFERRER_ID_SYSTEM = f"{_BASE}/Id/referrer-id"
# The practice's own id of the request (its idempotency key): only the value is kept, not
# the system the practice gave it under, so the read gives it back under this one.
REQUEST_ID_SYSTEM = f"{_BASE}/Id/request-id"
EXAMINATION_SYSTEM = f"{_BASE}/CodeSystem/examination-code"
CARE_SETTING_EXTENSION = f"{_BASE}/StructureDefinition/care-setting"
NHS_NUMBER_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"
# Identifier systems whose value may be a referrer id in config/practices.json.
PERSON_SYSTEMS = (
    REFERRER_ID_SYSTEM,
    "https://fhir.hl7.org.uk/Id/gmc-number",
    "https://fhir.hl7.org.uk/Id/gmp-number",
    "https://fhir.hl7.org.uk/Id/nmc-number",
    "https://fhir.hl7.org.uk/Id/hcpc-number",
    "https://fhir.nhs.uk/Id/sds-user-id",
)
# FHIR request-priority to the pathway's two priorities.
PRIORITIES = {"routine": "routine", "urgent": "urgent", "asap": "urgent", "stat": "urgent"}
# And back: the pathway's priority as the FHIR request-priority the intake reads as it.
FHIR_PRIORITIES = {"routine": "routine", "urgent": "urgent"}
INTENTS = ("order", "original-order")
# Every referral is for imaging (SNOMED CT 363679005): the category a GP system files it under.
IMAGING_CATEGORY = {"system": "http://snomed.info/sct", "code": "363679005", "display": "Imaging"}


# --------------------------------------------------------------------------- OperationOutcome


# The request's fields, as elements of the ServiceRequest they come from.
ELEMENTS = {
    "nhs_number": "ServiceRequest.subject",
    "practice_ods": "ServiceRequest.requester",
    "referrer_id": "ServiceRequest.requester",
    "examination_code": "ServiceRequest.code",
    "clinical_question": "ServiceRequest.reasonCode",
    "priority": "ServiceRequest.priority",
    "care_setting": f"ServiceRequest.extension('{CARE_SETTING_EXTENSION}')",
    "request_id": "ServiceRequest.identifier",
    "header:Idempotency-Key": "ServiceRequest.identifier",
}
# A FHIR id as `fhir_id` makes it from a referral id.
FHIR_ID_PATTERN = r"ref-[0-9a-f]{32}"


def _element(name: str) -> str:
    return ELEMENTS.get(name, "ServiceRequest")


def from_pathway_error(error: PathwayError) -> FhirError:
    kind = issue_type(error)
    issues = [Issue(kind, f"{error.message}: {e.message}", _element(e.field)) for e in error.errors]
    return FhirError(error.http_status, issues or [Issue(kind, error.message)])


FhirRoute = fhir_route(from_pathway_error)


# --------------------------------------------------------------------------- reading the resource


@dataclass
class _Found:
    """What the resource says, each value with the element it came from."""

    values: dict[str, Any] = field(default_factory=dict)
    issues: list[Issue] = field(default_factory=list)

    def missing(self, element: str, what: str) -> None:
        self.issues.append(Issue("required", f"{what} is required", element))

    def bad(self, element: str, what: str, kind: IssueType = "value") -> None:
        self.issues.append(Issue(kind, what, element))


def _identifier(identifiers: Iterable[Any] | None, systems: Sequence[str]) -> str | None:
    for identifier in identifiers or ():
        if identifier.system in systems and identifier.value:
            return str(identifier.value)
    return None


def _contained(resource: ServiceRequest) -> dict[str, Any]:
    return {str(c.id): c for c in resource.contained or () if getattr(c, "id", None)}


def _resolve(
    reference: Any, types: Sequence[str], contained: dict[str, Any], element: str, found: _Found
) -> tuple[str, Any] | None:
    """(resource type, contained resource or Identifier) of a reference; None after an issue."""
    if reference is None:
        return None
    literal = reference.reference
    if literal:
        if not literal.startswith("#"):
            found.bad(
                element,
                "a reference to a resource elsewhere cannot be resolved here: contain the "
                "resource (reference #id) or reference it by identifier",
                "not-supported",
            )
            return None
        target = contained.get(literal[1:])
        if target is None:
            found.bad(element, f"no contained resource with id {literal[1:]}", "invalid")
            return None
        kind = target.get_resource_type()
        if kind not in types:
            found.bad(element, f"must reference a {' or '.join(types)}", "invalid")
            return None
        return kind, target
    if reference.identifier is not None:
        kind = reference.type or types[0]
        if kind not in types:
            found.bad(element, f"must reference a {' or '.join(types)}", "invalid")
            return None
        return kind, reference.identifier
    found.bad(element, "a reference needs #id (contained) or an identifier", "invalid")
    return None


def _identifiers_of(target: Any) -> list[Any]:
    """The identifiers of a contained resource, or the one of an identifier reference."""
    identifiers = getattr(target, "identifier", None)
    if isinstance(identifiers, list):
        return identifiers
    if target is not None and hasattr(target, "system") and hasattr(target, "value"):
        return [target]
    return []


def _patient(resource: ServiceRequest, contained: dict[str, Any], found: _Found) -> None:
    element = "ServiceRequest.subject"
    if resource.subject is None:
        found.missing(element, "the Patient (subject)")
        return
    resolved = _resolve(resource.subject, ("Patient",), contained, element, found)
    if resolved is None:
        return
    number = _identifier(_identifiers_of(resolved[1]), (NHS_NUMBER_SYSTEM,))
    if number is None:
        found.missing(element, f"the Patient's NHS number (identifier system {NHS_NUMBER_SYSTEM})")
        return
    found.values["nhs_number"] = number


def _practitioner(target: Any, element: str, found: _Found) -> None:
    referrer = _identifier(_identifiers_of(target), PERSON_SYSTEMS)
    if referrer is None:
        found.missing(
            element,
            "the referrer's identifier (system one of " + ", ".join(PERSON_SYSTEMS) + ")",
        )
        return
    found.values["referrer_id"] = referrer


def _organization(target: Any, element: str, found: _Found) -> None:
    ods = _identifier(_identifiers_of(target), (ODS_SYSTEM,))
    if ods is None:
        found.missing(element, f"the practice's ODS code (identifier system {ODS_SYSTEM})")
        return
    found.values["practice_ods"] = ods


def _requester(resource: ServiceRequest, contained: dict[str, Any], found: _Found) -> None:
    element = "ServiceRequest.requester"
    if resource.requester is None:
        found.missing(element, "the referrer (a Practitioner or PractitionerRole)")
        return
    resolved = _resolve(
        resource.requester, ("Practitioner", "PractitionerRole"), contained, element, found
    )
    if resolved is None:
        return
    kind, target = resolved
    if kind == "Practitioner":
        _practitioner(target, element, found)
        return
    if not hasattr(target, "practitioner"):
        found.bad(element, "a PractitionerRole by identifier names no practitioner: contain it")
        return
    role = "PractitionerRole"
    practitioner = _resolve(
        target.practitioner, ("Practitioner",), contained, f"{role}.practitioner", found
    )
    if target.practitioner is None:
        found.missing(f"{role}.practitioner", "the PractitionerRole's practitioner")
    elif practitioner is not None:
        _practitioner(practitioner[1], f"{role}.practitioner", found)
    if target.organization is not None:
        organization = _resolve(
            target.organization, ("Organization",), contained, f"{role}.organization", found
        )
        if organization is not None:
            _organization(organization[1], f"{role}.organization", found)


def _examination_code(code: str) -> dict[str, Any]:
    """The CodeableConcept `_examination` reads the examination code from."""
    coding = {"system": EXAMINATION_SYSTEM, "code": code}
    exam = CATALOGUE.get(code)
    return {"coding": [{**coding, "display": exam.name} if exam else coding]}


def _examination(resource: ServiceRequest, found: _Found) -> None:
    codings = resource.code.coding if resource.code is not None else None
    code = next((c.code for c in codings or () if c.system == EXAMINATION_SYSTEM and c.code), None)
    if code is None:
        found.missing("ServiceRequest.code", f"an examination code (system {EXAMINATION_SYSTEM})")
        return
    found.values["examination_code"] = code


def _question(resource: ServiceRequest, found: _Found) -> None:
    parts: list[str] = []
    for reason in resource.reasonCode or ():
        text = reason.text or next((c.display for c in reason.coding or () if c.display), None)
        if text:
            parts.append(text)
    parts += [note.text for note in resource.note or () if note.text]
    if not parts:
        found.missing(
            "ServiceRequest.reasonCode", "the clinical question (reasonCode.text or note)"
        )
        return
    found.values["clinical_question"] = "\n".join(parts)


def _care_setting(resource: ServiceRequest, found: _Found) -> None:
    for extension in resource.extension or ():
        if extension.url == CARE_SETTING_EXTENSION:
            found.values["care_setting"] = extension.valueCode


@dataclass(frozen=True)
class Intake:
    resource: ServiceRequest
    values: dict[str, Any]
    identifier: str | None


def read_service_request(body: bytes) -> Intake:
    """The referral a ServiceRequest asks for; FhirError (400 or 422) naming each bad element."""
    resource = parse_resource(body, ServiceRequest, max_bytes=MAX_BODY_BYTES)
    found = _Found()
    if resource.status != "active":
        found.bad("ServiceRequest.status", "a new referral has status active")
    if resource.intent not in INTENTS:
        found.bad("ServiceRequest.intent", "a referral has intent order")
    contained = _contained(resource)
    _patient(resource, contained, found)
    _requester(resource, contained, found)
    _examination(resource, found)
    _question(resource, found)
    _care_setting(resource, found)
    if resource.priority is not None:
        priority = PRIORITIES.get(resource.priority)
        if priority is None:
            found.bad("ServiceRequest.priority", "must be routine, urgent, asap or stat")
        else:
            found.values["priority"] = priority
    else:
        found.values["priority"] = "routine"  # FHIR: absent means routine
    if found.issues:
        raise FhirError(422, found.issues)
    identifier = next((i.value for i in resource.identifier or () if i.value), None)
    return Intake(resource=resource, values=found.values, identifier=identifier)


def checked_input(values: dict[str, Any]) -> SubmitReferral:
    """The same input rules as POST /referrals, issues on the ServiceRequest's elements."""
    try:
        return SubmitReferral.model_validate(values)
    except ValidationError as error:
        issues = [
            Issue(
                "value",
                f"{e['loc'][0] if e['loc'] else 'value'}: "
                + str(e["msg"]).removeprefix("Value error, "),
                _element(str(e["loc"][0])) if e["loc"] else "ServiceRequest",
            )
            for e in error.errors(include_input=False, include_url=False, include_context=False)
        ]
        raise FhirError(422, issues) from None


def idempotency_key(header: str | None, identifier: str | None) -> str:
    key = header or identifier
    if key is None:
        raise FhirError(
            422,
            [
                Issue(
                    "required",
                    "give the ServiceRequest an identifier (or an Idempotency-Key header): "
                    "a repeat of the same request returns the same referral",
                    "ServiceRequest.identifier",
                )
            ],
        )
    if not re.fullmatch(IDEMPOTENCY_KEY_PATTERN, key):
        where = "header Idempotency-Key" if header else "ServiceRequest.identifier"
        raise FhirError(
            422,
            [
                Issue(
                    "value",
                    "the idempotency key is 8-128 letters, digits, '.', '_', ':' or '-'",
                    where,
                )
            ],
        )
    return key


# --------------------------------------------------------------------------- the created resource


def fhir_id(referral_id: str) -> str:
    """A FHIR id has no underscore: `ref_…` is served as `ref-…` (the identifier keeps it exact)."""
    return referral_id.replace("_", "-")


def referral_id_of(resource_id: str) -> str | None:
    """The referral a FHIR id names; None when `fhir_id` never makes such an id."""
    if not re.fullmatch(FHIR_ID_PATTERN, resource_id):
        return None
    return resource_id.replace("-", "_")


_STATUS = {
    ReferralState.CANCELLED: "revoked",
    ReferralState.RETURNED: "on-hold",
    ReferralState.QUERIED: "on-hold",
    ReferralState.RETURNED_AFTER_DNA: "on-hold",
    ReferralState.ABANDONED: "on-hold",
    ReferralState.REPORTED: "completed",
    ReferralState.DELIVERED: "completed",
    ReferralState.ACKNOWLEDGED: "completed",
}


def created_resource(resource: ServiceRequest, document: Document) -> dict[str, Any]:
    """The ServiceRequest as recorded: the referral's id, identifier, status and time."""
    return _as_recorded(
        resource.model_dump(mode="json", by_alias=True, exclude_none=True), document
    )


def _contained_with(kind: str, local_id: str, identifier: dict[str, str]) -> dict[str, Any]:
    """A contained resource known only by one identifier, referenced as `#local_id`."""
    return {"resourceType": kind, "id": local_id, "identifier": [identifier]}


def read_resource(document: Document) -> dict[str, Any]:
    """The ServiceRequest of a stored referral, in the shape `read_service_request` reads.

    Every referral field the intake reads comes back in the element it is read from, so a
    resubmission of this body is the same request (and, by its identifier, the same referral).
    """
    body: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "identifier": [
            {"system": REQUEST_ID_SYSTEM, "value": key}
            for key in (document.get("idempotency_key"),)
            if key
        ],
        "intent": "order",
        "priority": FHIR_PRIORITIES[document["priority"]],
        "category": [{"coding": [IMAGING_CATEGORY]}],
        "code": _examination_code(document["examination_code"]),
        "subject": {"reference": "#patient"},
        "requester": {"reference": "#role"},
        "authoredOn": _instant(document["submitted_at"]),
        "reasonCode": [{"text": document["clinical_question"]}],
        "extension": [{"url": CARE_SETTING_EXTENSION, "valueCode": document["care_setting"]}],
        "contained": [
            _contained_with(
                "Patient", "patient", {"system": NHS_NUMBER_SYSTEM, "value": document["nhs_number"]}
            ),
            _contained_with(
                "Practitioner",
                "referrer",
                {"system": REFERRER_ID_SYSTEM, "value": document["referrer_id"]},
            ),
            _contained_with(
                "Organization",
                "practice",
                {"system": ODS_SYSTEM, "value": document["practice_ods"]},
            ),
            {
                "resourceType": "PractitionerRole",
                "id": "role",
                "practitioner": {"reference": "#referrer"},
                "organization": {"reference": "#practice"},
            },
        ],
    }
    return _as_recorded(body, document)


def _instant(moment: datetime) -> str:
    # The store gives back UTC; FHIR instants need the offset written.
    return moment.astimezone(UTC).isoformat()


def _as_recorded(body: dict[str, Any], document: Document) -> dict[str, Any]:
    """A ServiceRequest body with the referral's id, identifier, status and last change."""
    body["id"] = fhir_id(document["_id"])
    identifiers = [i for i in body.get("identifier", []) if i.get("system") != REFERRAL_ID_SYSTEM]
    body["identifier"] = [*identifiers, {"system": REFERRAL_ID_SYSTEM, "value": document["_id"]}]
    body["status"] = _STATUS.get(ReferralState(document["state"]), "active")
    body["meta"] = {**body.get("meta", {}), "lastUpdated": _instant(document["updated_at"])}
    return ServiceRequest.model_validate(body).model_dump(
        mode="json", by_alias=True, exclude_none=True
    )


def advice_outcome(document: Document, window_days: int, created: bool) -> dict[str, Any]:
    """`Prefer: return=OperationOutcome`: the guidance and duplicate warnings, as issues."""
    advice = GuidanceAdvice.model_validate(document["guidance"])
    said = service.warnings(advice, document["duplicate_of"], window_days)
    issues = [Issue("informational", text, severity="warning") for text in said]
    verb = "recorded" if created else "was already recorded"
    issues.append(
        Issue(
            "informational",
            f"referral {document['_id']} {verb} (ServiceRequest/{fhir_id(document['_id'])})",
            severity="information",
        )
    )
    return operation_outcome(issues)


# --------------------------------------------------------------------------- the route


def _fhir_answer(description: str) -> dict[str, Any]:
    """An OpenAPI response whose body is a FHIR resource (the resource or an OperationOutcome)."""
    return {
        "description": description,
        "content": {FHIR_JSON: {"schema": {"type": "object", "required": ["resourceType"]}}},
    }


def build_router(referrals: Referrals) -> APIRouter:
    router = APIRouter(prefix="/fhir", tags=["FHIR R4"], route_class=FhirRoute)
    window = referrals.duplicate_window_days

    @router.post(
        "/ServiceRequest",
        status_code=201,
        summary="Submit a referral as a FHIR R4 ServiceRequest (idempotent by its identifier)",
        responses={
            201: _fhir_answer("Recorded: the resource as recorded"),
            200: _fhir_answer("The same request again: the referral it became"),
            400: _fhir_answer("Not a valid FHIR ServiceRequest: an OperationOutcome"),
            401: _fhir_answer("No or unknown API key: an OperationOutcome"),
            403: _fhir_answer("Another practice's referral: an OperationOutcome"),
            409: _fhir_answer("The identifier was used for another referral"),
            422: _fhir_answer("A pathway rule refuses it: an OperationOutcome per element"),
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    FHIR_JSON: {"schema": {"type": "object", "title": "ServiceRequest (FHIR R4)"}},
                    "application/json": {"schema": {"type": "object"}},
                },
            }
        },
    )
    async def submit_service_request(
        request: Request,
        principal: Annotated[Principal, Depends(require(Role.PRACTICE))],
        idempotency_key_header: Annotated[
            str | None,
            Header(
                alias="Idempotency-Key",
                description="Optional: else the ServiceRequest's identifier is the key",
            ),
        ] = None,
    ) -> Response:
        try:
            intake = read_service_request(await request.body())
            body = checked_input(intake.values)
            key = idempotency_key(idempotency_key_header, intake.identifier)
        except FhirError:
            referrals.metrics.rejected("fhir", "schema")
            raise
        practice = body.practice_ods or principal.organisation
        if practice is None or practice != principal.organisation:
            referrals.metrics.rejected("fhir", "wrong_practice")
            raise FhirError(
                403,
                [
                    Issue(
                        "forbidden",
                        "you may refer only for your own practice",
                        "PractitionerRole.organization",
                    )
                ],
            )
        try:
            details = ReferralDetails(
                **body.model_dump(exclude={"practice_ods"}), practice_ods=practice
            )
        except ValidationError as error:
            raise from_pathway_error(
                Invalid(
                    "the request does not meet the event contract",
                    [
                        FieldError(field=str(e["loc"][0]) if e["loc"] else "", message=e["msg"])
                        for e in error.errors(include_input=False, include_url=False)
                    ],
                )
            ) from None
        submission = await referrals.submit(details, key=key, channel="fhir")
        document = submission.referral
        status = 201 if submission.created else 200
        headers = {"Location": f"/fhir/ServiceRequest/{fhir_id(document['_id'])}"}
        if "return=operationoutcome" in request.headers.get("Prefer", "").replace(" ", "").lower():
            content = advice_outcome(document, window, submission.created)
        else:
            content = created_resource(intake.resource, document)
        return JSONResponse(
            status_code=status, content=content, media_type=FHIR_JSON, headers=headers
        )

    @router.get(
        "/ServiceRequest/{resource_id}",
        summary="Read a referral as a FHIR R4 ServiceRequest (where POST's Location points)",
        responses={
            200: _fhir_answer("The referral as a ServiceRequest"),
            401: _fhir_answer("No or unknown API key: an OperationOutcome"),
            403: _fhir_answer("A role that may not read referrals: an OperationOutcome"),
            404: _fhir_answer("No such referral visible to the caller: an OperationOutcome"),
            422: _fhir_answer("An id longer than a FHIR id: an OperationOutcome"),
        },
    )
    async def read_service_request_by_id(
        resource_id: Annotated[
            str, Path(max_length=64, description="The id from Location: `ref-…`")
        ],
        principal: Annotated[Principal, Depends(require(*READERS))],
    ) -> Response:
        referral_id = referral_id_of(resource_id)
        if referral_id is None:
            # Not an id this server gives out; the value is not echoed back.
            raise NotFound("no ServiceRequest with this id")
        document = await readable_by(referrals, referral_id, principal)
        return JSONResponse(content=read_resource(document), media_type=FHIR_JSON)

    return router
