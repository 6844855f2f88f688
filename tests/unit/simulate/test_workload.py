"""The simulated month's workload: seeded, realistic in its mix, and in people's hours."""

from __future__ import annotations

import dataclasses
from collections import Counter
from datetime import UTC, date, datetime, time, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pathway_cli.simulate import (
    PRACTICE_HOURS,
    VETTING_HOURS,
    PlannedReferral,
    WorkloadSettings,
    on_grid,
    plan_workload,
    practices_from_config,
    profile,
    vetting_decision,
    within_hours,
)
from pathway_cli.system import REPO
from pathway_schemas.catalogue import CATALOGUE
from pathway_schemas.events import ReferralDetails
from services.common.clock import LONDON, WorkingCalendar

# Across the change to summer time (29 March 2026) and Easter (3 and 6 April 2026).
SPRING = WorkloadSettings(seed=7, days=42, referrals_per_day=40, start=date(2026, 3, 2))


@pytest.fixture(scope="module")
def spring() -> list[PlannedReferral]:
    return plan_workload(SPRING)


def test_the_same_seed_plans_the_same_month_and_another_seed_another() -> None:
    settings = WorkloadSettings(seed=3, days=10)
    assert plan_workload(settings) == plan_workload(settings)
    assert plan_workload(settings) != plan_workload(WorkloadSettings(seed=4, days=10))


def test_case_mix_is_mostly_plain_xray_then_ultrasound_then_the_rest(
    spring: list[PlannedReferral],
) -> None:
    shares = {m: n / len(spring) for m, n in profile(spring).by_modality.items()}
    assert 0.50 <= shares["XR"] <= 0.66
    assert 0.18 <= shares["US"] <= 0.30
    assert shares["US"] > max(shares.get(m, 0.0) for m in ("CT", "MR", "DEXA", "RF", "NM"))
    assert all(shares.get(m, 0.0) > 0 for m in ("CT", "MR", "DEXA"))
    for planned in spring:
        assert CATALOGUE[planned.examination_code].modality == planned.modality


def test_about_one_referral_in_ten_is_urgent_and_dexa_never(spring: list[PlannedReferral]) -> None:
    urgent = profile(spring).urgent / len(spring)
    assert 0.06 <= urgent <= 0.13
    assert not any(p.urgent for p in spring if p.modality == "DEXA")


def test_volume_follows_the_rate_on_working_days_only(spring: list[PlannedReferral]) -> None:
    calendar = WorkingCalendar("ENG")
    days = Counter(p.submit_at.astimezone(LONDON).date() for p in spring)
    working = [
        SPRING.start + timedelta(days=n)
        for n in range(SPRING.days)
        if calendar.is_working_day(SPRING.start + timedelta(days=n))
    ]
    assert set(days) <= set(working)
    assert date(2026, 4, 3) not in days  # Good Friday
    assert date(2026, 4, 6) not in days  # Easter Monday
    mean = len(spring) / len(working)
    assert 34 <= mean <= 46


def test_referrals_are_sent_in_practice_hours_in_order(spring: list[PlannedReferral]) -> None:
    for planned in spring:
        local = planned.submit_at.astimezone(LONDON).time()
        assert PRACTICE_HOURS[0] <= local < PRACTICE_HOURS[1]
    assert [p.submit_at for p in spring] == sorted(p.submit_at for p in spring)
    assert [p.index for p in spring] == list(range(len(spring)))


def test_every_referral_passes_the_contract_with_a_synthetic_patient(
    spring: list[PlannedReferral],
) -> None:
    practices = practices_from_config(REPO / "config" / "practices.json")
    for planned in spring:
        assert planned.nhs_number.startswith("999")  # the range never issued to a person
        assert planned.referrer in practices[planned.practice][1]
        ReferralDetails(
            nhs_number=planned.nhs_number,
            practice_ods=planned.practice,
            referrer_id=planned.referrer,
            examination_code=planned.examination_code,
            clinical_question=planned.question,
            priority=planned.priority,
        )


def test_duplicates_repeat_an_earlier_patient_examination_and_practice(
    spring: list[PlannedReferral],
) -> None:
    duplicates = [p for p in spring if p.duplicate_of is not None]
    assert 0.01 <= len(duplicates) / len(spring) <= 0.04
    for planned in duplicates:
        assert planned.duplicate_of is not None
        original = spring[planned.duplicate_of]
        assert original.index < planned.index
        assert (original.nhs_number, original.examination_code, original.practice) == (
            planned.nhs_number,
            planned.examination_code,
            planned.practice,
        )
        assert planned.submit_at - original.submit_at <= timedelta(days=10)


