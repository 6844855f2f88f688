"""The report as a GP system receives it: a FHIR R4 DiagnosticReport, validated before it goes.

Every resource is checked against the `fhir.resources` model (R4B, whose DiagnosticReport
has the same elements as R4's) before it is sent: a report that would not be valid FHIR
fails its delivery attempt instead of reaching a practice. Its id is the version id in FHIR
form (`ver-…`: a FHIR id has no underscore); the practice acknowledges by naming it in a
Task's `focus` (see `fhir_api`).

An addendum travels as its own DiagnosticReport with status `appended`, tagged as a change
to a report already sent, carrying the addendum first and the original report after it, so
that the receiving system can file it beside the original. The practice system matches the
report to its own request through `basedOn` (the referral id it was given when it referred)
and to the patient through the NHS number, when notify has seen the referral.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Any

from fhir.resources.R4B.diagnosticreport import DiagnosticReport

from pathway_schemas.events import ReportStatus
from pathway_schemas.values import FindingFlag
from services.notify.records import ReferralRecord, ReportRecord

_BASE = "https://imaging-pathway.example.nhs.uk/fhir"
REPORT_ID_SYSTEM = f"{_BASE}/Id/report-id"
ADDENDUM_ID_SYSTEM = f"{_BASE}/Id/addendum-id"
REFERRAL_ID_SYSTEM = f"{_BASE}/Id/referral-id"
PERSON_ID_SYSTEM = f"{_BASE}/Id/person-id"
EXAMINATION_SYSTEM = f"{_BASE}/CodeSystem/examination-code"
FINDING_FLAG_SYSTEM = f"{_BASE}/CodeSystem/finding-flag"
FINDING_FLAG_EXTENSION = f"{_BASE}/StructureDefinition/finding-flag"
CHANGE_TAG_SYSTEM = f"{_BASE}/CodeSystem/report-change"
NHS_NUMBER_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"
DICOM_UID_SYSTEM = "urn:dicom:uid"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"

_FLAG_DISPLAY = {
    FindingFlag.ROUTINE: "Routine",
    FindingFlag.CRITICAL: "Critical finding: communicate at once",
    FindingFlag.URGENT: "Urgent finding",
    FindingFlag.UNEXPECTED_SIGNIFICANT: "Unexpected significant finding",
}


def fhir_id(version_id: str) -> str:
    """The resource id of a report version (`ver_…` → `ver-…`)."""
    return version_id.replace("_", "-")


def version_id_of(resource_id: str) -> str | None:
    """The version id a DiagnosticReport id stands for; None for an id we never gave out."""
    prefix, sep, rest = resource_id.partition("-")
    if prefix != "ver" or not sep or not rest or "-" in rest:
        return None
    return f"ver_{rest}"


def _instant(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _text(title: str, text: str) -> dict[str, Any]:
    return {
        "contentType": "text/plain; charset=utf-8",
        "language": "en-GB",
        "title": title,
        "data": base64.b64encode(text.encode("utf-8")).decode("ascii"),
    }


def _flag(flag: FindingFlag) -> dict[str, Any]:
    return {"system": FINDING_FLAG_SYSTEM, "code": flag.value, "display": _FLAG_DISPLAY[flag]}


def diagnostic_report(
    resource_id: str,
    report: ReportRecord,
    referral: ReferralRecord | None,
    addendum_id: str | None = None,
) -> dict[str, Any]:
    """The resource for the report itself, or for one of its addenda."""
    addendum = report.addendum(addendum_id) if addendum_id else None
    if addendum_id and addendum is None:
        raise ValueError(f"report {report.report_id} has no addendum {addendum_id}")
    flag = addendum.finding_flag if addendum else report.finding_flag
    identifiers = [{"system": REPORT_ID_SYSTEM, "value": report.report_id}]
    resource: dict[str, Any] = {"resourceType": "DiagnosticReport", "id": fhir_id(resource_id)}
    if addendum is not None:
        identifiers.append({"system": ADDENDUM_ID_SYSTEM, "value": addendum.addendum_id})
        resource["meta"] = {
            "tag": [
                {
                    "system": CHANGE_TAG_SYSTEM,
                    "code": "addendum",
                    "display": "A change to a report already sent",
                }
            ]
        }
    if flag is not None:
        resource["extension"] = [{"url": FINDING_FLAG_EXTENSION, "valueCode": flag.value}]
    resource["identifier"] = identifiers
    resource["basedOn"] = [
        {"identifier": {"system": REFERRAL_ID_SYSTEM, "value": report.referral_id}}
    ]
    if addendum is not None:
        resource["status"] = "appended"
    elif report.status is ReportStatus.PRELIMINARY:
        resource["status"] = "preliminary"
    else:
        resource["status"] = "final"
    resource["category"] = [
        {"coding": [{"system": V2_0074, "code": "RAD", "display": "Radiology"}]}
    ]
    if referral is not None:
        resource["code"] = {
            "coding": [{"system": EXAMINATION_SYSTEM, "code": referral.examination_code}]
        }
        resource["subject"] = {
            "identifier": {"system": NHS_NUMBER_SYSTEM, "value": referral.nhs_number}
        }
    else:
        resource["code"] = {"text": "Imaging examination"}
    if report.examination_completed_at is not None:
        resource["effectiveDateTime"] = _instant(report.examination_completed_at)
    issued = addendum.addended_at if addendum else report.issued_at
    if issued is not None:
        resource["issued"] = _instant(issued)
    resource["performer"] = [{"identifier": {"system": ODS_SYSTEM, "value": report.provider_ods}}]
    interpreter = addendum.reported_by if addendum else report.reported_by
    if interpreter:
        resource["resultsInterpreter"] = [{"identifier": {"value": interpreter}}]
    if report.key_images:
        resource["imagingStudy"] = [
            {
                "identifier": {
                    "system": DICOM_UID_SYSTEM,
                    "value": f"urn:oid:{image.study_instance_uid}",
                },
                "display": f"Accession {image.accession_number}",
            }
            for image in report.key_images
        ]
    if report.conclusion:
        resource["conclusion"] = report.conclusion
    if flag is not None:
        resource["conclusionCode"] = [{"coding": [_flag(flag)]}]
    forms = []
    if addendum is not None:
        forms.append(_text("Addendum", addendum.text))
    if report.text:
        forms.append(_text("Original report" if addendum else "Report", report.text))
    resource["presentedForm"] = forms
    # The model is the check; what is sent is exactly what it accepted.
    return DiagnosticReport.model_validate(resource).model_dump(
        mode="json", by_alias=True, exclude_none=True
    )


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def identifiers_of(resource: dict[str, Any]) -> tuple[str | None, str | None, str | None]:
    """(report id, addendum id, referral id) of a received resource, for a receiver to file it."""
    values: dict[str, str] = {}
    for identifier in _list(resource.get("identifier")):
        if isinstance(identifier, dict) and isinstance(identifier.get("value"), str):
            values[str(identifier.get("system"))] = identifier["value"]
    referral_id = None
    for based_on in _list(resource.get("basedOn")):
        identifier = based_on.get("identifier") if isinstance(based_on, dict) else None
        if isinstance(identifier, dict) and identifier.get("system") == REFERRAL_ID_SYSTEM:
            referral_id = identifier.get("value")
    return (
        values.get(REPORT_ID_SYSTEM),
        values.get(ADDENDUM_ID_SYSTEM),
        referral_id if isinstance(referral_id, str) else None,
    )


def is_change(resource: dict[str, Any]) -> bool:
    meta = resource.get("meta")
    tags = _list(meta.get("tag")) if isinstance(meta, dict) else []
    return any(isinstance(t, dict) and t.get("system") == CHANGE_TAG_SYSTEM for t in tags)


def finding_flag_of(resource: dict[str, Any]) -> str | None:
    for extension in _list(resource.get("extension")):
        if isinstance(extension, dict) and extension.get("url") == FINDING_FLAG_EXTENSION:
            code = extension.get("valueCode")
            return code if isinstance(code, str) else None
    return None


def texts_of(resource: dict[str, Any]) -> list[str]:
    """The plain texts of a resource's presented forms (those that decode)."""
    texts = []
    for form in _list(resource.get("presentedForm")):
        data = form.get("data") if isinstance(form, dict) else None
        if not isinstance(data, str):
            continue
        try:
            texts.append(base64.b64decode(data, validate=True).decode("utf-8"))
        except (binascii.Error, UnicodeDecodeError):
            continue
    return texts
