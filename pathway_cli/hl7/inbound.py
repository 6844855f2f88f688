"""Messages from the RIS as the provider's inbound events, or the reason they are refused.

| message                         | event                                              |
| ADT^A10                         | ProviderPatientArrived                             |
| ORM^O01, ORC-1 SC, ORC-5 IP     | ProviderPatientArrived                             |
| ORM^O01, ORC-1 SC, ORC-5 CM     | ProviderExaminationCompleted (ZDS-1 study UID)     |
| ORM^O01, ORC-1 SC, ORC-5 CA     | ProviderPatientDidNotAttend when ORC-16 is DNA,    |
|                                 | else ProviderExaminationAbandoned                  |
| ORM^O01, ORC-1 SC, ORC-5 DC     | ProviderExaminationAbandoned                       |
| ORM^O01, ORC-1 SC, ORC-5 SC     | nothing (the RIS confirms its schedule): AA        |
| ORU^R01, OBR-25 P / F           | ProviderReportIssued, preliminary / final          |
| ORU^R01, OBR-25 C               | ProviderReportAddended                             |

AR: the message is not readable HL7 v2, not a supported type or version, or says it comes
from another provider (MSH-4). AE: readable, but it names an order this gateway never sent
(or one since cancelled), or a field fails validation. The identity of the provider is the
gateway's configuration; nothing in the message can change it. Field by field:
docs/interop.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

import nhs_number
from pydantic import ValidationError

from pathway_cli.hl7 import v2
from pathway_cli.hl7.state import Order
from pathway_schemas.base import ReferralEvent
from pathway_schemas.events import (
    ProviderExaminationAbandoned,
    ProviderExaminationCompleted,
    ProviderPatientArrived,
    ProviderPatientDidNotAttend,
    ProviderReportAddended,
    ProviderReportIssued,
    ReportStatus,
)
from pathway_schemas.values import FindingFlag

AckCode = Literal["AA", "AE", "AR"]
# Closed set: the dead-letter counter's `reason` label.
Reason = Literal[
    "malformed", "unsupported", "not_for_provider", "unknown_order", "order_cancelled", "invalid"
]

DNA_CODES = frozenset({"DNA", "NOSHOW", "NS"})
TEXT_TYPES = frozenset({"TX", "FT", "ST"})
CODED_TYPES = frozenset({"CE", "CWE", "ST", "ID", "IS"})
IMPRESSION_IDS = frozenset({"IMP", "IMPRESSION", "CONCLUSION"})
FLAG_ID = "FLAG"
# HL7 table 0078 abnormal flags of the impression, when no FLAG observation says more.
ABNORMAL_FLAGS = {
    "": FindingFlag.ROUTINE,
    "N": FindingFlag.ROUTINE,
    "A": FindingFlag.UNEXPECTED_SIGNIFICANT,
    "AA": FindingFlag.CRITICAL,
}
_REPORT_KEY = re.compile(r"^[A-Za-z0-9._-]{1,60}$")


@dataclass(frozen=True)
class Accepted:
    events: tuple[ReferralEvent, ...]
    referral_id: str
    order: Order | None = None


@dataclass(frozen=True)
class Refused:
    code: AckCode
    reason: Reason
    problems: tuple[v2.Problem, ...]

    @property
    def text(self) -> str:
        return self.problems[0].text if self.problems else self.reason


@dataclass
class _Refusal(Exception):
    code: AckCode
    reason: Reason
    problems: list[v2.Problem] = field(default_factory=list)


def _invalid(location: str, code: str, text: str) -> _Refusal:
    return _Refusal("AE", "invalid", [v2.Problem(location, code, text)])


def _required(location: str, what: str) -> _Refusal:
    return _invalid(location, v2.REQUIRED_FIELD_MISSING, f"{location} ({what}) is required")


OrderLookup = Callable[[str], Order | None]


@dataclass(frozen=True)
class _Context:
    message: v2.Parsed
    provider: str
    orders: OrderLookup

    def order(self, referral_id: str, location: str) -> Order:
        known = self.orders(referral_id) if referral_id else None
        if not referral_id:
            raise _required(location, "the placer order number: the referral id")
        if known is None:
            raise _Refusal(
                "AE",
                "unknown_order",
                [
                    v2.Problem(
                        location,
                        v2.UNKNOWN_KEY,
                        f"{location} is not an order the pathway sent to provider {self.provider}",
                    )
                ],
            )
        if known.cancelled:
            raise _Refusal(
                "AE",
                "order_cancelled",
                [
                    v2.Problem(
                        location,
                        v2.APPLICATION_ERROR,
                        f"the order in {location} was cancelled by the pathway",
                    )
                ],
            )
        return known

    def when(self, *candidates: tuple[v2.SegmentView | None, int]) -> datetime:
        """The first of these timestamp fields that is filled, else MSH-7."""
        for segment, position in candidates:
            if segment is not None and segment.value(position):
                return v2.parse_ts(segment.value(position), f"{segment.name}-{position}")
        sent = self.message.msh.value(7)
        if not sent:
            raise _required("MSH-7", "the message date/time")
        return v2.parse_ts(sent, "MSH-7")


def _check_patient(message: v2.Parsed) -> None:
    """A PID, when present, carries a valid NHS number (or none): a typo is caught at the door."""
    pid = message.first("PID")
    if pid is None:
        return
    for rep in range(1, pid.repetitions(3) + 1):
        authority, kind = pid.value(3, rep, 4).upper(), pid.value(3, rep, 5).upper()
        if authority == "NHS" or kind == "NH":
            digits = pid.value(3, rep, 1).replace(" ", "")
            if not (re.fullmatch(r"[0-9]{10}", digits) and nhs_number.is_valid(digits)):
                raise _invalid(
                    "PID-3", v2.DATA_TYPE_ERROR, "PID-3 NHS number fails its Modulus 11 check"
                )


def _site(ctx: _Context, order: Order) -> str:
    pv1 = ctx.message.first("PV1")
    return (pv1.value(3, 1, 1) if pv1 is not None else "") or order.site_id


# --------------------------------------------------------------------------- ADT^A10


def _arrival_adt(ctx: _Context) -> Accepted:
    pv1 = ctx.message.first("PV1")
    if pv1 is None:
        raise _required("PV1", "the visit, with PV1-19 the referral id")
    referral_id = pv1.value(19)
    order = ctx.order(referral_id, "PV1-19")
    evn = ctx.message.first("EVN")
    event = _build(
        ProviderPatientArrived,
        {"site_id": "PV1-3", "referral_id": "PV1-19", "occurred_at": "EVN-6"},
        referral_id=referral_id,
        occurred_at=ctx.when((evn, 6), (evn, 2)),
        site_id=_site(ctx, order),
    )
    return Accepted((event,), referral_id, order)


# --------------------------------------------------------------------------- ORM^O01 status


def _accession(message: v2.Parsed) -> tuple[str, str]:
    """The RIS's accession number and where it was found (filler order number first)."""
    obr, orc = message.first("OBR"), message.first("ORC")
    for segment, position in ((obr, 3), (orc, 3), (obr, 18)):
        if segment is not None and segment.value(position, 1, 1):
            return segment.value(position, 1, 1), f"{segment.name}-{position}"
    return "", "OBR-3"


