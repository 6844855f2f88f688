"""The request service's rules: duplicate imaging, what each state allows, who may read."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pathway_schemas.events import ReferralDetails
from pathway_schemas.values import GuidanceAdvice, GuidanceOutcome
from services.common.auth import Principal, Role
from services.common.errors import Rejected
from services.request.service import (
    EarlierReferral,
    check_amendable,
    check_answerable,
    check_cancellable,
    duplicates_of,
    may_act,
    may_read,
    registry_refusal,
    request_fingerprint,
    warnings,
)
from services.request.timeline import ReferralState

NOW = datetime(2026, 10, 25, 12, 0, tzinfo=UTC)  # the day the clocks go back
S = ReferralState


def earlier(
    rid: str, *, open_: bool = False, examined_days_ago: float | None = None
) -> EarlierReferral:
    examined = None if examined_days_ago is None else NOW - timedelta(days=examined_days_ago)
    return EarlierReferral(referral_id=rid, open=open_, examined_at=examined)


def test_an_open_referral_is_a_duplicate_whatever_its_age() -> None:
    assert duplicates_of(
        [earlier("ref_b", open_=True), earlier("ref_a", open_=True)], now=NOW, window_days=28
    ) == (
        "ref_a",
        "ref_b",
    )


@pytest.mark.parametrize(
    ("days_ago", "flagged"), [(0, True), (27.9, True), (28, True), (28.05, False), (400, False)]
)
def test_an_examined_referral_is_a_duplicate_within_the_window(
    days_ago: float, flagged: bool
) -> None:
    found = duplicates_of([earlier("ref_a", examined_days_ago=days_ago)], now=NOW, window_days=28)
    assert found == (("ref_a",) if flagged else ())


def test_the_window_counts_london_calendar_days_across_the_clock_change() -> None:
    # 28 days before 12:00 GMT on 25 October is 12:00 BST (11:00 UTC) on 27 September.
    just_inside = EarlierReferral(
        "ref_a", open=False, examined_at=datetime(2026, 9, 27, 11, 30, tzinfo=UTC)
    )
    just_outside = EarlierReferral(
        "ref_b", open=False, examined_at=datetime(2026, 9, 27, 10, 59, tzinfo=UTC)
    )
    assert duplicates_of([just_inside, just_outside], now=NOW, window_days=28) == ("ref_a",)
    spring = datetime(2026, 4, 20, 12, 0, tzinfo=UTC)  # 13:00 BST; 28 days before is 13:00 GMT
    before_change = EarlierReferral(
        "ref_c", open=False, examined_at=datetime(2026, 3, 23, 12, 30, tzinfo=UTC)
    )
    assert duplicates_of([before_change], now=spring, window_days=28) == ()


def test_closed_unexamined_referrals_and_the_referral_itself_are_not_duplicates() -> None:
    cancelled = earlier("ref_a")
    itself = earlier("ref_self", open_=True)
    assert duplicates_of([cancelled, itself], now=NOW, window_days=28, exclude="ref_self") == ()


@given(
    window=st.integers(min_value=0, max_value=3650), days_ago=st.floats(min_value=0, max_value=4000)
)
def test_a_wider_window_never_flags_fewer(window: int, days_ago: float) -> None:
    one = [earlier("ref_a", examined_days_ago=days_ago)]
    assert set(duplicates_of(one, now=NOW, window_days=window)) <= set(
        duplicates_of(one, now=NOW, window_days=window + 1)
    )


@pytest.mark.parametrize("state", list(ReferralState))
def test_cancellation_is_allowed_until_the_patient_arrives(state: ReferralState) -> None:
    refused = state in {
        S.CANCELLED,
        S.ARRIVED,
        S.EXAMINED,
        S.REPORTED_PRELIMINARY,
        S.REPORTED,
        S.DELIVERED,
        S.ACKNOWLEDGED,
    }
    if refused:
        with pytest.raises(Rejected) as raised:
            check_cancellable(state)
        assert (
            "already cancelled" if state is S.CANCELLED else "examination"
        ) in raised.value.message
    else:
        check_cancellable(state)


def test_only_the_open_query_can_be_answered() -> None:
    check_answerable(S.QUERIED, "q1", "q1")
    with pytest.raises(Rejected) as wrong:
        check_answerable(S.QUERIED, "q1", "q2")
    assert [e.field for e in wrong.value.errors] == ["query_id"]
    with pytest.raises(Rejected, match="no open vetting query"):
        check_answerable(S.AWAITING_VETTING, None, "q1")


@pytest.mark.parametrize("state", list(ReferralState))
def test_only_a_returned_referral_can_be_amended(state: ReferralState) -> None:
    if state is S.RETURNED:
        check_amendable(state)
    else:
        with pytest.raises(Rejected, match="only a referral returned by vetting"):
            check_amendable(state)


@pytest.mark.parametrize(
    ("principal", "readable", "actionable"),
    [
        (Principal(name="a", role=Role.PRACTICE, organisation="A81001"), True, True),
        (Principal(name="b", role=Role.PRACTICE, organisation="B82002"), False, False),
        (Principal(name="v", role=Role.VETTING_CLINICIAN), True, False),
        (Principal(name="r", role=Role.REPORTER), True, False),
        (Principal(name="c", role=Role.BOOKING_CLERK), True, False),
        (Principal(name="o", role=Role.OPERATOR), True, False),
        (Principal(name="p", role=Role.PROVIDER, organisation="RXA01"), True, False),
        (Principal(name="q", role=Role.PROVIDER, organisation="NWX02"), False, False),
        (Principal(name="x", role=Role.PROVIDER), False, False),
    ],
)
def test_who_may_read_and_act_on_a_referral(
    principal: Principal, readable: bool, actionable: bool
) -> None:
    assert may_read(principal, "A81001", ["RXA01"]) is readable
    assert may_act(principal, "A81001") is actionable


def test_the_referrer_is_warned_of_advice_against_and_of_duplicates() -> None:
    indicated = GuidanceAdvice(outcome=GuidanceOutcome.INDICATED, rule_id="r", message="fine")
    assert warnings(indicated, [], 28) == []
    against = GuidanceAdvice(
        outcome=GuidanceOutcome.NOT_INDICATED, rule_id="r", message="usually unhelpful"
    )
    said = warnings(against, ["ref_1"], 28)
    assert said[0] == "Guidance (not_indicated): usually unhelpful"
    assert "ref_1" in said[1]
    assert "28 days" in said[1]


def test_refusals_carry_a_closed_cause_for_metrics() -> None:
    from pathway_schemas.values import FieldError

    assert (
        registry_refusal([FieldError(field="practice_ods", message="m")]).cause
        == "unknown_practice"
    )
    assert (
        registry_refusal([FieldError(field="referrer_id", message="m")]).cause == "unknown_referrer"
    )


def test_the_fingerprint_follows_the_content() -> None:
    one = ReferralDetails(
        nhs_number="9434765919",
        practice_ods="A81001",
        referrer_id="G1234567",
        examination_code="XCHES",
        clinical_question="Cough",
        priority="routine",
    )
    assert request_fingerprint(one) == request_fingerprint(one.model_copy())
    assert request_fingerprint(one) != request_fingerprint(
        ReferralDetails.model_validate({**one.model_dump(), "priority": "urgent"})
    )
