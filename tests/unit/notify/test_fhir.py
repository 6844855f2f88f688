"""The delivered report: a FHIR R4 DiagnosticReport-shaped resource; an addendum is a change."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from services.notify import fhir
from tests.unit.notify.builders import record, referral_of, report_addended, report_issued


def _texts(resource: dict[str, object]) -> list[tuple[str, str]]:
    forms = resource["presentedForm"]
    assert isinstance(forms, list)
    return [(f["title"], base64.b64decode(f["data"]).decode()) for f in forms]


def test_final_report_carries_text_conclusion_flag_images_patient_and_referral() -> None:
    issued = report_issued(finding_flag="critical")
    resource = fhir.diagnostic_report("ver_1", record(issued), referral_of(issued))
    assert resource["resourceType"] == "DiagnosticReport"
    assert resource["status"] == "final"
    assert "meta" not in resource
    assert resource["identifier"] == [{"system": fhir.REPORT_ID_SYSTEM, "value": "RPT-0001"}]
    assert resource["basedOn"] == [
        {"identifier": {"system": fhir.REFERRAL_ID_SYSTEM, "value": issued.referral_id}}
    ]
    assert resource["subject"] == {
        "identifier": {"system": fhir.NHS_NUMBER_SYSTEM, "value": "9434765919"}
    }
    assert resource["conclusion"] == "Normal chest."
    assert resource["conclusionCode"][0]["coding"][0]["code"] == "critical"
    assert resource["extension"] == [{"url": fhir.FINDING_FLAG_EXTENSION, "valueCode": "critical"}]
    assert resource["imagingStudy"][0]["identifier"]["value"] == (
        "urn:oid:1.2.826.0.1.3680043.8.498.1"
    )
    assert resource["issued"] == "2026-03-02T10:00:00Z"
    assert _texts(resource) == [("Report", "The lungs are clear.")]


def test_addendum_is_appended_tagged_as_a_change_and_carries_the_original() -> None:
    issued = report_issued()
    addendum = report_addended(issued)
    resource = fhir.diagnostic_report(
        "ver_2", record(issued, addendum), referral_of(issued), "ADD-1"
    )
    assert resource["status"] == "appended"
    assert fhir.is_change(resource)
    assert resource["extension"][0]["valueCode"] == "unexpected_significant"
    assert _texts(resource) == [
        ("Addendum", addendum.text),
        ("Original report", "The lungs are clear."),
    ]
    assert fhir.identifiers_of(resource) == ("RPT-0001", "ADD-1", issued.referral_id)


def test_without_the_referral_the_report_still_names_the_referral_but_no_patient() -> None:
    issued = report_issued()
    resource = fhir.diagnostic_report("ver_1", record(issued), None)
    assert "subject" not in resource
    assert resource["code"] == {"text": "Imaging examination"}
    assert fhir.identifiers_of(resource) == ("RPT-0001", None, issued.referral_id)
    assert not fhir.is_change(resource)


@pytest.mark.parametrize(
    "resource",
    [
        {"identifier": "nonsense", "basedOn": [1]},
        {"identifier": 5, "basedOn": "x", "meta": "m", "extension": {}, "presentedForm": 3},
        {"presentedForm": [{"data": "not base64!"}, {"data": 7}, "form"]},
    ],
)
def test_a_foreign_resource_reads_as_nothing_not_an_error(resource: dict[str, Any]) -> None:
    assert fhir.identifiers_of(resource) == (None, None, None)
    assert not fhir.is_change(resource)
    assert fhir.finding_flag_of(resource) is None
    assert fhir.texts_of(resource) == []
