"""Provider orders to the RIS: each outbound event as an ORM^O01 message (HL7 v2.5).

| event                      | ORC-1 | carries                                                   |
| ProviderOrderBooked        | NW    | PID (NHS number), PV1 (site, visit = referral), TQ1 slot |
| ProviderWalkInAuthorised   | NW    | the same, TQ1 = the walk-in validity window              |
| ProviderOrderRebooked      | XO    | PV1 new site, TQ1 new slot                               |
| ProviderOrderCancelled     | CA    | ORC-16 the reason                                        |

The placer order number (ORC-2, OBR-2) is the referral id: the RIS quotes it back in every
status update and result. The message control id (MSH-10) is derived from the event id, so
a resent order is recognisably the same message. Field by field: docs/interop.md.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from pathway_cli.hl7 import v2
from pathway_cli.hl7.state import Order
from pathway_schemas.base import PathwayEvent
from pathway_schemas.catalogue import CATALOGUE
from pathway_schemas.events import (
    Appointment,
    ProviderOrderBooked,
    ProviderOrderCancelled,
    ProviderOrderRebooked,
    ProviderWalkInAuthorised,
)
from pathway_schemas.values import Priority

SENDING_APPLICATION = "PATHWAY"
RECEIVING_APPLICATION = "RIS"
PLACER_NAMESPACE = "PATHWAY"
EXAMINATION_CODING_SYSTEM = "L"  # HL7 table 0396: local codes (the pathway's catalogue)
NHS_NUMBER_AUTHORITY = "NHS"
NHS_NUMBER_TYPE = "NH"  # HL7 table 0203: national health number
PRIORITY_CODES = {Priority.ROUTINE: "R", Priority.URGENT: "A"}  # HL7 table 0485
WALK_IN_INSTRUCTION = "walk-in"
APPOINTMENT_INSTRUCTION = "appointment"
ORDER_TYPE = ("ORM", "O01", "ORM_O01")


class UnknownOrder(LookupError):
    """A change or cancellation for an order this gateway never sent (nothing to change)."""


@dataclass(frozen=True)
class OutboundMessage:
    text: str
    control_id: str
    order: Order
    control: str  # ORC-1: NW, XO or CA


def control_id_of(event_id: str) -> str:
    """MSH-10 (at most 20 characters in v2.5), stable for one event: 80 bits of its digest."""
    return hashlib.sha256(event_id.encode()).hexdigest()[:20]


def _placer(referral_id: str) -> str:
    return v2.components(referral_id, PLACER_NAMESPACE)


def _pid(nhs_number: str) -> str:
    return v2.segment(
        "PID",
        "1",
        "",
        v2.components(nhs_number, "", "", NHS_NUMBER_AUTHORITY, NHS_NUMBER_TYPE),
    )


def _pv1(provider: str, site_id: str, referral_id: str) -> str:
    fields = [""] * 19
    fields[0] = "1"
    fields[1] = "O"  # outpatient: the pathway serves primary care
    fields[2] = v2.components(site_id, "", "", provider)
    fields[18] = v2.escape(referral_id)  # PV1-19 visit number: ADT^A10 quotes it back
    return v2.segment("PV1", *fields)


def _orc(control: str, referral_id: str, at: datetime, reason: str = "") -> str:
    fields = [""] * 16
    fields[0] = control
    fields[1] = _placer(referral_id)
    fields[8] = v2.format_ts(at)
    if reason:
        fields[15] = v2.components("", reason)
    return v2.segment("ORC", *fields)


def _tq1(start: datetime, end: datetime, priority: str, instruction: str) -> str:
    fields = [""] * 11
    fields[0] = "1"
    fields[6] = v2.format_ts(start)
    fields[7] = v2.format_ts(end)
    fields[8] = v2.escape(priority)
    fields[10] = v2.escape(instruction)
    return v2.segment("TQ1", *fields)


def _obr(referral_id: str, examination_code: str, modality: str, question: str = "") -> str:
    name = CATALOGUE[examination_code].name if examination_code in CATALOGUE else ""
    fields = [""] * 24
    fields[0] = "1"
    fields[1] = _placer(referral_id)
    fields[3] = v2.components(examination_code, name, EXAMINATION_CODING_SYSTEM)
    fields[12] = v2.escape(question)
    fields[23] = v2.escape(modality)
    return v2.segment("OBR", *fields)


def _nte(text: str) -> str:
    return v2.segment("NTE", "1", "P", v2.escape(text))


def _msh(provider: str, at: datetime, control_id: str) -> str:
    return v2.msh(
        sending_application=SENDING_APPLICATION,
        sending_facility=SENDING_APPLICATION,
        receiving_application=RECEIVING_APPLICATION,
        receiving_facility=provider,
        at=at,
        message_type=ORDER_TYPE,
        control_id=control_id,
    )


def _slot(appointment: Appointment) -> tuple[str, str]:
    return appointment.site_id, appointment.slot_id


def order_message(
    event: PathwayEvent,
    *,
    provider: str,
    event_id: str,
    known: Order | None,
    trace: dict[str, str] | None = None,
) -> OutboundMessage:
    """The ORM^O01 for one outbound event; UnknownOrder for a change to an order never sent."""
    control_id = control_id_of(event_id)
    trace = dict(trace or {})
    match event:
        case ProviderOrderBooked():
            site_id, slot_id = _slot(event.appointment)
            order = Order(
                referral_id=event.referral_id,
                examination_code=event.examination_code,
                modality=event.modality.value,
                site_id=site_id,
                slot_id=slot_id,
                trace=trace,
            )
            segments = [
                _pid(event.nhs_number),
                _pv1(provider, site_id, event.referral_id),
                _orc("NW", event.referral_id, event.occurred_at),
                _tq1(
                    event.appointment.start,
                    event.appointment.end,
                    PRIORITY_CODES[event.priority],
                    APPOINTMENT_INSTRUCTION,
                ),
                _obr(
                    event.referral_id,
                    event.examination_code,
                    event.modality.value,
                    event.clinical_question,
                ),
            ]
            if event.protocol:
                segments.append(_nte(f"Protocol: {event.protocol}"))
            control = "NW"
        case ProviderWalkInAuthorised():
            order = Order(
                referral_id=event.referral_id,
                examination_code=event.examination_code,
                modality=event.modality.value,
                site_id=event.site_id,
                slot_id=None,
                trace=trace,
            )
            segments = [
                _pid(event.nhs_number),
                _pv1(provider, event.site_id, event.referral_id),
                _orc("NW", event.referral_id, event.occurred_at),
                _tq1(
                    event.valid_from,
                    event.valid_until,
                    PRIORITY_CODES[Priority.ROUTINE],
                    WALK_IN_INSTRUCTION,
                ),
                _obr(
                    event.referral_id,
                    event.examination_code,
                    event.modality.value,
                    event.clinical_question,
                ),
            ]
            if event.protocol:
                segments.append(_nte(f"Protocol: {event.protocol}"))
            control = "NW"
        case ProviderOrderRebooked():
            if known is None:
                raise UnknownOrder("a rebooking of an order this gateway never sent")
            site_id, slot_id = _slot(event.appointment)
            order = Order(
                referral_id=known.referral_id,
                examination_code=known.examination_code,
                modality=known.modality,
                site_id=site_id,
                slot_id=slot_id,
                trace=trace or known.trace,
            )
            segments = [
                _pv1(provider, site_id, event.referral_id),
                _orc("XO", event.referral_id, event.occurred_at),
                _tq1(event.appointment.start, event.appointment.end, "", APPOINTMENT_INSTRUCTION),
                _obr(event.referral_id, known.examination_code, known.modality),
            ]
            control = "XO"
        case ProviderOrderCancelled():
            if known is None:
                raise UnknownOrder("a cancellation of an order this gateway never sent")
            order = Order(
                referral_id=known.referral_id,
                examination_code=known.examination_code,
                modality=known.modality,
                site_id=known.site_id,
                slot_id=known.slot_id,
                cancelled=True,
                trace=trace or known.trace,
            )
            segments = [
                _orc("CA", event.referral_id, event.occurred_at, event.reason),
                _obr(event.referral_id, known.examination_code, known.modality),
            ]
            control = "CA"
        case _:
            raise TypeError(f"{type(event).__name__} is not a provider order")
    text = v2.message([_msh(provider, event.occurred_at, control_id), *segments])
    return OutboundMessage(text=text, control_id=control_id, order=order, control=control)
