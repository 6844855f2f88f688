"""The wait clock: referral received -> appointment, less patient-elected delay.

Targets are calendar days in Europe/London ("within 7 days" of a referral received at
10:00 means by 10:00 local time seven days later, whatever the clocks did in between);
waits are elapsed seconds between UTC instants.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from pathway_schemas.values import Priority
from services.common.clock import LONDON
from services.scheduling.settings import SchedulingPolicy


def target_days(priority: Priority, policy: SchedulingPolicy) -> int:
    """The days the wait must not exceed: urgent maximum, routine acceptable."""
    if priority is Priority.URGENT:
        return policy.target_days_urgent
    return policy.target_days_routine_acceptable


def desirable_days(priority: Priority, policy: SchedulingPolicy) -> int:
    """The days the guide calls desirable (routine 7); urgent has only its maximum."""
    if priority is Priority.URGENT:
        return policy.target_days_urgent
    return policy.target_days_routine_desirable


def target_deadline(received_at: datetime, days: int, paused_seconds: float = 0.0) -> datetime:
    """The latest appointment start that meets the target, the pause added on."""
    local = received_at.astimezone(LONDON) + timedelta(days=days)
    return local.astimezone(UTC) + timedelta(seconds=paused_seconds)


def wait_seconds(
    received_at: datetime, appointment_start: datetime, paused_seconds: float = 0.0
) -> float:
    return max(0.0, (appointment_start - received_at).total_seconds() - paused_seconds)


def start_of_day(day: date) -> datetime:
    """Midnight in London as a UTC instant (a patient's 'available from' day)."""
    return datetime.combine(day, time(0, 0), tzinfo=LONDON).astimezone(UTC)


@dataclass(frozen=True)
class Pause:
    """Patient-elected delay: the intervals excluded from the wait."""

    intervals: tuple[tuple[datetime, datetime], ...] = ()

    @property
    def seconds(self) -> float:
        return sum((end - begin).total_seconds() for begin, end in self.intervals)

    @property
    def until(self) -> datetime | None:
        return max((end for _, end in self.intervals), default=None)

    def extend(self, now: datetime, available_from: date) -> Pause:
        """The patient is unavailable from now until `available_from` starts.

        A new statement replaces what an earlier one said about the time from now on, so
        a patient who brings their date forward is not credited with the old, longer delay.
        """
        kept = tuple((begin, min(end, now)) for begin, end in self.intervals if begin < now)
        resume = start_of_day(available_from)
        added = ((now, resume),) if resume > now else ()
        return Pause(intervals=tuple((b, e) for b, e in kept + added if e > b))
