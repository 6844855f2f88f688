"""Value types shared by every event: each validates itself and says what is wrong."""

from __future__ import annotations

import re
import uuid
from enum import StrEnum
from typing import Annotated

import nhs_number
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from pathway_schemas.catalogue import CATALOGUE


def _normalise_nhs_number(value: object) -> object:
    # People write NHS numbers as "943 476 5919" or "943-476-5919"; store the ten digits.
    if isinstance(value, str):
        return re.sub(r"[ \t-]", "", value)
    return value


def _check_nhs_number(value: str) -> str:
    if not re.fullmatch(r"[0-9]{10}", value):
        raise ValueError("an NHS number is 10 digits (spaces allowed between groups)")
    if str(nhs_number.calculate_checksum(value[:9])) != value[9]:
        raise ValueError(
            "the NHS number fails its Modulus 11 check digit: check it was typed correctly"
        )
    if not nhs_number.is_valid(value):
        # The package also knows the allocated ranges (a Scottish CHI number starts with a date).
        raise ValueError("the number is not in a valid NHS or CHI number range")
    return value


NhsNumber = Annotated[
    str,
    BeforeValidator(_normalise_nhs_number),
    AfterValidator(_check_nhs_number),
    Field(
        description="NHS number: 10 digits with a valid Modulus 11 check digit",
        examples=["9434765919"],
    ),
]


def _normalise_ods(value: object) -> object:
    return value.strip().upper() if isinstance(value, str) else value


OdsCode = Annotated[
    str,
    BeforeValidator(_normalise_ods),
    Field(
        pattern=r"^[A-Z0-9]{3,10}$",
        description="ODS organisation code of a practice or provider (3-10 letters or digits)",
        examples=["A81001", "RXA01"],
    ),
]

ReferralId = Annotated[
    str,
    Field(
        pattern=r"^ref_[0-9a-f]{32}$",
        description="Opaque referral id, random, never derived from patient data",
        examples=["ref_3f2a9c1e5b7d4e8fa1b2c3d4e5f60718"],
    ),
]


def new_referral_id() -> str:
    return f"ref_{uuid.uuid4().hex}"


PersonId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9._:@-]+$",
        description="Identifier of a professional (GMC/HCPC number or local user id); never a patient",
        examples=["G1234567"],
    ),
]

FreeText = Annotated[str, Field(min_length=1, max_length=4000)]
ShortText = Annotated[str, Field(min_length=1, max_length=500)]


class Priority(StrEnum):
    ROUTINE = "routine"
    URGENT = "urgent"


class CareSetting(StrEnum):
    GP = "gp"  # GP or outpatient
    INPATIENT = "inpatient"
    EMERGENCY = "emergency"  # A&E


class Modality(StrEnum):
    XR = "XR"
    US = "US"
    CT = "CT"
    MR = "MR"
    DEXA = "DEXA"
    FLUOROSCOPY = "RF"
    NUCLEAR_MEDICINE = "NM"


class FindingFlag(StrEnum):
    """RCR communication standards: anything but routine needs prompt, tracked communication."""

    ROUTINE = "routine"
    CRITICAL = "critical"
    URGENT = "urgent"
    UNEXPECTED_SIGNIFICANT = "unexpected_significant"


class GuidanceOutcome(StrEnum):
    INDICATED = "indicated"
    NOT_INDICATED = "not_indicated"
    SPECIALIST_ONLY = "specialist_only"
    MORE_INFORMATION_NEEDED = "more_information_needed"
    NO_RULE = "no_rule"


def _check_exam_code(value: str) -> str:
    code = value.strip().upper()
    if code not in CATALOGUE:
        # The message names no value: it may travel to dead letters and intake replies.
        raise ValueError(
            "not in the examination catalogue; see pathway_schemas.catalogue for the codes"
        )
    return code


ExaminationCode = Annotated[
    str,
    AfterValidator(_check_exam_code),
    Field(description="Examination code from the shipped catalogue", examples=["XCHES"]),
]

DicomUid = Annotated[
    str,
    Field(
        pattern=r"^[0-2](\.(0|[1-9][0-9]*))+$",
        max_length=64,
        description="DICOM UID: dot-separated digits, at most 64 characters",
        examples=["1.2.826.0.1.3680043.8.498.1"],
    ),
]


class StudyReference(BaseModel):
    """Where the images are: enough for any provider's viewer to fetch them."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    study_instance_uid: DicomUid
    accession_number: Annotated[str, Field(min_length=1, max_length=16, pattern=r"^[A-Za-z0-9-]+$")]
    series_instance_uids: tuple[DicomUid, ...] = ()


class GuidanceAdvice(BaseModel):
    """What the referral guidance rules said at the point of referral."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    outcome: GuidanceOutcome
    rule_id: str | None = Field(default=None, max_length=64)
    message: str = Field(default="", max_length=2000)


class FieldError(BaseModel):
    """One field-level reason for a rejection, without echoing the bad value."""

    model_config = ConfigDict(frozen=True)

    field: str
    message: str
