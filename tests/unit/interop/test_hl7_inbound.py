"""Messages from a RIS become the provider's inbound events, or a clear AE / AR."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from pathway_cli.hl7 import v2
from pathway_cli.hl7.inbound import Accepted, Refused, interpret
from pathway_cli.hl7.state import Order
from pathway_schemas import topics
from pathway_schemas.envelope import from_record, to_record
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
from tests.unit.interop import samples
from tests.unit.interop.samples import ACCESSION, PROVIDER, REFERRAL_ID, STUDY_UID


def read(text: str, order: Order | None = samples.BOOKED_ORDER) -> Accepted | Refused:
    known = {order.referral_id: order} if order is not None else {}
    return interpret(v2.parse(text), provider=PROVIDER, orders=known.get)


def accepted(text: str, order: Order | None = samples.BOOKED_ORDER) -> Accepted:
    meaning = read(text, order)
    assert isinstance(meaning, Accepted), meaning
    return meaning


def refused(text: str, order: Order | None = samples.BOOKED_ORDER) -> Refused:
    meaning = read(text, order)
    assert isinstance(meaning, Refused), meaning
    return meaning


def round_trip(meaning: Accepted) -> object:
    """What the pathway reads from the provider's topic: the same event."""
    (event,) = meaning.events
    record = to_record(event, topic=topics.provider_inbound(PROVIDER), source="/tests")
    received = from_record(record.headers, record.value, topic=record.topic, key=record.key)
    assert received.event == event
    return received.event


def test_adt_a10_is_the_patient_arriving_at_the_site_of_the_visit() -> None:
    event = round_trip(accepted(samples.adt_a10()))
    assert isinstance(event, ProviderPatientArrived)
    assert event.referral_id == REFERRAL_ID
    assert event.site_id == "RIV-MAIN"
    # No offset in the message: London wall time, GMT in early March.
    assert event.occurred_at == datetime(2026, 3, 2, 11, 10, tzinfo=UTC)


def test_local_times_without_offset_are_read_as_london_time_in_summer() -> None:
    message = samples.adt_a10(at="20260702111000")
    event = accepted(message).events[0]
    assert event.occurred_at == datetime(2026, 7, 2, 10, 10, tzinfo=UTC)


def test_times_with_an_offset_are_taken_as_given() -> None:
    event = accepted(samples.adt_a10(at="20260302111000+0100")).events[0]
    assert event.occurred_at == datetime(2026, 3, 2, 10, 10, tzinfo=UTC)


def test_order_status_in_process_is_an_arrival() -> None:
    event = round_trip(accepted(samples.orm_status("IP")))
    assert isinstance(event, ProviderPatientArrived)
    assert event.occurred_at == datetime(2026, 3, 2, 11, 25, tzinfo=UTC)


def test_order_status_completed_carries_the_study_accession_and_radiographer() -> None:
    event = round_trip(accepted(samples.orm_status("CM")))
    assert isinstance(event, ProviderExaminationCompleted)
    assert event.study.study_instance_uid == STUDY_UID
    assert event.study.accession_number == ACCESSION
    assert event.performed_by == "RG12345"
    assert event.site_id == "RIV-MAIN"
    assert event.occurred_at == datetime(2026, 3, 2, 11, 25, tzinfo=UTC)


def test_cancelled_with_dna_reason_is_a_did_not_attend_for_the_booked_slot() -> None:
    event = round_trip(accepted(samples.orm_status("CA", reason="DNA^Did not attend")))
    assert isinstance(event, ProviderPatientDidNotAttend)
    assert event.slot_id == samples.BOOKED_ORDER.slot_id


def test_a_walk_in_cannot_miss_an_appointment() -> None:
    refusal = refused(samples.orm_status("CA", reason="DNA"), samples.WALK_IN_ORDER)
    assert refusal.code == "AE"
    assert refusal.problems[0].location == "ORC-16"


@pytest.mark.parametrize("status", ["DC", "CA"])
def test_discontinued_or_cancelled_by_the_ris_is_an_abandoned_examination(status: str) -> None:
    event = round_trip(accepted(samples.orm_status(status, reason="PAIN^Patient in too much pain")))
    assert isinstance(event, ProviderExaminationAbandoned)
    assert event.reason == "Patient in too much pain"


def test_scheduled_confirmation_is_acknowledged_without_an_event() -> None:
    meaning = accepted(samples.orm_status("SC"))
    assert meaning.events == ()


@pytest.mark.parametrize(
    ("status", "expected"), [("P", ReportStatus.PRELIMINARY), ("F", ReportStatus.FINAL)]
)
def test_oru_is_a_report_with_text_conclusion_reporter_and_key_images(
    status: str, expected: ReportStatus
) -> None:
    event = round_trip(accepted(samples.oru_r01(status)))
    assert isinstance(event, ProviderReportIssued)
    assert event.status is expected
    assert event.report_id == f"{ACCESSION}.{status}"
    assert event.text == (
        "The heart is not enlarged.\nThe lungs are clear & the pleural spaces are normal."
    )
    assert event.conclusion == "Normal chest radiograph."
    assert event.finding_flag is FindingFlag.ROUTINE
    assert event.reported_by == "GMC-7654321"
    assert [(i.study_instance_uid, i.accession_number) for i in event.key_images] == [
        (STUDY_UID, ACCESSION)
    ]
    assert event.occurred_at == datetime(2026, 3, 2, 14, 15, tzinfo=UTC)


