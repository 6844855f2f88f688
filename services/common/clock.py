"""Time for the pathway's clocks: an injectable clock and the working-day calendar.

Every clock rule runs in Europe/London wall time and stores UTC instants; tests inject a
`FixedClock` instead of sleeping.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from pathlib import Path
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


class FileClock:
    """Simulated time shared by every process of a run: the instant written in a file.

    The simulator and the end-to-end tests advance time by rewriting the file; the
    services read it on each call (cached by modification time). Time stands still in
    between, so a scenario is deterministic however fast the machine is.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._now: datetime | None = None
        if not path.exists():
            raise FileNotFoundError(
                f"clock file {path} does not exist: write an ISO 8601 UTC instant to it first"
            )

    def now(self) -> datetime:
        stat = self.path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._stamp or self._now is None:
            text = self.path.read_text("utf-8").strip()
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
            if moment.tzinfo is None:
                raise ValueError(f"clock file {self.path} must hold an aware instant, got {text!r}")
            self._now, self._stamp = moment.astimezone(UTC), stamp
        return self._now

    @staticmethod
    def write(path: Path, moment: datetime) -> None:
        """Set the shared simulated time (atomically, so readers never see half a value)."""
        temporary = path.with_suffix(".tmp")
        temporary.write_text(moment.astimezone(UTC).isoformat(), "utf-8")
        temporary.replace(path)


def clock_from_settings(mode: str, path: Path | None) -> Clock:
    if mode == "file":
        if path is None:
            raise ValueError("clock mode 'file' needs a clock file path (<SERVICE>_CLOCK__FILE)")
        return FileClock(path)
    return SystemClock()


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
        return (
            day in _bank_holidays(self.nation, (day.year - 1, day.year, day.year + 1))
            or day in self._extra
        )

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