def _status_update(ctx: _Context) -> Accepted:
    message = ctx.message
    orc, obr = message.first("ORC"), message.first("OBR")
    if orc is None:
        raise _required("ORC", "the common order segment")
    if orc.value(1).upper() != "SC":
        raise _invalid(
            "ORC-1",
            v2.TABLE_VALUE_NOT_FOUND,
            "ORC-1 must be SC (status changed): the RIS does not place orders here",
        )
    referral_id = orc.value(2, 1, 1) or (obr.value(2, 1, 1) if obr is not None else "")
    order = ctx.order(referral_id, "ORC-2")
    status = orc.value(5).upper()
    at_change = ctx.when((orc, 9))
    if status == "SC":
        return Accepted((), referral_id, order)
    if status == "IP":
        event: ReferralEvent = _build(
            ProviderPatientArrived,
            {"site_id": "PV1-3", "occurred_at": "ORC-9"},
            referral_id=referral_id,
            occurred_at=at_change,
            site_id=_site(ctx, order),
        )
    elif status == "CM":
        zds = message.first("ZDS")
        study_uid = zds.value(1, 1, 1) if zds is not None else ""
        if not study_uid:
            raise _required("ZDS-1", "the DICOM Study Instance UID")
        accession, where = _accession(message)
        if not accession:
            raise _required("ORC-3", "the accession number (filler order number)")
        event = _build(
            ProviderExaminationCompleted,
            {
                "study.study_instance_uid": "ZDS-1",
                "study.accession_number": where,
                "study": "ZDS-1",
                "performed_by": "OBR-34",
                "site_id": "PV1-3",
                "occurred_at": "OBR-8",
            },
            referral_id=referral_id,
            occurred_at=ctx.when((obr, 8), (obr, 7), (orc, 9)),
            site_id=_site(ctx, order),
            study={"study_instance_uid": study_uid, "accession_number": accession},
            performed_by=(obr.value(34, 1, 1, 1) if obr is not None else "") or None,
        )
    elif status == "CA" and orc.value(16, 1, 1).upper() in DNA_CODES:
        if order.slot_id is None:
            raise _invalid(
                "ORC-16",
                v2.APPLICATION_ERROR,
                "a walk-in has no appointment to miss: send nothing, the authorisation lapses",
            )
        event = _build(
            ProviderPatientDidNotAttend,
            {"occurred_at": "ORC-9"},
            referral_id=referral_id,
            occurred_at=at_change,
            slot_id=order.slot_id,
        )
    elif status in ("CA", "DC"):
        reason = orc.value(16, 1, 2) or orc.value(16, 1, 1) or "discontinued by the provider"
        event = _build(
            ProviderExaminationAbandoned,
            {"reason": "ORC-16", "occurred_at": "ORC-9"},
            referral_id=referral_id,
            occurred_at=at_change,
            reason=reason[:500],
        )
    else:
        raise _invalid(
            "ORC-5",
            v2.TABLE_VALUE_NOT_FOUND,
            "ORC-5 order status must be SC, IP, CM, CA or DC",
        )
    return Accepted((event,), referral_id, order)


