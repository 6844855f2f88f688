"""Acknowledgement windows and the escalation ladder (local policy) on the working calendar."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pathway_schemas.values import FindingFlag
from services.common.clock import LONDON, WorkingCalendar
from services.notify.config import AlertPolicy, Backoff, Rung, Window
from services.notify.policy import (
    Escalation,
    alert_id,
    delivery_id,
    needs_alert,
    version_id,
    window_end,
)

ENGLAND = WorkingCalendar("ENG")


def london(year: int, month: int, day: int, hour: int, minute: int) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=LONDON).astimezone(UTC)


def test_only_routine_findings_go_without_an_alert() -> None:
    assert [f for f in FindingFlag if not needs_alert(f)] == [FindingFlag.ROUTINE]


def test_hour_windows_are_elapsed_time_across_the_spring_clock_change() -> None:
    # 00:30 GMT on 29 March 2026; the clocks go forward at 01:00.
    start = london(2026, 3, 29, 0, 30)
    end = window_end(Window(hours=1), start, ENGLAND)
    assert end - start == timedelta(hours=1)
    assert end.astimezone(LONDON).hour == 2  # 01:30 UTC, which London calls 02:30 BST
    assert end.astimezone(LONDON).minute == 30


def test_five_working_days_skip_good_friday_and_easter_monday() -> None:
    # Thursday 2 April 2026, 14:00 BST; Friday 3 and Monday 6 April are bank holidays.
    start = london(2026, 4, 2, 14, 0)
    end = window_end(Window(working_days=5), start, ENGLAND)
    assert end.astimezone(LONDON) == datetime(2026, 4, 13, 14, 0, tzinfo=LONDON)


def test_working_day_window_keeps_london_wall_time_across_the_clock_change() -> None:
    # Thursday 26 March 2026, 10:00 GMT; five working days later is Thursday 2 April, BST.
    start = london(2026, 3, 26, 10, 0)
    end = window_end(Window(working_days=5), start, ENGLAND)
    assert end.astimezone(LONDON).replace(tzinfo=None) == datetime(2026, 4, 2, 10, 0)
    assert end == datetime(2026, 4, 2, 9, 0, tzinfo=UTC)


def test_working_day_window_from_a_weekend_counts_from_monday() -> None:
    start = london(2026, 3, 7, 11, 0)  # a Saturday
    end = window_end(Window(working_days=5), start, ENGLAND)
    assert end.astimezone(LONDON).date() == date(2026, 3, 13)  # the Friday


def test_working_day_window_crosses_christmas_and_new_year() -> None:
    # Wednesday 23 December 2026; 25, 28 December (Boxing Day substitute) and 1 January closed.
    start = london(2026, 12, 23, 9, 0)
    end = window_end(Window(working_days=5), start, ENGLAND)
    assert end.astimezone(LONDON).date() == date(2027, 1, 4)


@given(
    start=st.datetimes(
        min_value=datetime(2024, 1, 1), max_value=datetime(2030, 12, 31), timezones=st.just(UTC)
    ),
    days=st.integers(min_value=1, max_value=15),
)
def test_working_day_window_ends_on_a_working_day_after_exactly_that_many(
    start: datetime, days: int
) -> None:
    end = window_end(Window(working_days=days), start, ENGLAND)
    assert end > start
    first, last = start.astimezone(LONDON).date(), end.astimezone(LONDON).date()
    assert ENGLAND.is_working_day(last)
    counted = sum(
        ENGLAND.is_working_day(first + timedelta(days=n)) for n in range(1, (last - first).days + 1)
    )
    assert counted == days


def test_critical_alert_climbs_the_ladder_an_hour_at_a_time_and_stops_at_the_top() -> None:
    raised = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
    levels = Escalation(AlertPolicy()).schedule(FindingFlag.CRITICAL, raised)
    assert [(lv.level, lv.rung.role) for lv in levels] == [
        (0, "requesting_gp"),
        (1, "practice_duty_clinician"),
        (2, "radiology_lead"),
    ]
    assert [lv.acknowledge_by - raised for lv in levels] == [
        timedelta(hours=1),
        timedelta(hours=2),
        timedelta(hours=3),
    ]
    assert [lv.next_escalation_at for lv in levels] == [
        raised + timedelta(hours=1),
        raised + timedelta(hours=2),
        None,
    ]


def test_urgent_alert_waits_a_day_per_rung() -> None:
    raised = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
    first = Escalation(AlertPolicy()).raised(FindingFlag.URGENT, raised)
    assert first.next_escalation_at == raised + timedelta(hours=24)


def test_unexpected_finding_escalates_after_five_working_days_over_easter() -> None:
    raised = london(2026, 4, 2, 14, 0)
    escalation = Escalation(AlertPolicy())
    first = escalation.raised(FindingFlag.UNEXPECTED_SIGNIFICANT, raised)
    assert first.next_escalation_at == london(2026, 4, 13, 14, 0)
    second = escalation.escalated(FindingFlag.UNEXPECTED_SIGNIFICANT, 0, london(2026, 4, 13, 14, 0))
    assert second.acknowledge_by == london(2026, 4, 20, 14, 0)


def test_routine_findings_are_never_on_the_ladder() -> None:
    with pytest.raises(ValueError, match="never alerted"):
        Escalation(AlertPolicy()).raised(FindingFlag.ROUTINE, datetime.now(UTC))


def test_a_one_rung_ladder_alerts_but_never_escalates() -> None:
    policy = AlertPolicy(ladder=(Rung(role="duty_radiologist", at="provider"),))
    level = Escalation(policy).raised(FindingFlag.CRITICAL, datetime(2026, 3, 2, tzinfo=UTC))
    assert level.next_escalation_at is None
    assert level.acknowledge_by == datetime(2026, 3, 2, 1, tzinfo=UTC)


def test_the_ladder_is_configuration() -> None:
    policy = AlertPolicy.model_validate(
        {
            "windows": {
                "critical": {"hours": 0.5},
                "urgent": {"hours": 4},
                "unexpected_significant": {"working_days": 2},
            },
            "ladder": [
                {"role": "on_call_gp", "at": "practice"},
                {"role": "duty_radiologist", "at": "provider"},
            ],
        }
    )
    levels = Escalation(policy).schedule(FindingFlag.CRITICAL, datetime(2026, 3, 2, tzinfo=UTC))
    assert [lv.rung.role for lv in levels] == ["on_call_gp", "duty_radiologist"]
    assert levels[1].acknowledge_by == datetime(2026, 3, 2, 1, tzinfo=UTC)


def test_a_routine_window_or_a_missing_one_is_refused() -> None:
    with pytest.raises(ValueError, match="routine findings never escalate"):
        AlertPolicy.model_validate({"windows": {"routine": {"hours": 1}, "critical": {"hours": 1}}})
    with pytest.raises(ValueError, match="no acknowledgement window"):
        AlertPolicy.model_validate({"windows": {"critical": {"hours": 1}}})
    with pytest.raises(ValueError, match="either 'hours' or 'working_days'"):
        Window(hours=1, working_days=1)


@given(st.integers(min_value=1, max_value=60))
def test_backoff_doubles_and_never_exceeds_its_cap(attempts: int) -> None:
    backoff = Backoff(initial_s=30, max_s=1800)
    assert backoff.delay_after(attempts) <= 1800
    assert backoff.delay_after(attempts + 1) >= backoff.delay_after(attempts)
    assert backoff.delay_after(1) == 30
    assert backoff.delay_after(2) == 60


def test_each_report_version_has_its_own_stable_ids() -> None:
    assert version_id("R1", None) == version_id("R1", None)
    assert version_id("R1", None) != version_id("R1", "A1")
    assert delivery_id("R1", "A1") != delivery_id("R1", "A2")
    # The same finding on the preliminary and final report is one alert; a new flag is another.
    assert alert_id("R1", None, FindingFlag.CRITICAL) == alert_id("R1", None, FindingFlag.CRITICAL)
    assert alert_id("R1", None, FindingFlag.CRITICAL) != alert_id("R1", None, FindingFlag.URGENT)
    assert len(alert_id("R" * 64, "A" * 64, FindingFlag.CRITICAL)) <= 64
