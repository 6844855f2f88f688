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
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from pathway_schemas.catalogue import CATALOGUE
from pathway_schemas.events import ReferralDetails
from pathway_schemas.values import FieldError, Priority
from services.common import fhir as kit_fhir
from services.common.auth import Principals
from services.request import fhir
from services.request.commands import Referrals, Submission
from services.request.metrics import RequestMetrics
from services.request.service import IdempotencyConflict, ReferralRefused
from services.request.timeline import ReferralState
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


# --------------------------------------------------------------------------- the read


def stored(**changes: Any) -> dict[str, Any]:
    """A referral document as the request service stores it (the fields the read uses)."""
    document: dict[str, Any] = {
        "_id": samples.REFERRAL_ID,
        "practice_ods": "A81001",
        "referrer_id": "G1234567",
        "nhs_number": samples.NHS_NUMBER,
        "examination_code": "XCHES",
        "clinical_question": "Cough for six weeks in a smoker",
        "priority": "routine",
        "care_setting": "gp",
        "idempotency_key": "GP-ORDER-00001",
        "state": "awaiting_vetting",
        # The Sunday the clocks go forward, either side of 01:00 UTC.
        "submitted_at": datetime(2026, 3, 29, 0, 30, tzinfo=UTC),
        "updated_at": datetime(2026, 3, 29, 1, 30, tzinfo=UTC),
    }
    document.update(changes)
    return document


def read_back(resource: dict[str, Any]) -> dict[str, Any]:
    return fhir.checked_input(fhir.read_service_request(body(resource)).values).model_dump(
        mode="json"
    )


_FIELDS = ("nhs_number", "referrer_id", "examination_code", "clinical_question", "priority")


@given(
    priority=st.sampled_from(["routine", "urgent"]),
    care_setting=st.sampled_from(["gp", "inpatient", "emergency"]),
    code=st.sampled_from(sorted(CATALOGUE)),
    question=st.text(
        alphabet=st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")),
        min_size=3,
        max_size=200,
    ).filter(lambda q: q.strip() == q and any(c.isalnum() for c in q)),
    state=st.sampled_from(list(ReferralState)),
)
def test_the_read_gives_back_every_field_the_intake_reads_as_valid_fhir(
    priority: str, care_setting: str, code: str, question: str, state: ReferralState
) -> None:
    document = stored(
        priority=priority,
        care_setting=care_setting,
        examination_code=code,
        clinical_question=question,
        state=state.value,
    )
    resource = fhir.read_resource(document)
    model = ServiceRequest.model_validate(resource)
    assert model.id == samples.REFERRAL_ID.replace("_", "-")
    assert fhir.referral_id_of(str(model.id)) == samples.REFERRAL_ID
    assert (
        model.status
        == fhir.created_resource(
            ServiceRequest.model_validate(samples.service_request()), document
        )["status"]
    )
    # The intake refuses anything but an active request: read an active copy back.
    details = read_back({**resource, "status": "active"})
    assert {k: details[k] for k in _FIELDS} == {k: document[k] for k in _FIELDS}
    assert details["practice_ods"] == "A81001"
    assert details["care_setting"] == care_setting


def test_the_read_of_a_sample_post_reads_the_same_as_the_post_and_carries_its_times() -> None:
    posted = read_back(samples.service_request())
    resource = fhir.read_resource(stored())
    assert read_back(resource) == posted
    identifiers = {(i["system"], i["value"]) for i in resource["identifier"]}
    assert identifiers == {
        (fhir.REQUEST_ID_SYSTEM, "GP-ORDER-00001"),
        (fhir.REFERRAL_ID_SYSTEM, samples.REFERRAL_ID),
    }
    # The identifier the intake takes as the idempotency key is the practice's, as posted.
    assert fhir.read_service_request(body(resource)).identifier == "GP-ORDER-00001"
    assert resource["authoredOn"] == "2026-03-29T00:30:00Z"
    assert resource["meta"]["lastUpdated"] == "2026-03-29T01:30:00Z"
    assert resource["code"]["coding"][0]["display"] == CATALOGUE["XCHES"].name
    assert fhir.read_resource(stored(state="cancelled"))["status"] == "revoked"


def test_each_pathway_priority_goes_out_as_a_fhir_priority_that_reads_back_as_it() -> None:
    assert {fhir.PRIORITIES[fhir.FHIR_PRIORITIES[p.value]] for p in Priority} == {
        p.value for p in Priority
    }
    assert all(fhir.PRIORITIES[fhir.FHIR_PRIORITIES[p.value]] == p.value for p in Priority)


@pytest.mark.parametrize(
    "resource_id",
    ["ref_3f2a9c1e5b7d4e8fa1b2c3d4e5f60718", "ref-3F2A9C1E5B7D4E8FA1B2C3D4E5F60718", "ref-", ""],
)
def test_an_id_fhir_id_never_makes_names_no_referral(resource_id: str) -> None:
    assert fhir.referral_id_of(resource_id) is None
