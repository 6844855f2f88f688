"""Turnaround deadlines on the real UK working-day calendar, in London time, across DST."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pathway_schemas.values import CareSetting, Priority
from services.common.clock import LONDON, WorkingCalendar, london_date
from services.reporting.main import turnaround_policy
from services.reporting.service import (
    Deadline,
    Rule,
    TurnaroundPolicy,
    mdt_deadline,
    reporting_deadline,
)
from services.reporting.settings import TurnaroundSettings

ENGLAND = TurnaroundPolicy(WorkingCalendar("ENG"))
FIVE_PM = TurnaroundPolicy(WorkingCalendar("ENG"), day_ends_at=time(17, 0))
SCOTLAND = TurnaroundPolicy(WorkingCalendar("SCT"))

GP, INPATIENT, AE = CareSetting.GP, CareSetting.INPATIENT, CareSetting.EMERGENCY
ROUTINE, URGENT = Priority.ROUTINE, Priority.URGENT


def at(text: str) -> datetime:
    """An instant: London wall time, unless the text carries its own UTC offset."""
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=LONDON)


@dataclass(frozen=True)
class Case:
    name: str
    completed: str
    priority: Priority
    setting: CareSetting
    due: str
    rule: Rule
    policy: TurnaroundPolicy = ENGLAND

    @property
    def mdt(self) -> bool:
        return self.rule == "mdt"


C = Case
NWD: Rule = "next_working_day"
SWD: Rule = "same_working_day"
# fmt: off
CASES = [
    # Friday afternoon: the next working day is Monday.
    C("friday pm, GP", "2026-06-12 15:30", ROUTINE, GP, "2026-06-15 23:59:59", NWD),
    C("friday pm, inpatient", "2026-06-12 15:30", ROUTINE, INPATIENT, "2026-06-12 23:59:59", SWD),
    C("friday pm, urgent", "2026-06-12 15:30", URGENT, GP, "2026-06-12 16:30", "urgent"),
    C("friday pm, MDT", "2026-06-12 15:30", ROUTINE, GP, "2026-06-16 23:59:59", "mdt"),
    # Spring bank holiday: Monday 25 May 2026.
    C("before bank-holiday monday, GP", "2026-05-22 16:00", ROUTINE, GP, "2026-05-26 23:59:59", NWD),
    C("on bank-holiday monday, A&E", "2026-05-25 10:00", ROUTINE, AE, "2026-05-26 23:59:59", SWD),
    C("on bank-holiday monday, GP", "2026-05-25 10:00", ROUTINE, GP, "2026-05-26 23:59:59", NWD),
    C("MDT over bank-holiday monday", "2026-05-22 16:00", ROUTINE, GP, "2026-05-27 23:59:59", "mdt"),
    # Christmas 2027: the 25th and 26th are a weekend; Mon 27 and Tue 28 are the substitute days.
    C("christmas eve 2027, GP", "2027-12-24 11:00", ROUTINE, GP, "2027-12-29 23:59:59", NWD),
    C("christmas eve 2027, inpatient", "2027-12-24 11:00", ROUTINE, INPATIENT, "2027-12-24 23:59:59", SWD),
    C("christmas eve 2027, MDT", "2027-12-24 11:00", ROUTINE, GP, "2027-12-30 23:59:59", "mdt"),
    C("boxing day observed 2027, A&E", "2027-12-28 09:00", ROUTINE, AE, "2027-12-29 23:59:59", SWD),
    C("23 december 2027, GP", "2027-12-23 14:00", ROUTINE, GP, "2027-12-24 23:59:59", NWD),
    # Christmas 2020: Boxing Day on a Saturday, observed on Monday 28 December.
    C("christmas eve 2020, GP", "2020-12-24 12:00", ROUTINE, GP, "2020-12-29 23:59:59", NWD),
    # Spring forward, Sunday 29 March 2026: 01:00 GMT becomes 02:00 BST.
    C("before spring forward, GP", "2026-03-27 16:00", ROUTINE, GP, "2026-03-30 22:59:59+00:00", NWD),
    C("spring forward eve, A&E", "2026-03-28 23:30", ROUTINE, AE, "2026-03-30 22:59:59+00:00", SWD),
    C("urgent over spring forward", "2026-03-29 00:30+00:00", URGENT, GP, "2026-03-29 02:30", "urgent"),
    # Fall back, Sunday 25 October 2026: 02:00 BST becomes 01:00 GMT, so 01:30 happens twice.
    C("before fall back, GP", "2026-10-23 17:00", ROUTINE, GP, "2026-10-26 23:59:59+00:00", NWD),
    C("urgent over fall back", "2026-10-25 01:30+01:00", URGENT, AE, "2026-10-25 01:30+00:00", "urgent"),
    C("MDT over fall back", "2026-10-23 17:00", ROUTINE, GP, "2026-10-27 23:59:59+00:00", "mdt"),
    # Completed at 23:30: the London date counts, not the UTC date.
    C("23:30 London in summer, GP", "2026-06-09 23:30", ROUTINE, GP, "2026-06-10 23:59:59", NWD),
    C("23:30 London in summer, A&E", "2026-06-09 23:30", ROUTINE, AE, "2026-06-09 23:59:59", SWD),
    C("23:30 UTC in summer, GP", "2026-06-09 23:30+00:00", ROUTINE, GP, "2026-06-11 23:59:59", NWD),
    C("23:30 UTC in summer, A&E", "2026-06-09 23:30+00:00", ROUTINE, AE, "2026-06-10 23:59:59", SWD),
    C("23:30 in winter, GP", "2026-01-13 23:30", ROUTINE, GP, "2026-01-14 23:59:59", NWD),
    C("23:30 on a friday, MDT", "2026-06-12 23:30", ROUTINE, GP, "2026-06-16 23:59:59", "mdt"),
    # A working day that ends at 17:00 (local policy).
    C("inpatient before 17:00", "2026-06-08 16:00", ROUTINE, INPATIENT, "2026-06-08 17:00", SWD, FIVE_PM),
    C("inpatient after 17:00", "2026-06-08 18:00", ROUTINE, INPATIENT, "2026-06-09 17:00", SWD, FIVE_PM),
    C("friday evening GP, 17:00", "2026-06-12 18:00", ROUTINE, GP, "2026-06-15 17:00", NWD, FIVE_PM),
    # Each nation's own bank holidays: 2 January is one in Scotland only.
    C("new year's eve, England", "2025-12-31 12:00", ROUTINE, GP, "2026-01-02 23:59:59", NWD),
    C("new year's eve, Scotland", "2025-12-31 12:00", ROUTINE, GP, "2026-01-05 23:59:59", NWD, SCOTLAND),
]
# fmt: on


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_reporting_deadline_follows_the_turnaround_rules(case: Case) -> None:
    completed = at(case.completed)
    if case.mdt:
        deadline = mdt_deadline(completed, case.policy)
    else:
        deadline = reporting_deadline(completed, case.priority, case.setting, case.policy)
    assert deadline == Deadline(at(case.due).astimezone(UTC), case.rule)
    assert deadline.due_at.tzinfo is UTC


def test_urgent_turnaround_is_local_policy() -> None:
    policy = turnaround_policy(
        TurnaroundSettings(urgent_minutes=30, working_day_ends_at=time(18, 0))
    )
    completed = at("2026-06-08 09:00")
    urgent = reporting_deadline(completed, URGENT, GP, policy)
    assert urgent.due_at == completed + timedelta(minutes=30)
    assert reporting_deadline(completed, ROUTINE, GP, policy).due_at == at("2026-06-09 18:00")


def test_a_naive_completion_time_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        reporting_deadline(datetime(2026, 6, 8, 9, 0), ROUTINE, GP, ENGLAND)


# --------------------------------------------------------------------------- properties

instants = st.datetimes(
    min_value=datetime(2020, 1, 1), max_value=datetime(2031, 12, 31), timezones=st.just(UTC)
)
policies = st.builds(
    TurnaroundPolicy,
    calendar=st.sampled_from([WorkingCalendar(n) for n in ("ENG", "WLS", "SCT", "NIR")]),
    urgent=st.integers(min_value=1, max_value=24 * 60).map(lambda m: timedelta(minutes=m)),
    day_ends_at=st.sampled_from([time(17, 0), time(18, 30), time(20, 0), time(23, 59, 59)]),
    mdt_working_days=st.integers(min_value=1, max_value=5),
)


@given(instants, st.sampled_from(Priority), st.sampled_from(CareSetting), policies)
def test_a_deadline_is_never_before_the_completion(
    completed: datetime, priority: Priority, care_setting: CareSetting, policy: TurnaroundPolicy
) -> None:
    assert reporting_deadline(completed, priority, care_setting, policy).due_at >= completed
    assert mdt_deadline(completed, policy).due_at > completed


@given(instants, policies)
def test_a_next_working_day_deadline_is_on_a_later_working_day(
    completed: datetime, policy: TurnaroundPolicy
) -> None:
    deadline = reporting_deadline(completed, ROUTINE, GP, policy)
    due_day = london_date(deadline.due_at)
    assert deadline.rule == "next_working_day"
    assert policy.calendar.is_working_day(due_day)
    assert due_day > london_date(completed)
    # The longest gap is Christmas Eve on a Friday: six days to the Wednesday after.
    assert due_day - london_date(completed) <= timedelta(days=6)


@given(instants, st.sampled_from([INPATIENT, AE]), policies)
def test_a_same_working_day_deadline_is_on_a_working_day_and_never_a_day_late(
    completed: datetime, care_setting: CareSetting, policy: TurnaroundPolicy
) -> None:
    deadline = reporting_deadline(completed, ROUTINE, care_setting, policy)
    due_day = london_date(deadline.due_at)
    assert policy.calendar.is_working_day(due_day)
    day = london_date(completed)
    if policy.calendar.is_working_day(day) and completed <= policy.end_of(day):
        assert due_day == day
    else:
        assert due_day == policy.calendar.next_working_day(day)


@given(instants, st.sampled_from(Priority), st.sampled_from(CareSetting))
def test_an_mdt_deadline_is_never_earlier_than_the_rule_it_replaces(
    completed: datetime, priority: Priority, care_setting: CareSetting
) -> None:
    mdt = mdt_deadline(completed, ENGLAND)
    assert mdt.due_at >= reporting_deadline(completed, priority, care_setting, ENGLAND).due_at
    assert ENGLAND.calendar.is_working_day(london_date(mdt.due_at))


@given(instants)
def test_urgent_is_one_hour_of_elapsed_time_whatever_the_clocks_do(completed: datetime) -> None:
    deadline = reporting_deadline(completed, URGENT, INPATIENT, ENGLAND)
    assert deadline.due_at - completed == timedelta(hours=1)
