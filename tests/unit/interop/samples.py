"""Realistic sample messages and resources, written by us, for the interoperability tests.

HL7 v2 messages look like what a UK RIS sends (v2.4/2.5, local time without an offset, NHS
number in PID-3 with authority NHS and type NH, IHE's ZDS segment for the study UID);
FHIR resources look like what a GP system posts (contained Patient, PractitionerRole with
Practitioner and Organization, NHS identifier systems). All patients are synthetic.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pathway_cli.hl7.state import Order
from services.request import fhir as request_fhir

NHS_NUMBER = "9434765919"
REFERRAL_ID = "ref_3f2a9c1e5b7d4e8fa1b2c3d4e5f60718"
OTHER_REFERRAL_ID = "ref_00000000000000000000000000000001"
PROVIDER = "RXA01"
STUDY_UID = "1.2.826.0.1.3680043.8.498.12345"
ACCESSION = "RXA0100042"
# 2 March 2026 is GMT: London wall time equals UTC.
MONDAY_MORNING = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)

BOOKED_ORDER = Order(
    referral_id=REFERRAL_ID,
    examination_code="XCHES",
    modality="XR",
    site_id="RIV-MAIN",
    slot_id="RIV-MAIN:XR:2026-03-04T10:00",
)
WALK_IN_ORDER = Order(
    referral_id=REFERRAL_ID,
    examination_code="XCHES",
    modality="XR",
    site_id="RIV-MAIN",
    slot_id=None,
)


def join(*segments: str) -> str:
    return "\r".join(segments) + "\r"


def msh(
    message_type: str, control_id: str, *, at: str = "20260302111500", version: str = "2.5"
) -> str:
    return f"MSH|^~\\&|CRIS|{PROVIDER}|PATHWAY|PATHWAY|{at}||{message_type}|{control_id}|P|{version}|||AL|NE"


def pid(nhs_number: str = NHS_NUMBER) -> str:
    return f"PID|1||{nhs_number}^^^NHS^NH||SYNTHETIC^PATIENT||19700101|F"


def adt_a10(
    referral_id: str = REFERRAL_ID, *, control_id: str = "CRIS000101", at: str = "20260302111000"
) -> str:
    return join(
        msh("ADT^A10^ADT_A09", control_id),
        f"EVN|A10|{at}||||{at}",
        pid(),
        f"PV1|1|O|RIV-MAIN^XR1^^{PROVIDER}||||||||||||||||{referral_id}",
    )


def orm_status(
    status: str,
    referral_id: str = REFERRAL_ID,
    *,
    control_id: str = "CRIS000102",
    reason: str = "",
    study: bool = True,
) -> str:
    segments = [
        msh("ORM^O01^ORM_O01", control_id),
        pid(),
        f"PV1|1|O|RIV-MAIN^XR1^^{PROVIDER}",
        f"ORC|SC|{referral_id}^PATHWAY|{ACCESSION}^CRIS||{status}||||20260302112500|||||||{reason}",
        f"OBR|1|{referral_id}^PATHWAY|{ACCESSION}^CRIS|XCHES^XR Chest^L|||20260302111500|20260302112500"
        + "|" * 26
        + "RG12345&Radiographer&Rob",
    ]
    if study:
        segments.append(f"ZDS|{STUDY_UID}^CRIS^Application^DICOM")
    return join(*segments)


def oru_r01(
    status: str = "F",
    referral_id: str = REFERRAL_ID,
    *,
    control_id: str = "CRIS000103",
    abnormal: str = "N",
    flag: str | None = None,
    addendum_id: str = "",
) -> str:
    obr_fields = [""] * 33
    obr_fields[1] = "1"
    obr_fields[2] = f"{referral_id}^PATHWAY"
    obr_fields[3] = f"{ACCESSION}^CRIS"
    obr_fields[4] = "XCHES^XR Chest^L"
    obr_fields[7] = "20260302111500"
    obr_fields[20] = addendum_id
    obr_fields[22] = "20260302141500"
    obr_fields[25] = status
    obr_fields[32] = "GMC-7654321&Reporter&Rae"
    segments = [
        msh("ORU^R01^ORU_R01", control_id, at="20260302141600"),
        pid(),
        "OBR|" + "|".join(obr_fields[1:]),
        "OBX|1|TX|GDT^Findings^L||The heart is not enlarged.~"
        f"The lungs are clear \\T\\ the pleural spaces are normal.||||||{status}",
        f"OBX|2|TX|IMP^Impression^L||Normal chest radiograph.|||{abnormal}|||{status}",
        f"OBX|3|RP|KEYIMG^Key image^L||{STUDY_UID}^CRIS^Image^DICOM||||||{status}",
    ]
    if flag is not None:
        segments.append(f"OBX|4|CE|FLAG^Finding flag^L||{flag}||||||{status}")
    return join(*segments)


# --------------------------------------------------------------------------- FHIR


def service_request(**changes: Any) -> dict[str, Any]:
    """A ServiceRequest as a GP system sends it, with its Patient, Practitioner and Organization contained."""
    resource: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "identifier": [{"system": "https://gp-system.example/Id/order", "value": "GP-ORDER-00001"}],
        "status": "active",
        "intent": "order",
        "priority": "routine",
        "category": [
            {
                "coding": [
                    {"system": "http://snomed.info/sct", "code": "363679005", "display": "Imaging"}
                ]
            }
        ],
        "code": {
            "coding": [
                {"system": request_fhir.EXAMINATION_SYSTEM, "code": "XCHES", "display": "XR Chest"}
            ]
        },
        "subject": {"reference": "#patient"},
        "requester": {"reference": "#role"},
        "authoredOn": "2026-03-02T09:00:00+00:00",
        "reasonCode": [{"text": "Cough for six weeks in a smoker"}],
        "contained": [
            {
                "resourceType": "Patient",
                "id": "patient",
                "identifier": [{"system": request_fhir.NHS_NUMBER_SYSTEM, "value": NHS_NUMBER}],
            },
            {
                "resourceType": "Practitioner",
                "id": "gp",
                "identifier": [
                    {"system": "https://fhir.hl7.org.uk/Id/gmc-number", "value": "G1234567"}
                ],
            },
            {
                "resourceType": "Organization",
                "id": "practice",
                "identifier": [{"system": request_fhir.ODS_SYSTEM, "value": "A81001"}],
            },
            {
                "resourceType": "PractitionerRole",
                "id": "role",
                "practitioner": {"reference": "#gp"},
                "organization": {"reference": "#practice"},
            },
        ],
    }
    resource.update(changes)
    return resource
