"""Notify's FHIR edge: the delivered DiagnosticReport is valid R4, and a completed Task acknowledges."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from fastapi import FastAPI
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.task import Task

from pathway_schemas.values import FindingFlag
from services.common.auth import Principals
from services.common.errors import Denied
from services.notify import fhir
from services.notify.api import AcknowledgementDesk
from services.notify.fhir_api import fhir_router, read_task, task_id
from services.notify.policy import version_id
from services.notify.repository import NotifyRepository
from services.notify.service import Acknowledgement
from tests.unit.notify.builders import record, referral_of, report_addended, report_issued

REPO = Path(__file__).resolve().parents[3]
PRACTICE_KEY = {"X-API-Key": "dev-practice-a81001"}
REPORT_VERSION = version_id("RPT-0001", None)
ADDENDUM_VERSION = version_id("RPT-0001", "ADD-1")


def test_a_final_report_is_a_valid_r4_diagnostic_report_with_text_flag_and_images() -> None:
    issued = report_issued(finding_flag="urgent")
    resource = fhir.diagnostic_report(REPORT_VERSION, record(issued), referral_of(issued))
    report = DiagnosticReport.model_validate(resource)
    assert report.id == fhir.fhir_id(REPORT_VERSION)
    assert report.status == "final"
    assert report.conclusion == "Normal chest."
    assert report.conclusionCode is not None
    assert report.conclusionCode[0].coding is not None
    assert report.conclusionCode[0].coding[0].code == "urgent"
    assert report.extension is not None
    assert report.extension[0].valueCode == "urgent"
    assert report.imagingStudy is not None
    assert report.imagingStudy[0].identifier is not None
    assert report.imagingStudy[0].identifier.value == "urn:oid:1.2.826.0.1.3680043.8.498.1"
    assert report.presentedForm is not None
    # The model holds the decoded bytes; the resource as sent holds base64.
    assert report.presentedForm[0].data == b"The lungs are clear."
    sent = resource["presentedForm"][0]["data"]
    assert base64.b64decode(sent).decode() == "The lungs are clear."
    assert report.subject is not None
    assert report.subject.identifier is not None
    assert report.subject.identifier.value == "9434765919"


def test_a_preliminary_report_says_so() -> None:
    issued = report_issued(status="preliminary")
    resource = fhir.diagnostic_report(REPORT_VERSION, record(issued), None)
    assert DiagnosticReport.model_validate(resource).status == "preliminary"


def test_an_addendum_is_a_valid_appended_report_carrying_the_original() -> None:
    issued = report_issued()
    resource = fhir.diagnostic_report(
        ADDENDUM_VERSION, record(issued, report_addended(issued)), referral_of(issued), "ADD-1"
    )
    report = DiagnosticReport.model_validate(resource)
    assert report.status == "appended"
    assert report.presentedForm is not None
    assert [f.title for f in report.presentedForm] == ["Addendum", "Original report"]
    assert fhir.finding_flag_of(resource) == FindingFlag.UNEXPECTED_SIGNIFICANT.value


def test_the_resource_id_reads_back_to_the_version_and_nothing_else_does() -> None:
    assert fhir.version_id_of(fhir.fhir_id(REPORT_VERSION)) == REPORT_VERSION
    for foreign in ("", "ver", "ver-", "rpt-abc", "ver-a-b", "abc"):
        assert fhir.version_id_of(foreign) is None


# --------------------------------------------------------------------------- the Task


def task(**changes: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Task",
        "status": "completed",
        "intent": "order",
        "code": {"text": "Acknowledge imaging report"},
        "focus": {"reference": f"DiagnosticReport/{fhir.fhir_id(REPORT_VERSION)}"},
        "owner": {
            "identifier": {"system": "https://fhir.hl7.org.uk/Id/gmc-number", "value": "G1234567"}
        },
        "note": [{"text": "Reviewed with the patient; no further action."}],
    }
    resource.update(changes)
    return {k: v for k, v in resource.items() if v is not None}


def test_a_completed_task_names_the_report_who_and_what_was_done() -> None:
    import json

    read = read_task(json.dumps(task()).encode())
    assert read.focus_id == fhir.fhir_id(REPORT_VERSION)
    assert read.acknowledged_by == "G1234567"
    assert read.action == "Reviewed with the patient; no further action."
    by_identifier = read_task(
        json.dumps(
            task(focus={"identifier": {"system": fhir.REPORT_ID_SYSTEM, "value": "RPT-0001"}})
        ).encode()
    )
    assert (by_identifier.focus_id, by_identifier.report_id) == (None, "RPT-0001")


@dataclass
class FakeDesk:
    refuse: Exception | None = None
    seen: list[dict[str, Any]] = field(default_factory=list)

    async def acknowledge(self, **request: Any) -> Acknowledgement:
        if self.refuse is not None:
            raise self.refuse
        already = any(
            (s["report_id"], s["addendum_id"]) == (request["report_id"], request["addendum_id"])
            for s in self.seen
        )
        self.seen.append(request)
        first = next(
            s
            for s in self.seen
            if (s["report_id"], s["addendum_id"]) == (request["report_id"], request["addendum_id"])
        )
        return Acknowledgement(
            report_id=request["report_id"],
            addendum_id=request["addendum_id"],
            referral_id="ref_3f2a9c1e5b7d4e8fa1b2c3d4e5f60718",
            finding_flag=FindingFlag.ROUTINE,
            acknowledged_at=datetime(2026, 3, 2, 15, 0, tzinfo=UTC),
            acknowledged_by=first["acknowledged_by"],
            action=first["action"],
            already=already,
            owed_since=datetime(2026, 3, 2, 14, 0, tzinfo=UTC),
        )


class FakeVersions:
    async def version(self, wanted: str, tx: Any = None) -> dict[str, Any] | None:
        known: dict[str, dict[str, Any]] = {
            REPORT_VERSION: {"report_id": "RPT-0001", "addendum_id": None},
            ADDENDUM_VERSION: {"report_id": "RPT-0001", "addendum_id": "ADD-1"},
        }
        return known.get(wanted)


@pytest.fixture
async def client() -> AsyncIterator[tuple[httpx.AsyncClient, FakeDesk]]:
    desk = FakeDesk()
    app = FastAPI()
    app.state.principals = Principals.load(REPO / "config" / "principals.json")
    app.include_router(
        fhir_router(cast(AcknowledgementDesk, desk), cast(NotifyRepository, FakeVersions()))
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://notify") as http:
        yield http, desk


async def test_a_completed_task_acknowledges_once_201_then_200_with_the_first_answer(
    client: tuple[httpx.AsyncClient, FakeDesk],
) -> None:
    http, desk = client
    first = await http.post("/fhir/Task", json=task(), headers=PRACTICE_KEY)
    assert first.status_code == 201, first.text
    recorded = Task.model_validate(first.json())
    assert recorded.id == task_id("RPT-0001", None)
    assert recorded.status == "completed"
    assert recorded.businessStatus is not None
    assert recorded.businessStatus.text == "acknowledged"
    assert desk.seen[0] == {
        "practice_ods": "A81001",
        "report_id": "RPT-0001",
        "addendum_id": None,
        "acknowledged_by": "G1234567",
        "action": "Reviewed with the patient; no further action.",
    }
    again = await http.post("/fhir/Task", json=task(owner=None, note=None), headers=PRACTICE_KEY)
    assert again.status_code == 200
    repeat = Task.model_validate(again.json())
    assert repeat.owner is not None
    assert repeat.owner.identifier is not None
    assert repeat.owner.identifier.value == "G1234567"


async def test_an_addendum_is_acknowledged_through_its_delivered_resource_id(
    client: tuple[httpx.AsyncClient, FakeDesk],
) -> None:
    http, desk = client
    focus = {
        "reference": f"https://notify.example/fhir/DiagnosticReport/{fhir.fhir_id(ADDENDUM_VERSION)}"
    }
    answer = await http.post("/fhir/Task", json=task(focus=focus), headers=PRACTICE_KEY)
    assert answer.status_code == 201
    assert desk.seen[0]["addendum_id"] == "ADD-1"


@pytest.mark.parametrize(
    ("resource", "status", "expression"),
    [
        (task(status="in-progress"), 422, "Task.status"),
        (task(focus=None), 422, "Task.focus"),
        (task(focus={"reference": "Patient/1"}), 422, "Task.focus"),
        (
            task(focus={"identifier": {"system": "https://other", "value": "x"}}),
            422,
            "Task.focus.identifier",
        ),
        (task(owner={"display": "Dr Nobody"}), 422, "Task.owner.identifier"),
        (task(note=[{"text": "x" * 2001}]), 422, "Task.note"),
        (task(focus={"reference": "DiagnosticReport/ver-0000"}), 404, "Task.focus"),
        (task(intent=None), 400, "Task.intent"),
        ({"resourceType": "Communication"}, 400, "resourceType"),
    ],
)
async def test_what_is_not_an_acknowledgement_gets_an_operation_outcome_on_the_element(
    client: tuple[httpx.AsyncClient, FakeDesk],
    resource: dict[str, Any],
    status: int,
    expression: str,
) -> None:
    http, desk = client
    answer = await http.post("/fhir/Task", json=resource, headers=PRACTICE_KEY)
    assert answer.status_code == status, answer.text
    outcome = OperationOutcome.model_validate(answer.json())
    assert [expression] in [i.expression for i in outcome.issue]
    assert desk.seen == []


async def test_another_practices_report_is_forbidden_and_a_missing_key_unauthorised(
    client: tuple[httpx.AsyncClient, FakeDesk],
) -> None:
    http, desk = client
    desk.refuse = Denied("report RPT-0001 was not sent to practice A81001")
    answer = await http.post("/fhir/Task", json=task(), headers=PRACTICE_KEY)
    assert answer.status_code == 403
    assert OperationOutcome.model_validate(answer.json()).issue[0].code == "forbidden"
    anonymous = await http.post("/fhir/Task", json=task())
    assert anonymous.status_code == 401
    assert OperationOutcome.model_validate(anonymous.json()).issue[0].code == "security"
