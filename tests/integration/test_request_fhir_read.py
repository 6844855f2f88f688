"""A FHIR client that POSTs a ServiceRequest can follow the Location and read it back."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import nhs_number
import pytest
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.servicerequest import ServiceRequest

from services.common.clock import FixedClock
from services.common.fhir import FHIR_JSON
from services.request import fhir
from services.request.main import create_app
from services.request.settings import Settings
from tests.harness import running_service
from tests.unit.interop.samples import service_request

pytestmark = pytest.mark.integration

PRACTICE_A = {"X-API-Key": "dev-practice-a81001"}
PRACTICE_B = {"X-API-Key": "dev-practice-b82002"}
OPERATOR = {"X-API-Key": "dev-operator"}
# Submitted on the first weekday after the clocks go forward.
SUBMITTED = datetime(2026, 3, 30, 8, 15, tzinfo=UTC)


def synthetic_nhs_number() -> str:
    return str(nhs_number.generate(for_region=nhs_number.REGION_SYNTHETIC)[0])


def posted_resource(nhs: str) -> dict[str, Any]:
    """A GP system's order, urgent (as `asap`), from the emergency department, question split."""
    resource = service_request(
        identifier=[{"system": "https://gp-system.example/Id/order", "value": "GP-READ-00001"}],
        priority="asap",
        note=[{"text": "Ex-smoker, 30 pack years"}],
        extension=[{"url": fhir.CARE_SETTING_EXTENSION, "valueCode": "emergency"}],
    )
    patient = next(c for c in resource["contained"] if c["resourceType"] == "Patient")
    patient["identifier"][0]["value"] = nhs
    return resource


def details(resource: dict[str, Any]) -> dict[str, Any]:
    """What the intake reads from a resource, by the same rules as POST /referrals."""
    raw = json.dumps(resource).encode()
    return fhir.checked_input(fhir.read_service_request(raw).values).model_dump(mode="json")


async def test_a_posted_service_request_is_read_back_at_its_location_by_its_practice_only(
    service_settings: Any,
) -> None:
    app = create_app(service_settings(Settings, "request"), clock=FixedClock(SUBMITTED))
    posted = posted_resource(synthetic_nhs_number())
    async with running_service(app) as svc:
        c = svc.client
        created = await c.post("/fhir/ServiceRequest", json=posted, headers=PRACTICE_A)
        assert created.status_code == 201, created.text
        location = created.headers["location"]

        read = await c.get(location, headers=PRACTICE_A)
        assert read.status_code == 200, read.text
        assert read.headers["content-type"].startswith(FHIR_JSON)
        body = read.json()
        resource = ServiceRequest.model_validate(body)
        assert location == f"/fhir/ServiceRequest/{resource.id}"
        referral_id = fhir.referral_id_of(str(resource.id))
        assert referral_id is not None
        assert (resource.status, resource.intent, resource.priority) == (
            "active",
            "order",
            "urgent",
        )
        identifiers = {(i.system, i.value) for i in resource.identifier or ()}
        assert (fhir.REFERRAL_ID_SYSTEM, referral_id) in identifiers
        assert (fhir.REQUEST_ID_SYSTEM, "GP-READ-00001") in identifiers
        assert resource.authoredOn is not None
        assert resource.authoredOn == SUBMITTED
        assert resource.meta is not None
        assert resource.meta.lastUpdated == SUBMITTED
        # What the intake read from the POST, it reads from the GET.
        assert details(body) == details(posted)

        # The native API and the FHIR read are the same referral.
        native = (await c.get(f"/referrals/{referral_id}", headers=PRACTICE_A)).json()
        assert native["priority"] == "urgent"
        assert native["care_setting"] == "emergency"
        assert (await c.get(location, headers=OPERATOR)).status_code == 200

        # Posting the read back is the same request again: the same referral, not a new one.
        again = await c.post("/fhir/ServiceRequest", json=body, headers=PRACTICE_A)
        assert again.status_code == 200, again.text
        assert again.headers["location"] == location

        not_found = {
            "another practice's": (location, PRACTICE_B),
            "an unknown": ("/fhir/ServiceRequest/ref-" + "0" * 32, PRACTICE_A),
            "a malformed": ("/fhir/ServiceRequest/not-a-referral", PRACTICE_A),
        }
        for what, (path, key) in not_found.items():
            answer = await c.get(path, headers=key)
            assert answer.status_code == 404, what
            assert answer.headers["content-type"].startswith(FHIR_JSON), what
            outcome = OperationOutcome.model_validate(answer.json())
            assert outcome.issue[0].code == "not-found", what
            assert posted["contained"][0]["identifier"][0]["value"] not in answer.text

        unauthenticated = await c.get(location)
        assert unauthenticated.status_code == 401
        OperationOutcome.model_validate(unauthenticated.json())
        too_long = await c.get("/fhir/ServiceRequest/" + "a" * 65, headers=PRACTICE_A)
        assert too_long.status_code == 422
        OperationOutcome.model_validate(too_long.json())