@pytest.mark.parametrize(
    ("abnormal", "flag", "expected"),
    [
        ("AA", None, FindingFlag.CRITICAL),
        ("A", None, FindingFlag.UNEXPECTED_SIGNIFICANT),
        ("N", "urgent", FindingFlag.URGENT),
        ("AA", "routine", FindingFlag.ROUTINE),
    ],
)
def test_finding_flag_comes_from_the_flag_observation_else_the_impressions_abnormal_flag(
    abnormal: str, flag: str | None, expected: FindingFlag
) -> None:
    event = accepted(samples.oru_r01(abnormal=abnormal, flag=flag)).events[0]
    assert isinstance(event, ProviderReportIssued)
    assert event.finding_flag is expected


def test_a_corrected_result_is_an_addendum_to_the_final_report() -> None:
    event = round_trip(accepted(samples.oru_r01("C", addendum_id="ADD1", abnormal="A")))
    assert isinstance(event, ProviderReportAddended)
    assert event.report_id == f"{ACCESSION}.F"
    assert event.addendum_id == "ADD1"
    assert "Normal chest radiograph." in event.text
    assert event.finding_flag is FindingFlag.UNEXPECTED_SIGNIFICANT


def test_an_addendum_without_its_own_id_takes_the_message_control_id() -> None:
    event = accepted(samples.oru_r01("C", control_id="CRIS-777")).events[0]
    assert isinstance(event, ProviderReportAddended)
    assert event.addendum_id == "CRIS-777"


# --------------------------------------------------------------------------- refusals


def test_a_result_for_an_order_never_sent_here_is_an_application_error() -> None:
    refusal = refused(samples.oru_r01(referral_id=samples.OTHER_REFERRAL_ID))
    assert (refusal.code, refusal.reason) == ("AE", "unknown_order")
    assert refusal.problems[0].location == "OBR-2"
    assert refusal.problems[0].code == v2.UNKNOWN_KEY


def test_a_message_for_a_cancelled_order_is_an_application_error() -> None:
    cancelled = Order(**{**samples.BOOKED_ORDER.__dict__, "cancelled": True})
    refusal = refused(samples.adt_a10(), cancelled)
    assert (refusal.code, refusal.reason) == ("AE", "order_cancelled")


def test_a_message_from_another_facility_is_rejected_whatever_it_says() -> None:
    text = samples.adt_a10().replace(f"|CRIS|{PROVIDER}|", "|CRIS|NWX02|", 1)
    refusal = refused(text)
    assert (refusal.code, refusal.reason) == ("AR", "not_for_provider")
    assert refusal.problems[0].location == "MSH-4"


@pytest.mark.parametrize(
    ("message_type", "code"),
    [
        ("ADT^A08^ADT_A01", v2.UNSUPPORTED_EVENT_CODE),
        ("SIU^S12^SIU_S12", v2.UNSUPPORTED_MESSAGE_TYPE),
    ],
)
def test_an_unsupported_message_type_is_rejected(message_type: str, code: str) -> None:
    text = samples.adt_a10().replace("ADT^A10^ADT_A09", message_type, 1)
    refusal = refused(text)
    assert (refusal.code, refusal.reason) == ("AR", "unsupported")
    assert refusal.problems[0].code == code


def test_an_unsupported_version_is_rejected() -> None:
    text = samples.join(samples.msh("ADT^A10", "X1", version="3.0"), "PV1|1")
    assert refused(text).problems[0].location == "MSH-12"


def test_missing_control_id_is_rejected() -> None:
    text = samples.adt_a10().replace("|CRIS000101|", "||", 1)
    refusal = refused(text)
    assert (refusal.code, refusal.problems[0].location) == ("AR", "MSH-10")


@pytest.mark.parametrize(
    ("message", "location"),
    [
        (samples.orm_status("CM", study=False), "ZDS-1"),
        (samples.oru_r01().replace("GMC-7654321&Reporter&Rae", ""), "OBR-32"),
        (samples.oru_r01().replace("|20260302141500|", "|not-a-time|"), "OBR-22"),
        (samples.oru_r01("X"), "OBR-25"),
        (samples.oru_r01(flag="dreadful"), "OBX-5"),
        (samples.oru_r01(abnormal="HH"), "OBX-8"),
        (samples.oru_r01().replace("IMP^Impression", "GDT^More"), "OBX-5"),
        (samples.orm_status("ZZ"), "ORC-5"),
        (samples.orm_status("IP").replace("ORC|SC|", "ORC|NW|"), "ORC-1"),
        (samples.adt_a10().replace(samples.NHS_NUMBER, "9434765918"), "PID-3"),
        (samples.adt_a10(referral_id=""), "PV1-19"),
    ],
)
def test_bad_fields_are_application_errors_naming_the_field(message: str, location: str) -> None:
    refusal = refused(message)
    assert refusal.code == "AE"
    assert refusal.problems[0].location == location
    assert samples.NHS_NUMBER not in refusal.problems[0].text


def test_a_value_the_contract_refuses_names_its_hl7_field() -> None:
    long_site = "X" * 80
    text = samples.adt_a10().replace("RIV-MAIN^XR1", f"{long_site}^XR1")
    refusal = refused(text)
    assert (refusal.code, refusal.reason) == ("AE", "invalid")
    assert refusal.problems[0].location == "PV1-3"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "garbage",
        "PID|1||9434765919",
        "MSH|",
        "MSH|^~\\&",
        "MSH^~\\&|broken separators",
        "MSH|^~\\&|A|B\rZZ",
        "MSH|^~\\&|A|B\r1AB|x",
    ],
)
def test_text_that_is_not_hl7_fails_to_parse_with_a_reason(text: str) -> None:
    with pytest.raises(v2.Hl7Error) as raised:
        v2.parse(text)
    assert raised.value.problem.text
