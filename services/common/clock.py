"""Time for the pathway's clocks: an injectable clock and the working-day calendar.

Every clock rule runs in Europe/London wall time and stores UTC instants; tests inject a
`FixedClock` instead of sleeping.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import Protocol
from zoneinfo import ZoneInfo

import holidays

LONDON = ZoneInfo("Europe/London")


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class FixedClock:
    """A clock that moves only when told: for tests and simulated time."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("FixedClock needs an aware datetime")
        self._now = start.astimezone(UTC)

    def now(self) -> datetime:
        return self._now

    def set(self, moment: datetime) -> None:
        self._now = moment.astimezone(UTC)

    def advance(self, delta: timedelta) -> datetime:
        self._now += delta
        return self._now


@lru_cache(maxsize=8)
def _bank_holidays(subdivision: str, years: tuple[int, ...]) -> frozenset[date]:
    return frozenset(holidays.country_holidays("GB", subdiv=subdivision, years=years).keys())


class WorkingCalendar:
    """Monday to Friday less the bank holidays of one UK nation (ENG, WLS, SCT, NIR)."""

    def __init__(self, nation: str = "ENG", extra_closures: Iterable[date] = ()) -> None:
        if nation not in {"ENG", "WLS", "SCT", "NIR"}:
            raise ValueError(f"nation {nation!r} must be one of ENG, WLS, SCT, NIR")
        self.nation = nation
        self._extra = frozenset(extra_closures)

    def is_bank_holiday(self, day: date) -> bool:
        return day in _bank_holidays(self.nation, (day.year - 1, day.year, day.year + 1)) or day in self._extra

    def is_working_day(self, day: date) -> bool:
        return day.weekday() < 5 and not self.is_bank_holiday(day)

    def next_working_day(self, day: date) -> date:
        """The first working day strictly after `day`."""
        candidate = day + timedelta(days=1)
        while not self.is_working_day(candidate):
            candidate += timedelta(days=1)
        return candidate

    def add_working_days(self, day: date, count: int) -> date:
        for _ in range(count):
            day = self.next_working_day(day)
        return day

    def working_day_on_or_after(self, day: date) -> date:
        return day if self.is_working_day(day) else self.next_working_day(day)

    def end_of_day(self, day: date, at: time = time(23, 59, 59)) -> datetime:
        """The end of a London calendar day as a UTC instant (correct across DST changes)."""
        return datetime.combine(day, at, tzinfo=LONDON).astimezone(UTC)


def london_date(moment: datetime) -> date:
    return moment.astimezone(LONDON).date()
