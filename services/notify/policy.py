"""The notify rules: when an alert is due, who hears next, and the ids that make repeats harmless.

Plain functions over the policy and instants; no store, no broker. Each alert starts at the
first rung of the ladder and moves one rung up each time its window passes without an
acknowledgement. The next window runs from when the last one ended (not from when a worker
noticed), so a level fires at its time however late a sweep is, and a service that was down
catches up rung by rung.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pathway_schemas.values import FindingFlag
from services.common.clock import LONDON, WorkingCalendar
from services.notify.config import AlertPolicy, Rung, Window


def needs_alert(flag: FindingFlag) -> bool:
    """RCR communication standards: anything but routine is communicated at once and tracked."""
    return flag is not FindingFlag.ROUTINE


def window_end(window: Window, start: datetime, calendar: WorkingCalendar) -> datetime:
    """When a window opened at `start` closes.

    Hours are elapsed time (a daylight-saving change adds or loses nothing). Working days are
    counted from the day after `start` in London, and the window closes at the same London
    wall-clock time on the last of them.
    """
    if window.hours is not None:
        return start + timedelta(hours=window.hours)
    assert window.working_days is not None
    local = start.astimezone(LONDON)
    day = calendar.add_working_days(local.date(), window.working_days)
    wall = datetime.combine(day, local.time().replace(tzinfo=None), tzinfo=LONDON)
    return wall.astimezone(UTC)


@dataclass(frozen=True)
class Level:
    """An alert at one rung: who is alerted, by when they must acknowledge, when it moves on."""

    level: int
    rung: Rung
    acknowledge_by: datetime
    next_escalation_at: datetime | None


class Escalation:
    """The ladder and windows of the operator's alert policy, over the working calendar."""

    def __init__(self, policy: AlertPolicy, calendar: WorkingCalendar | None = None) -> None:
        self.policy = policy
        self.calendar = calendar or WorkingCalendar(policy.nation)

    @property
    def top(self) -> int:
        return len(self.policy.ladder) - 1

    def level(self, flag: FindingFlag, level: int, start: datetime) -> Level:
        """The alert at `level`, its window opening at `start`."""
        if not needs_alert(flag):
            raise ValueError("routine findings are never alerted")
        if not 0 <= level <= self.top:
            raise ValueError(f"level {level} is not on the ladder (0..{self.top})")
        deadline = window_end(self.policy.windows[flag], start, self.calendar)
        return Level(
            level=level,
            rung=self.policy.ladder[level],
            acknowledge_by=deadline,
            # The top rung is told and stays told: an alert still open after its window is
            # overdue (counted and alerted on by operations), not escalated further.
            next_escalation_at=deadline if level < self.top else None,
        )

    def raised(self, flag: FindingFlag, at: datetime) -> Level:
        return self.level(flag, 0, at)

    def escalated(self, flag: FindingFlag, current: int, due_at: datetime) -> Level:
        """The next rung of an alert at `current` whose window ended at `due_at`."""
        return self.level(flag, current + 1, due_at)

    def schedule(self, flag: FindingFlag, raised_at: datetime) -> list[Level]:
        """Every level an alert raised at `raised_at` would reach if nobody acknowledged it."""
        levels = [self.raised(flag, raised_at)]
        while levels[-1].next_escalation_at is not None:
            previous = levels[-1]
            assert previous.next_escalation_at is not None
            levels.append(self.escalated(flag, previous.level, previous.next_escalation_at))
        return levels


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


def version_id(report_id: str, addendum_id: str | None) -> str:
    """A report or one of its addenda: each is delivered and acknowledged on its own."""
    return "ver_" + _digest(report_id, addendum_id or "")


def delivery_id(report_id: str, addendum_id: str | None) -> str:
    return "dlv_" + _digest(report_id, addendum_id or "")


def alert_id(report_id: str, addendum_id: str | None, flag: FindingFlag) -> str:
    """The same finding on the preliminary and the final report is one alert, not two."""
    return "alr_" + _digest(report_id, addendum_id or "", flag.value)


def message_id(cause: str, audience: str) -> str:
    return "msg_" + _digest(cause, audience)
