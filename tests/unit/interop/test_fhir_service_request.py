"""A FHIR R4 ServiceRequest becomes the same referral as POST /referrals, or an OperationOutcome."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from fastapi import FastAPI
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.servicerequest import ServiceRequest
from prometheus_client import CollectorRegistry

from pathway_schemas.events import ReferralDetails
from pathway_schemas.values import FieldError
from services.common import fhir as kit_fhir
from services.common.auth import Principals
from services.request import fhir
from services.request.commands import Referrals, Submission
from services.request.metrics import RequestMetrics
from services.request.service import IdempotencyConflict, ReferralRefused
from tests.unit.interop import samples

REPO = Path(__file__).resolve().parents[3]
PRACTICE_KEY = {"X-API-Key": "dev-practice-a81001"}
OTHER_PRACTICE_KEY = {"X-API-Key": "dev-practice-b82002"}


def body(resource: dict[str, Any]) -> bytes:
    return json.dumps(resource).encode()


def issues_of(error: kit_fhir.FhirError) -> dict[str | None, str]:
    return {i.expression: i.code for i in error.issues}


def refused(resource: dict[str, Any] | bytes, status: int) -> kit_fhir.FhirError:
    raw = resource if isinstance(resource, bytes) else body(resource)
    with pytest.raises(kit_fhir.FhirError) as raised:
        fhir.checked_input(fhir.read_service_request(raw).values)
    assert raised.value.status == status, raised.value.issues
    OperationOutcome.model_validate(kit_fhir.operation_outcome(raised.value.issues))
    return raised.value


def test_contained_patient_practitioner_role_and_organization_become_the_referral() -> None:
    intake = fhir.read_service_request(body(samples.service_request()))
    checked = fhir.checked_input(intake.values)
    assert checked.model_dump() == {
        "nhs_number": samples.NHS_NUMBER,
        "practice_ods": "A81001",
        "referrer_id": "G1234567",
        "examination_code": "XCHES",
        "clinical_question": "Cough for six weeks in a smoker",
        "priority": "routine",
        "care_setting": "gp",
    }
    assert intake.identifier == "GP-ORDER-00001"


def test_identifier_references_are_as_good_as_contained_resources() -> None:
    resource = samples.service_request(
        contained=None,
        subject={
            "type": "Patient",
            "identifier": {"system": fhir.NHS_NUMBER_SYSTEM, "value": "943 476 5919"},
        },
        requester={
            "type": "Practitioner",
            "identifier": {"system": fhir.REFERRER_ID_SYSTEM, "value": "G7654321"},
        },
        priority="asap",
        note=[{"text": "Ex-smoker, 30 pack years"}],
        extension=[{"url": fhir.CARE_SETTING_EXTENSION, "valueCode": "emergency"}],
    )
    del resource["contained"]
    checked = fhir.checked_input(fhir.read_service_request(body(resource)).values)
    assert checked.nhs_number == samples.NHS_NUMBER
    assert checked.referrer_id == "G7654321"
    assert checked.practice_ods is None  # the calling practice's
    assert checked.priority.value == "urgent"
    assert checked.care_setting.value == "emergency"
    assert checked.clinical_question == "Cough for six weeks in a smoker\nEx-smoker, 30 pack years"


@pytest.mark.parametrize(
    ("raw", "expression"),
    [
        (b"{not json", None),
        (body({"resourceType": "Patient"}), "resourceType"),
        (body(samples.service_request(status=None)), "ServiceRequest.status"),
        (body(samples.service_request(authoredOn="yesterday")), "ServiceRequest.authoredOn"),
        (body(samples.service_request(surprise=1)), "ServiceRequest.surprise"),
    ],
)
def test_what_is_not_a_valid_fhir_service_request_is_a_400_naming_the_element(
    raw: bytes, expression: str | None
) -> None:
    error = refused(raw, 400)
    assert expression in issues_of(error)


def _without_nhs_number() -> dict[str, Any]:
    resource = samples.service_request()
    resource["contained"][0]["identifier"] = [{"system": "https://local/mrn", "value": "X1"}]
    return resource


@pytest.mark.parametrize(
    ("resource", "expression", "code"),
    [
        (samples.service_request(status="draft"), "ServiceRequest.status", "value"),
        (samples.service_request(intent="plan"), "ServiceRequest.intent", "value"),
        (_without_nhs_number(), "ServiceRequest.subject", "required"),
        (
            samples.service_request(subject={"reference": "Patient/123"}),
            "ServiceRequest.subject",
            "not-supported",
        ),
        (
            samples.service_request(subject={"reference": "#nobody"}),
            "ServiceRequest.subject",
            "invalid",
        ),
        (
            samples.service_request(subject={"reference": "#gp"}),
            "ServiceRequest.subject",
            "invalid",
        ),
        (samples.service_request(requester=None), "ServiceRequest.requester", "required"),
        (samples.service_request(code={"text": "chest"}), "ServiceRequest.code", "required"),
        (samples.service_request(reasonCode=None), "ServiceRequest.reasonCode", "required"),
        (samples.service_request(priority="whenever"), "ServiceRequest.priority", "value"),
    ],
)
def test_what_the_pathway_needs_and_cannot_find_is_a_422_naming_the_element(
    resource: dict[str, Any], expression: str, code: str
) -> None:
    error = refused(resource, 422)
    assert issues_of(error).get(expression) == code


@pytest.mark.parametrize(
    ("changes", "expression"),
    [
        ({"nhs": "9434765918"}, "ServiceRequest.subject"),
        ({"code": "NOTACODE"}, "ServiceRequest.code"),
        ({"question": "??"}, "ServiceRequest.reasonCode"),
    ],
)
def test_the_same_input_rules_as_post_referrals_apply_and_never_echo_the_value(
    changes: dict[str, str], expression: str
) -> None:
    resource = samples.service_request()
    if "nhs" in changes:
        resource["contained"][0]["identifier"][0]["value"] = changes["nhs"]
    if "code" in changes:
        resource["code"]["coding"][0]["code"] = changes["code"]
    if "question" in changes:
        resource["reasonCode"] = [{"text": changes["question"]}]
    error = refused(resource, 422)
    assert expression in issues_of(error)
    assert all(
        value not in json.dumps(kit_fhir.operation_outcome(error.issues))
        for value in changes.values()
    )


def test_the_idempotency_key_is_the_header_else_the_identifier() -> None:
    assert fhir.idempotency_key("header-key-1", "identifier-1") == "header-key-1"
    assert fhir.idempotency_key(None, "identifier-1") == "identifier-1"
    with pytest.raises(kit_fhir.FhirError) as missing:
        fhir.idempotency_key(None, None)
    assert issues_of(missing.value) == {"ServiceRequest.identifier": "required"}
    with pytest.raises(kit_fhir.FhirError) as bad:
        fhir.idempotency_key(None, "short")
    assert bad.value.status == 422


def test_the_created_resource_is_valid_fhir_with_the_referral_id() -> None:
    resource = ServiceRequest.model_validate(samples.service_request())
    document = {
        "_id": samples.REFERRAL_ID,
        "state": "awaiting_vetting",
        "updated_at": datetime(2026, 3, 2, 9, 0, tzinfo=UTC),
    }
    created = fhir.created_resource(resource, document)
    ServiceRequest.model_validate(created)
    assert created["id"] == samples.REFERRAL_ID.replace("_", "-")
    assert {"system": fhir.REFERRAL_ID_SYSTEM, "value": samples.REFERRAL_ID} in created[
        "identifier"
    ]
    assert created["status"] == "active"
    assert created["meta"]["lastUpdated"].startswith("2026-03-02T09:00:00")
    cancelled = fhir.created_resource(resource, {**document, "state": "cancelled"})
    assert cancelled["status"] == "revoked"


# --------------------------------------------------------------------------- the route


@dataclass
class FakeReferrals:
    """The one use case the route calls, recording what it was asked."""

    duplicate_window_days: int = 28
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    calls: list[tuple[ReferralDetails, str, str]] = field(default_factory=list)
    refuse: Exception | None = None
    known: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.metrics = RequestMetrics.create(self.registry)

    async def submit(self, details: ReferralDetails, *, key: str, channel: str) -> Submission:
        self.calls.append((details, key, channel))
        if self.refuse is not None:
            raise self.refuse
        if key in self.known:
            return Submission(referral=self.known[key], created=False)
        document = {
            "_id": samples.REFERRAL_ID,
            "state": "awaiting_vetting",
            "updated_at": datetime(2026, 3, 2, 9, 0, tzinfo=UTC),
            "guidance": {"outcome": "indicated", "rule_id": None, "message": ""},
            "duplicate_of": ["ref_99999999999999999999999999999999"],
        }
        self.known[key] = document
        return Submission(referral=document, created=True)


@pytest.fixture
async def client() -> AsyncIterator[tuple[httpx.AsyncClient, FakeReferrals]]:
    referrals = FakeReferrals()
    app = FastAPI()
    app.state.principals = Principals.load(REPO / "config" / "principals.json")
    app.include_router(fhir.build_router(cast(Referrals, referrals)))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://request") as http:
        yield http, referrals


async def test_a_service_request_is_submitted_once_and_answered_201_then_200(
    client: tuple[httpx.AsyncClient, FakeReferrals],
) -> None:
    http, referrals = client
    first = await http.post(
        "/fhir/ServiceRequest", json=samples.service_request(), headers=PRACTICE_KEY
    )
    assert first.status_code == 201
    assert first.headers["content-type"].startswith(kit_fhir.FHIR_JSON)
    assert (
        first.headers["location"] == f"/fhir/ServiceRequest/{samples.REFERRAL_ID.replace('_', '-')}"
    )
    ServiceRequest.model_validate(first.json())
    again = await http.post(
        "/fhir/ServiceRequest", json=samples.service_request(), headers=PRACTICE_KEY
    )
    assert again.status_code == 200
    details, key, channel = referrals.calls[0]
    assert (key, channel) == ("GP-ORDER-00001", "fhir")
    assert details.practice_ods == "A81001"


async def test_prefer_operation_outcome_returns_the_advice_and_duplicate_warning(
    client: tuple[httpx.AsyncClient, FakeReferrals],
) -> None:
    http, _ = client
    answer = await http.post(
        "/fhir/ServiceRequest",
        json=samples.service_request(),
        headers={**PRACTICE_KEY, "Prefer": "return=OperationOutcome"},
    )
    outcome = OperationOutcome.model_validate(answer.json())
    severities = [i.severity for i in outcome.issue]
    assert "warning" in severities  # the possible duplicate
    assert any(samples.REFERRAL_ID in (i.diagnostics or "") for i in outcome.issue)


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({}, 401, "security"),
        (OTHER_PRACTICE_KEY, 403, "forbidden"),
        ({"X-API-Key": "dev-reporter"}, 403, "forbidden"),
    ],
)
async def test_who_may_not_refer_gets_an_operation_outcome(
    client: tuple[httpx.AsyncClient, FakeReferrals], headers: dict[str, str], status: int, code: str
) -> None:
    http, referrals = client
    answer = await http.post(
        "/fhir/ServiceRequest", json=samples.service_request(), headers=headers
    )
    assert answer.status_code == status
    outcome = OperationOutcome.model_validate(answer.json())
    assert outcome.issue[0].code == code
    assert referrals.calls == []


@pytest.mark.parametrize(
    ("refusal", "status", "code", "expression"),
    [
        (
            ReferralRefused(
                "unknown",
                [FieldError(field="referrer_id", message="not a referrer")],
                "unknown_referrer",
            ),
            422,
            "business-rule",
            "ServiceRequest.requester",
        ),
        (
            IdempotencyConflict("used", [FieldError(field="request_id", message="already used")]),
            409,
            "conflict",
            "ServiceRequest.identifier",
        ),
    ],
)
async def test_the_use_cases_refusals_come_back_as_operation_outcomes_on_the_element(
    client: tuple[httpx.AsyncClient, FakeReferrals],
    refusal: Exception,
    status: int,
    code: str,
    expression: str,
) -> None:
    http, referrals = client
    referrals.refuse = refusal
    answer = await http.post(
        "/fhir/ServiceRequest", json=samples.service_request(), headers=PRACTICE_KEY
    )
    assert answer.status_code == status
    issue = OperationOutcome.model_validate(answer.json()).issue[0]
    assert (issue.code, issue.expression) == (code, [expression])


async def test_garbage_bodies_get_an_operation_outcome_and_count_as_rejections(
    client: tuple[httpx.AsyncClient, FakeReferrals],
) -> None:
    http, referrals = client
    for content in (b"", b"[]", b"\xff\xfe", b'{"resourceType": "ServiceRequest"}'):
        answer = await http.post("/fhir/ServiceRequest", content=content, headers=PRACTICE_KEY)
        assert answer.status_code in (400, 422)
        OperationOutcome.model_validate(answer.json())
    rejected = referrals.registry.get_sample_value(
        "pathway_intake_rejections_total", {"channel": "fhir", "reason": "schema"}
    )
    assert rejected == 4
    assert referrals.calls == []


async def test_the_route_is_in_the_openapi_document_with_fhir_answers(
    client: tuple[httpx.AsyncClient, FakeReferrals],
) -> None:
    http, _ = client
    document = (await http.get("/openapi.json")).json()
    operation = document["paths"]["/fhir/ServiceRequest"]["post"]
    assert kit_fhir.FHIR_JSON in operation["requestBody"]["content"]
    assert kit_fhir.FHIR_JSON in operation["responses"]["422"]["content"]
