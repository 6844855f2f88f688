"""The wait clock: targets in London calendar days, waits less patient-elected delay."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from pathway_schemas.values import Priority
from services.common.clock import LONDON
from services.scheduling.settings import SchedulingPolicy
from services.scheduling.waits import (
    Pause,
    desirable_days,
    start_of_day,
    target_days,
    target_deadline,
    wait_seconds,
)

DAY = 86_400.0


def test_targets_are_7_days_urgent_and_14_days_routine_acceptable_by_default() -> None:
    policy = SchedulingPolicy()
    assert target_days(Priority.URGENT, policy) == 7
    assert target_days(Priority.ROUTINE, policy) == 14
    assert target_days(Priority.ROUTINE, SchedulingPolicy(target_days_routine_acceptable=21)) == 21
    assert desirable_days(Priority.ROUTINE, policy) == 7
    assert desirable_days(Priority.URGENT, policy) == 7


def test_a_target_ends_at_the_same_london_wall_time_across_the_clock_changes() -> None:
    spring = datetime(2026, 3, 27, 10, 0, tzinfo=LONDON)  # Friday, GMT; clocks go forward on Sunday
    deadline = target_deadline(spring, 7)
    assert deadline.astimezone(LONDON).replace(tzinfo=None) == datetime(2026, 4, 3, 10, 0)
    assert (deadline - spring).total_seconds() == 7 * DAY - 3600  # the lost hour

    autumn = datetime(2026, 10, 23, 10, 0, tzinfo=LONDON)  # Friday, BST; clocks go back on Sunday
    deadline = target_deadline(autumn, 7)
    assert deadline.astimezone(LONDON).replace(tzinfo=None) == datetime(2026, 10, 30, 10, 0)
    assert (deadline - autumn).total_seconds() == 7 * DAY + 3600


def test_the_wait_is_received_to_appointment_less_the_patients_delay_and_never_negative() -> None:
    received = datetime(2026, 3, 23, 9, 0, tzinfo=UTC)
    assert wait_seconds(received, received + timedelta(days=10)) == 10 * DAY
    assert wait_seconds(received, received + timedelta(days=10), 4 * DAY) == 6 * DAY
    assert wait_seconds(received, received - timedelta(hours=1)) == 0.0
    assert target_deadline(received, 14, 4 * DAY) == target_deadline(received, 14) + timedelta(
        days=4
    )


def test_a_deferral_pauses_from_the_request_to_the_start_of_the_available_day() -> None:
    now = datetime(2026, 3, 23, 9, 0, tzinfo=UTC)  # 09:00 GMT
    pause = Pause().extend(
        now, date(2026, 4, 6)
    )  # BST by then: London midnight is 23:00 UTC before
    assert pause.until == datetime(2026, 4, 5, 23, 0, tzinfo=UTC) == start_of_day(date(2026, 4, 6))
    assert pause.seconds == (pause.until - now).total_seconds()


def test_a_later_deferral_replaces_what_the_earlier_one_said_about_the_future() -> None:
    first = datetime(2026, 3, 23, 9, 0, tzinfo=UTC)
    pause = Pause().extend(first, date(2026, 4, 20))
    second = first + timedelta(days=5)
    brought_forward = pause.extend(second, date(2026, 4, 1))
    assert brought_forward.intervals[0] == (first, second)  # the part already spent stays excluded
    assert brought_forward.until == start_of_day(date(2026, 4, 1))
    assert brought_forward.seconds == (start_of_day(date(2026, 4, 1)) - first).total_seconds()


@given(
    requests=st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=60 * 24 * 30), st.integers(min_value=1, max_value=60)
        ),
        min_size=1,
        max_size=6,
    )
)
def test_excluded_delay_never_counts_any_moment_twice(requests: list[tuple[int, int]]) -> None:
    origin = datetime(2026, 3, 1, tzinfo=UTC)
    pause = Pause()
    moments = sorted(origin + timedelta(minutes=m) for m, _ in requests)
    for moment, (_, days) in zip(moments, requests, strict=True):
        pause = pause.extend(moment, moment.astimezone(LONDON).date() + timedelta(days=days))
    ordered = sorted(pause.intervals)
    for (_, earlier_end), (later_start, _) in itertools.pairwise(ordered):
        assert earlier_end <= later_start
    assert pause.until is not None
    assert pause.seconds <= (pause.until - moments[0]).total_seconds()