# --------------------------------------------------------------------------- ORU^R01


def _observation_id(obx: v2.SegmentView) -> str:
    return obx.value(3, 1, 1).upper().lstrip("&")


def _texts(obx: v2.SegmentView) -> str:
    return "\n".join(obx.values(5)).strip()


def _finding_flag(observations: list[v2.SegmentView]) -> FindingFlag:
    for obx in observations:
        if _observation_id(obx) == FLAG_ID:
            code = obx.value(5, 1, 1).strip().lower()
            try:
                return FindingFlag(code)
            except ValueError:
                raise _invalid(
                    "OBX-5",
                    v2.TABLE_VALUE_NOT_FOUND,
                    "the FLAG observation must be routine, critical, urgent or "
                    "unexpected_significant",
                ) from None
    impressions = [o for o in observations if _observation_id(o) in IMPRESSION_IDS]
    for obx in impressions or [o for o in observations if o.value(2).upper() in TEXT_TYPES]:
        flag = obx.value(8).upper()
        if flag not in ABNORMAL_FLAGS:
            raise _invalid(
                "OBX-8",
                v2.TABLE_VALUE_NOT_FOUND,
                "OBX-8 abnormal flag must be N, A or AA (or send a FLAG observation)",
            )
        if ABNORMAL_FLAGS[flag] is not FindingFlag.ROUTINE:
            return ABNORMAL_FLAGS[flag]
    return FindingFlag.ROUTINE


def _result(ctx: _Context) -> Accepted:
    message = ctx.message
    obr, orc = message.first("OBR"), message.first("ORC")
    if obr is None:
        raise _required("OBR", "the observation request")
    referral_id = obr.value(2, 1, 1) or (orc.value(2, 1, 1) if orc is not None else "")
    order = ctx.order(referral_id, "OBR-2")
    status = obr.value(25).upper()
    if status not in ("P", "F", "C"):
        raise _invalid(
            "OBR-25",
            v2.TABLE_VALUE_NOT_FOUND,
            "OBR-25 result status must be P (preliminary), F (final) or C (addendum)",
        )
    accession, where = _accession(message)
    if not accession:
        raise _required("OBR-3", "the accession number (filler order number)")
    if not _REPORT_KEY.fullmatch(accession):
        raise _invalid(where, v2.DATA_TYPE_ERROR, f"{where} may hold letters, digits, . _ - only")
    observations = message.segments("OBX")
    texts = [o for o in observations if o.value(2).upper() in TEXT_TYPES]
    texts = [o for o in texts if _observation_id(o) != FLAG_ID]
    body = "\n".join(
        t for o in texts if _observation_id(o) not in IMPRESSION_IDS if (t := _texts(o))
    )
    conclusion = "\n".join(
        t for o in texts if _observation_id(o) in IMPRESSION_IDS if (t := _texts(o))
    )
    flag = _finding_flag(observations)
    first_text = texts[0] if texts else None
    reported_by = obr.value(32, 1, 1, 1) or (first_text.value(16, 1, 1) if first_text else "")
    if not reported_by:
        raise _required("OBR-32", "the principal result interpreter")
    occurred_at = ctx.when((obr, 22))
    if status == "C":
        whole = "\n".join(t for t in (body, conclusion) if t)
        if not whole:
            raise _required("OBX-5", "the addendum text")
        addendum_id = obr.value(20) or message.control_id
        event: ReferralEvent = _build(
            ProviderReportAddended,
            {
                "addendum_id": "OBR-20" if obr.value(20) else "MSH-10",
                "text": "OBX-5",
                "finding_flag": "OBX-8",
                "reported_by": "OBR-32",
                "report_id": where,
                "occurred_at": "OBR-22",
            },
            referral_id=referral_id,
            occurred_at=occurred_at,
            report_id=f"{accession}.F",
            addendum_id=addendum_id,
            text=whole,
            finding_flag=flag,
            reported_by=reported_by,
        )
        return Accepted((event,), referral_id, order)
    if not body:
        raise _required("OBX-5", "the report text (an OBX other than IMP)")
    if not conclusion:
        raise _required("OBX-5", "the conclusion (an OBX with OBX-3 IMP)")
    key_images = [
        {"study_instance_uid": o.value(5, 1, 1), "accession_number": accession}
        for o in observations
        if o.value(2).upper() == "RP" and o.value(5, 1, 1)
    ]
    event = _build(
        ProviderReportIssued,
        {
            "report_id": where,
            "text": "OBX-5",
            "conclusion": "OBX-5",
            "finding_flag": "OBX-8",
            "reported_by": "OBR-32",
            "key_images": "OBX-5",
            "occurred_at": "OBR-22",
        },
        referral_id=referral_id,
        occurred_at=occurred_at,
        report_id=f"{accession}.{status}",
        status=ReportStatus.PRELIMINARY if status == "P" else ReportStatus.FINAL,
        text=body,
        conclusion=conclusion,
        finding_flag=flag,
        reported_by=reported_by,
        key_images=key_images,
    )
    return Accepted((event,), referral_id, order)


