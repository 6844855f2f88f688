"""Value types: NHS number, ODS codes, examination codes, referral ids."""

from __future__ import annotations

import nhs_number
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from pathway_schemas.catalogue import CATALOGUE, examination
from pathway_schemas.values import ExaminationCode, NhsNumber, OdsCode, ReferralId, new_referral_id


class Holder(BaseModel):
    nhs: NhsNumber


class Org(BaseModel):
    ods: OdsCode


class Exam(BaseModel):
    code: ExaminationCode


class Ref(BaseModel):
    id: ReferralId


def check_digit(nine: str) -> int | None:
    total = sum(int(d) * w for d, w in zip(nine, range(10, 1, -1), strict=True))
    digit = 11 - total % 11
    return 0 if digit == 11 else (None if digit == 10 else digit)


nine_digits = st.text(alphabet="0123456789", min_size=9, max_size=9)


@given(nine_digits)
def test_an_nhs_number_is_accepted_exactly_when_its_modulus_11_check_digit_is_right(
    nine: str,
) -> None:
    expected = check_digit(nine)
    for last in range(10):
        candidate = nine + str(last)
        if expected is not None and last == expected:
            # Right check digit: accepted, unless outside the allocated ranges (CHI dates).
            if nhs_number.is_valid(candidate):
                assert Holder(nhs=candidate).nhs == candidate
            else:
                with pytest.raises(ValidationError, match="range"):
                    Holder(nhs=candidate)
        else:
            with pytest.raises(ValidationError, match="Modulus 11"):
                Holder(nhs=candidate)


@given(st.sampled_from(nhs_number.generate(quantity=50)), st.sampled_from([" ", "-", "  "]))
def test_spaces_and_dashes_between_groups_are_normalised(number: str, sep: str) -> None:
    written = f"{number[:3]}{sep}{number[3:6]}{sep}{number[6:]}"
    assert Holder(nhs=written).nhs == number


@pytest.mark.parametrize("bad", ["", "123", "94347659190", "94347659AB", "9434765918"])
def test_malformed_nhs_numbers_are_rejected_with_a_message_that_does_not_echo_them(
    bad: str,
) -> None:
    with pytest.raises(ValidationError) as caught:
        Holder(nhs=bad)
    for error in caught.value.errors(include_input=False):
        assert bad not in error["msg"] or bad == ""


def test_ods_codes_are_normalised_and_checked() -> None:
    assert Org(ods=" a81001 ").ods == "A81001"
    with pytest.raises(ValidationError):
        Org(ods="A8-1001")


def test_examination_codes_come_from_the_catalogue() -> None:
    assert Exam(code="xches").code == "XCHES"
    with pytest.raises(ValidationError, match="not in the examination catalogue"):
        Exam(code="NOPE1")
    assert examination("XCHES").ionising
    assert not examination("UABDO").ionising
    assert {e.modality for e in CATALOGUE.values()} == {"XR", "US", "CT", "MR", "DEXA", "RF", "NM"}


def test_referral_ids_are_random_and_well_formed() -> None:
    ids = {new_referral_id() for _ in range(1000)}
    assert len(ids) == 1000
    for referral_id in list(ids)[:10]:
        assert Ref(id=referral_id).id == referral_id
    with pytest.raises(ValidationError):
        Ref(id="9434765919")