def test_the_month_has_every_kind_of_event_the_audit_counts(spring: list[PlannedReferral]) -> None:
    figures = profile(spring)
    assert figures.planned_dna > 0
    assert figures.planned_deferrals > 0
    assert figures.planned_cancellations > 0
    assert {p.finding for p in spring} == {
        "routine",
        "critical",
        "urgent",
        "unexpected_significant",
    }
    assert any(p.mdt for p in spring)
    assert any(p.late_acknowledgement for p in spring)
    assert any(not p.walks_in for p in spring)
    assert not any(p.patient == "defer" and p.urgent for p in spring)  # urgent never defers
    assert set(figures.per_practice) == {"A81001", "B82002"}


def test_practices_come_from_the_registry_without_inactive_ones() -> None:
    practices = practices_from_config(REPO / "config" / "practices.json")
    assert set(practices) == {"A81001", "B82002"}  # C83003 is inactive
    assert sum(share for share, _ in practices.values()) == pytest.approx(1.0)


@given(
    draw=st.floats(min_value=0, max_value=1, exclude_max=True),
    guidance=st.sampled_from(
        ["indicated", "no_rule", "not_indicated", "specialist_only", "more_information_needed"]
    ),
    duplicate=st.booleans(),
    round_=st.integers(min_value=1, max_value=5),
)
def test_a_second_look_at_vetting_always_accepts(
    draw: float, guidance: str, duplicate: bool, round_: int
) -> None:
    planned = plan_workload(WorkloadSettings(days=3))[0]
    with_draw = dataclasses.replace(planned, vet_draw=draw)
    assert vetting_decision(with_draw, guidance, duplicate, round_).outcome == "accept"


def test_the_clinician_mostly_follows_the_guidance_and_the_duplicate_flag(
    spring: list[PlannedReferral],
) -> None:
    def outcomes(guidance: str, duplicate: bool = False) -> Counter[tuple[str, str | None]]:
        return Counter(
            (d.outcome, d.reason)
            for d in (vetting_decision(p, guidance, duplicate, 0) for p in spring)
        )

    assert outcomes("indicated")[("accept", None)] / len(spring) > 0.9
    assert outcomes("not_indicated")[("return", "not_indicated")] / len(spring) > 0.7
    assert outcomes("indicated", duplicate=True)[("return", "duplicate")] / len(spring) > 0.75
    asked = outcomes("more_information_needed")
    assert asked[("query", None)] > asked[("return", "insufficient_information")] > 0


@pytest.mark.parametrize(
    ("moment", "hours", "expected"),
    [
        # Inside the hours: the moment itself.
        (
            datetime(2026, 3, 10, 10, 0, tzinfo=UTC),
            VETTING_HOURS,
            datetime(2026, 3, 10, 10, 0, tzinfo=UTC),
        ),
        # Friday evening: Monday 08:30 London.
        (
            datetime(2026, 3, 13, 19, 0, tzinfo=UTC),
            VETTING_HOURS,
            datetime(2026, 3, 16, 8, 30, tzinfo=UTC),
        ),
        # Saturday before the clocks change: Monday 08:30 BST is 07:30 UTC.
        (
            datetime(2026, 3, 28, 20, 0, tzinfo=UTC),
            VETTING_HOURS,
            datetime(2026, 3, 30, 7, 30, tzinfo=UTC),
        ),
        # Maundy Thursday evening: past Good Friday and Easter Monday to Tuesday.
        (
            datetime(2026, 4, 2, 18, 0, tzinfo=UTC),
            PRACTICE_HOURS,
            datetime(2026, 4, 7, 7, 0, tzinfo=UTC),
        ),
    ],
)
def test_people_act_in_their_hours_on_working_days(
    moment: datetime, hours: tuple[time, time], expected: datetime
) -> None:
    assert within_hours(moment, hours, WorkingCalendar("ENG")) == expected


def test_patients_act_at_weekends_too() -> None:
    saturday_night = datetime(2026, 3, 14, 21, 0, tzinfo=UTC)
    assert within_hours(saturday_night, (time(8), time(20))) == datetime(
        2026, 3, 15, 8, 0, tzinfo=UTC
    )


def test_the_clock_moves_on_its_grid() -> None:
    start = datetime(2026, 3, 9, 0, 0, tzinfo=UTC)
    step = timedelta(minutes=30)
    assert on_grid(start, start, step) == start
    assert on_grid(start + timedelta(minutes=1), start, step) == start + step
    assert on_grid(start + step, start, step) == start + step
    assert on_grid(start - step, start, step) == start