# --------------------------------------------------------------------------- the door


def _build(
    model: type[ReferralEvent], locations: Mapping[str, str], **values: object
) -> ReferralEvent:
    """The event, or AE naming the HL7 field of each value the contract refuses."""
    try:
        return model.model_validate(values)
    except ValidationError as error:
        problems = []
        for e in error.errors(include_input=False, include_url=False, include_context=False):
            path = [str(p) for p in e["loc"]]
            dotted = ".".join(p for p in path if not p.isdigit())
            location = locations.get(dotted) or locations.get(path[0] if path else "", "")
            problems.append(
                v2.Problem(
                    location,
                    v2.DATA_TYPE_ERROR,
                    f"{location or dotted}: {str(e['msg']).removeprefix('Value error, ')}",
                )
            )
        raise _Refusal("AE", "invalid", problems) from None


_HANDLERS: dict[tuple[str, str], Callable[[_Context], Accepted]] = {
    ("ADT", "A10"): _arrival_adt,
    ("ORM", "O01"): _status_update,
    ("ORU", "R01"): _result,
}
SUPPORTED = tuple(f"{kind}^{trigger}" for kind, trigger in _HANDLERS)


def interpret(message: v2.Parsed, *, provider: str, orders: OrderLookup) -> Accepted | Refused:
    """What a readable message means for the pathway, or why it is refused (AE / AR)."""
    try:
        return _interpret(message, provider, orders)
    except _Refusal as refusal:
        return Refused(refusal.code, refusal.reason, tuple(refusal.problems))
    except v2.Hl7Error as error:
        # A field the library cannot read, or a timestamp that is not one: the content is wrong.
        return Refused("AE", "invalid", (error.problem,))


def _interpret(message: v2.Parsed, provider: str, orders: OrderLookup) -> Accepted:
    if not message.control_id:
        raise _Refusal(
            "AR",
            "malformed",
            [v2.Problem("MSH-10", v2.REQUIRED_FIELD_MISSING, "MSH-10 is required")],
        )
    if message.version not in v2.SUPPORTED_VERSIONS:
        raise _Refusal(
            "AR",
            "unsupported",
            [
                v2.Problem(
                    "MSH-12",
                    v2.UNSUPPORTED_VERSION,
                    f"MSH-12 must be one of {', '.join(v2.SUPPORTED_VERSIONS)}",
                )
            ],
        )
    facility = message.msh.value(4, 1, 1).upper()
    if facility and facility != provider:
        raise _Refusal(
            "AR",
            "not_for_provider",
            [
                v2.Problem(
                    "MSH-4",
                    v2.APPLICATION_ERROR,
                    f"MSH-4 names another facility: this gateway serves provider {provider} only",
                )
            ],
        )
    handler = _HANDLERS.get(message.message_type)
    if handler is None:
        known_kind = any(kind == message.message_type[0] for kind, _ in _HANDLERS)
        raise _Refusal(
            "AR",
            "unsupported",
            [
                v2.Problem(
                    "MSH-9",
                    v2.UNSUPPORTED_EVENT_CODE if known_kind else v2.UNSUPPORTED_MESSAGE_TYPE,
                    f"MSH-9 must be one of {', '.join(SUPPORTED)}",
                )
            ],
        )
    _check_patient(message)
    return handler(_Context(message, provider, orders))
