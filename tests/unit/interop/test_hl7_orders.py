"""Provider orders go to the RIS as ORM^O01 messages that read back to the same order."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pathway_cli.hl7 import v2
from pathway_cli.hl7.orders import UnknownOrder, control_id_of, order_message
from pathway_schemas.events import (
    Appointment,
    ProviderOrderBooked,
    ProviderOrderCancelled,
    ProviderOrderRebooked,
    ProviderWalkInAuthorised,
)
from tests.unit.interop import samples
from tests.unit.interop.samples import MONDAY_MORNING, NHS_NUMBER, PROVIDER, REFERRAL_ID

EVENT_ID = "0b6f7a52-6f0e-4cf3-9a59-2f1c3c9d8e01"
APPOINTMENT = Appointment(
    provider_ods=PROVIDER,
    site_id="RIV-MAIN",
    slot_id="RIV-MAIN:XR:2026-03-04T10:00",
    start=MONDAY_MORNING + timedelta(days=2, hours=1),
    end=MONDAY_MORNING + timedelta(days=2, hours=1, minutes=10),
)


def booked(question: str = "Cough for six weeks in a smoker") -> ProviderOrderBooked:
    return ProviderOrderBooked(
        referral_id=REFERRAL_ID,
        occurred_at=MONDAY_MORNING,
        nhs_number=NHS_NUMBER,
        examination_code="XCHES",
        modality="XR",
        protocol="PA erect",
        priority="urgent",
        clinical_question=question,
        appointment=APPOINTMENT,
    )


def test_a_booked_order_is_a_new_order_with_patient_site_slot_and_examination() -> None:
    out = order_message(booked(), provider=PROVIDER, event_id=EVENT_ID, known=None)
    message = v2.parse(out.text)
    assert message.message_type == ("ORM", "O01")
    assert message.control_id == control_id_of(EVENT_ID) == out.control_id
    assert message.msh.value(6) == PROVIDER
    pid, pv1, orc, tq1, obr = (message.first(n) for n in ("PID", "PV1", "ORC", "TQ1", "OBR"))
    assert pid is not None
    assert pv1 is not None
    assert orc is not None
    assert tq1 is not None
    assert obr is not None
    assert (pid.value(3, 1, 1), pid.value(3, 1, 4), pid.value(3, 1, 5)) == (NHS_NUMBER, "NHS", "NH")
    assert (pv1.value(3, 1, 1), pv1.value(3, 1, 4), pv1.value(19)) == (
        "RIV-MAIN",
        PROVIDER,
        REFERRAL_ID,
    )
    assert (orc.value(1), orc.value(2, 1, 1), obr.value(2, 1, 1)) == (
        "NW",
        REFERRAL_ID,
        REFERRAL_ID,
    )
    assert v2.parse_ts(tq1.value(7), "TQ1-7") == APPOINTMENT.start
    assert v2.parse_ts(tq1.value(8), "TQ1-8") == APPOINTMENT.end
    assert (tq1.value(9), tq1.value(11)) == ("A", "appointment")
    assert (obr.value(4, 1, 1), obr.value(4, 1, 2), obr.value(24)) == ("XCHES", "XR Chest", "XR")
    assert obr.value(13) == "Cough for six weeks in a smoker"
    nte = message.first("NTE")
    assert nte is not None
    assert nte.value(3) == "Protocol: PA erect"
    assert out.order.slot_id == APPOINTMENT.slot_id
    assert out.order.site_id == "RIV-MAIN"


@given(
    st.text(
        alphabet=st.characters(exclude_categories=("Cs", "Cc"), include_characters="\n"),
        min_size=3,
        max_size=200,
    )
)
def test_any_clinical_question_survives_the_trip_through_hl7_escaping(question: str) -> None:
    out = order_message(booked(question), provider=PROVIDER, event_id=EVENT_ID, known=None)
    obr = v2.parse(out.text).first("OBR")
    assert obr is not None
    assert obr.value(13) == question.strip()
    assert [s.name for s in v2.parse(out.text).segments()] == [
        "MSH",
        "PID",
        "PV1",
        "ORC",
        "TQ1",
        "OBR",
        "NTE",
    ]


def test_a_walk_in_is_a_new_order_whose_timing_is_the_validity_window() -> None:
    event = ProviderWalkInAuthorised(
        referral_id=REFERRAL_ID,
        occurred_at=MONDAY_MORNING,
        nhs_number=NHS_NUMBER,
        examination_code="XCHES",
        modality="XR",
        protocol="",
        clinical_question="Cough",
        site_id="RIV-MAIN",
        valid_from=MONDAY_MORNING,
        valid_until=MONDAY_MORNING + timedelta(days=14),
    )
    out = order_message(event, provider=PROVIDER, event_id=EVENT_ID, known=None)
    message = v2.parse(out.text)
    tq1 = message.first("TQ1")
    assert tq1 is not None
    assert tq1.value(11) == "walk-in"
    assert v2.parse_ts(tq1.value(8), "TQ1-8") == MONDAY_MORNING + timedelta(days=14)
    assert message.first("NTE") is None
    assert out.order.walk_in


def test_a_rebooking_changes_the_order_to_the_new_slot_and_site() -> None:
    moved = APPOINTMENT.model_copy(
        update={"site_id": "RIV-EAST", "slot_id": "RIV-EAST:XR:2026-03-05T09:00"}
    )
    event = ProviderOrderRebooked(
        referral_id=REFERRAL_ID, occurred_at=MONDAY_MORNING, appointment=moved, previous=APPOINTMENT
    )
    out = order_message(event, provider=PROVIDER, event_id=EVENT_ID, known=samples.BOOKED_ORDER)
    message = v2.parse(out.text)
    orc, pv1, obr = message.first("ORC"), message.first("PV1"), message.first("OBR")
    assert orc is not None
    assert pv1 is not None
    assert obr is not None
    assert orc.value(1) == "XO"
    assert pv1.value(3, 1, 1) == "RIV-EAST"
    assert obr.value(4, 1, 1) == "XCHES"
    assert message.first("PID") is None  # no patient data is kept to repeat it
    assert (out.order.site_id, out.order.slot_id) == ("RIV-EAST", moved.slot_id)


def test_a_cancellation_cancels_the_order_with_its_reason() -> None:
    event = ProviderOrderCancelled(
        referral_id=REFERRAL_ID, occurred_at=MONDAY_MORNING, reason="referral_cancelled"
    )
    out = order_message(event, provider=PROVIDER, event_id=EVENT_ID, known=samples.BOOKED_ORDER)
    orc = v2.parse(out.text).first("ORC")
    assert orc is not None
    assert (orc.value(1), orc.value(16, 1, 2)) == ("CA", "referral_cancelled")
    assert out.order.cancelled


@pytest.mark.parametrize("kind", ["rebooked", "cancelled"])
def test_a_change_to_an_order_never_sent_is_refused(kind: str) -> None:
    event = (
        ProviderOrderRebooked(
            referral_id=REFERRAL_ID,
            occurred_at=MONDAY_MORNING,
            appointment=APPOINTMENT,
            previous=APPOINTMENT,
        )
        if kind == "rebooked"
        else ProviderOrderCancelled(referral_id=REFERRAL_ID, occurred_at=MONDAY_MORNING, reason="x")
    )
    with pytest.raises(UnknownOrder):
        order_message(event, provider=PROVIDER, event_id=EVENT_ID, known=None)


def test_the_control_id_is_stable_per_event_and_fits_hl7_v25() -> None:
    assert control_id_of(EVENT_ID) == control_id_of(EVENT_ID)
    assert control_id_of(EVENT_ID) != control_id_of("0b6f7a52-6f0e-4cf3-9a59-2f1c3c9d8e02")
    assert len(control_id_of("not-a-uuid")) == 20
