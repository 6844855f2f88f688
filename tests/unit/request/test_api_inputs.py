"""The HTTP API's input models and paging cursors: strict, bounded, and never a 5xx."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from services.common.app import _field
from services.common.errors import Invalid
from services.request.api import (
    AmendReferral,
    CancelReferral,
    SubmitReferral,
    decode_cursor,
    encode_cursor,
)

GOOD: dict[str, Any] = {
    "nhs_number": "9434765919",
    "referrer_id": "G1234567",
    "examination_code": "XCHES",
    "clinical_question": "Cough for six weeks",
    "priority": "routine",
}


def bad_fields(**changes: Any) -> set[str]:
    with pytest.raises(ValidationError) as raised:
        SubmitReferral.model_validate({**GOOD, **changes})
    return {".".join(str(p) for p in e["loc"]) for e in raised.value.errors()}


@pytest.mark.parametrize("written", ["9434765919", "943 476 5919", "943-476-5919"])
def test_nhs_numbers_are_accepted_in_the_usual_groupings_and_stored_as_ten_digits(
    written: str,
) -> None:
    assert SubmitReferral.model_validate({**GOOD, "nhs_number": written}).nhs_number == "9434765919"


@pytest.mark.parametrize(
    "written", ["9434765918", "943476591", "94347659190", "٩٤٣٤٧٦٥٩١٩", "9434 765919 ", 9434765919]
)
def test_a_wrong_or_oddly_written_nhs_number_is_refused(written: Any) -> None:
    assert bad_fields(nhs_number=written) == {"nhs_number"}


def test_identifiers_are_not_normalised_and_unknown_fields_are_refused() -> None:
    assert bad_fields(examination_code="xches") == {"examination_code"}
    assert bad_fields(practice_ods="a81001") == {"practice_ods"}
    assert bad_fields(referrer_id=" G1234567") == {"referrer_id"}
    assert bad_fields(urgent=True) == {"urgent"}


def test_a_clinical_question_needs_words_and_no_control_characters() -> None:
    assert bad_fields(clinical_question="   ") == {"clinical_question"}
    assert bad_fields(clinical_question="...") == {"clinical_question"}
    assert bad_fields(clinical_question="cough\x00") == {"clinical_question"}
    assert bad_fields(clinical_question="x" * 4001) == {"clinical_question"}
    assert SubmitReferral.model_validate(
        {**GOOD, "clinical_question": "Cough\nand fever\t"}
    ).clinical_question


def test_cancel_and_amend_inputs_are_bounded() -> None:
    with pytest.raises(ValidationError):
        CancelReferral.model_validate({"reason": "other", "cancelled_by": "G1", "note": "n" * 2001})
    assert AmendReferral.model_validate({"amended_by": "G1"}).model_dump(exclude_none=True) == {
        "amended_by": "G1",
        "note": "",
    }


@given(
    at=st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2199, 12, 31), timezones=st.just(UTC)
    )
)
def test_a_cursor_round_trips(at: datetime) -> None:
    rid = "ref_" + "c" * 32
    assert decode_cursor(encode_cursor(at, rid)) == (at, rid)


@given(
    st.text(
        alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-",
        min_size=1,
        max_size=200,
    )
)
def test_any_other_cursor_is_a_422_naming_the_cursor(cursor: str) -> None:
    # Random text is almost never a cursor; when it is not, the only error is Invalid.
    with pytest.raises(Invalid) as raised:
        decode_cursor(cursor)
    assert [e.field for e in raised.value.errors] == ["query:cursor"]


def test_a_cursor_out_of_range_is_refused() -> None:
    with pytest.raises(Invalid):
        decode_cursor(encode_cursor(datetime(1990, 1, 1, tzinfo=UTC), "ref_" + "c" * 32))


@pytest.mark.parametrize(
    ("location", "field"),
    [
        (("body", "nhs_number"), "nhs_number"),
        (("body",), "(body)"),
        (("header", "Idempotency-Key"), "header:Idempotency-Key"),
        (("query", "limit"), "query:limit"),
        ((), "(request)"),
    ],
)
def test_validation_errors_name_the_field_and_where_it_was(
    location: tuple[str, ...], field: str
) -> None:
    assert _field(location) == field
