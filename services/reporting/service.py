"""The reporting rules: turnaround deadlines, and what each examination or report event may do.

Plain functions and dataclasses: no broker, no store. Deadlines run in Europe/London wall
time on the working-day calendar of the configured nation and are returned as UTC instants.

Turnaround rules (the guide; values marked local policy are settings):
- urgent: completion + `urgent` (local policy: 1 hour), an absolute duration, so it is the
  same 60 minutes across a daylight-saving change;
- inpatient and A&E: the end of the same working day; completed on a non-working day or
  after the working day's end, the end of the next working day;
- all other cases: the end of the next working day after the completion's London date;
- MDT or specialist opinion: the end of the Nth working day (local policy: 2) after the
  completion's London date; it replaces whichever rule applied.
"End of day" is `day_ends_at` London time (default 23:59:59).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import Literal

from pathway_schemas.events import ReportStatus
from pathway_schemas.values import CareSetting, Modality, Priority
from services.common.clock import WorkingCalendar, london_date
from services.common.errors import Denied, Invalid, Rejected

Rule = Literal["urgent", "same_working_day", "next_working_day", "mdt"]

SAME_DAY_SETTINGS = frozenset({CareSetting.INPATIENT, CareSetting.EMERGENCY})

# A provider's clock may run a little ahead of ours; beyond this an event from the future is
# refused, so that a deadline cannot be moved by a wrong completion time.
FUTURE_TOLERANCE = timedelta(minutes=5)


@dataclass(frozen=True)
class TurnaroundPolicy:
    calendar: WorkingCalendar
    urgent: timedelta = timedelta(hours=1)
    day_ends_at: time = time(23, 59, 59)
    mdt_working_days: int = 2

    def end_of(self, day: date) -> datetime:
        return self.calendar.end_of_day(day, self.day_ends_at)


@dataclass(frozen=True)
class Deadline:
    due_at: datetime
    rule: Rule


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("a completion time must be timezone-aware")
    return moment.astimezone(UTC)


def reporting_deadline(
    completed_at: datetime, priority: Priority, care_setting: CareSetting, policy: TurnaroundPolicy
) -> Deadline:
    """When the report of an examination completed at `completed_at` is due, and by which rule."""
    completed = _utc(completed_at)
    if priority is Priority.URGENT:
        return Deadline(completed + policy.urgent, "urgent")
    day = london_date(completed)
    if care_setting in SAME_DAY_SETTINGS:
        if policy.calendar.is_working_day(day) and completed <= policy.end_of(day):
            return Deadline(policy.end_of(day), "same_working_day")
        return Deadline(policy.end_of(policy.calendar.next_working_day(day)), "same_working_day")
    return Deadline(policy.end_of(policy.calendar.next_working_day(day)), "next_working_day")


def mdt_deadline(completed_at: datetime, policy: TurnaroundPolicy) -> Deadline:
    """The deadline when the reporter needs an MDT or specialist opinion."""
    day = london_date(_utc(completed_at))
    return Deadline(
        policy.end_of(policy.calendar.add_working_days(day, policy.mdt_working_days)), "mdt"
    )


# --------------------------------------------------------------------------- examination state


class State(StrEnum):
    PENDING = "pending"  # not examined yet (referred, booked or walk-in authorised)
    ARRIVED = "arrived"
    COMPLETED = "completed"  # examined: on the reporting worklist until a final report
    REPORTED = "reported"  # a final report was issued
    ABANDONED = "abandoned"


OPEN_FOR_ASSIGNMENT = frozenset({State.PENDING, State.ARRIVED, State.ABANDONED})
EXAMINED = frozenset({State.COMPLETED, State.REPORTED})


@dataclass(frozen=True)
class Referral:
    """What this service knows of one referral, from the referral, vetting and booking topics."""

    referral_id: str
    state: State = State.PENDING
    nhs_number: str | None = None
    practice_ods: str | None = None
    care_setting: CareSetting | None = None
    priority: Priority | None = None
    examination_code: str | None = None
    modality: Modality | None = None
    accepted: bool = False
    cancelled: bool = False
    provider_ods: str | None = None
    site_id: str | None = None
    study_instance_uid: str | None = None
    completed_at: datetime | None = None
    due_at: datetime | None = None
    rule: Rule | None = None
    final_report_id: str | None = None
    has_parked: bool = False

    @property
    def details_known(self) -> bool:
        return None not in (
            self.nhs_number,
            self.practice_ods,
            self.care_setting,
            self.priority,
            self.examination_code,
            self.modality,
        )

    @property
    def ready_for_provider(self) -> bool:
        """Enough is known to judge a provider's event: the patient's details and the assignment."""
        return self.details_known and self.provider_ods is not None


def authorise_provider(referral: Referral | None, provider: str) -> Referral | None:
    """The referral if `provider` may act on it; None while its booking is not yet known here.

    A referral assigned to another provider is refused at once. One not yet known (or not
    yet booked, as far as this service has consumed) may still become this provider's: the
    caller parks the event for a bounded time instead of refusing it.
    """
    if referral is None or not referral.ready_for_provider:
        if referral is not None and referral.cancelled and referral.state not in EXAMINED:
            raise Rejected("the referral was cancelled")
        return None
    if referral.provider_ods != provider:
        raise Denied("the referral is not assigned to this provider")
    return referral


def not_in_future(occurred_at: datetime, now: datetime) -> None:
    if occurred_at - now > FUTURE_TOLERANCE:
        raise Invalid("occurred_at is in the future: check the sending system's clock")


def check_arrival(referral: Referral) -> bool:
    """True: record the arrival; False: it adds nothing (already arrived or examined)."""
    if referral.state is State.PENDING:
        if referral.cancelled:
            raise Rejected("the referral was cancelled")
        return True
    if referral.state is State.ABANDONED:
        raise Rejected("the examination was abandoned: the referral needs a new booking")
    return False


def check_completion(referral: Referral, study_instance_uid: str) -> bool:
    """True: record the completion; False: the same completion again (applied once)."""
    if referral.state in EXAMINED:
        if referral.study_instance_uid == study_instance_uid:
            return False
        raise Rejected(
            "the referral was already examined with another study: no referral is examined twice"
        )
    if referral.state is State.ABANDONED:
        raise Rejected("the examination was abandoned: the referral needs a new booking")
    if referral.cancelled:
        raise Rejected("the referral was cancelled")
    return True


def check_abandonment(referral: Referral) -> bool:
    if referral.state in EXAMINED:
        raise Rejected("the examination was completed: it cannot be abandoned")
    return referral.state is not State.ABANDONED


def check_report(referral: Referral, status: ReportStatus) -> None:
    if referral.state is State.REPORTED:
        raise Rejected("a final report was issued: add an addendum instead")
    if referral.state is not State.COMPLETED:
        raise Rejected(f"a {status.value} report needs a completed examination")


def check_addendum(referral: Referral) -> None:
    if referral.state not in EXAMINED:
        raise Rejected("an addendum needs an issued report of a completed examination")


def check_delay(referral: Referral) -> bool:
    """True: move to the MDT deadline; False: already delayed (the deadline stays)."""
    if referral.state is State.REPORTED:
        raise Rejected("a final report was issued: nothing to delay")
    if referral.state is not State.COMPLETED:
        raise Rejected("a report can be delayed only after the examination is completed")
    return referral.rule != "mdt"


def may_reassign(referral: Referral | None) -> bool:
    """A booking or walk-in moves the referral to a provider until it is examined."""
    return referral is None or referral.state in OPEN_FOR_ASSIGNMENT


def within_target(reported_at: datetime, due_at: datetime) -> bool:
    return reported_at <= due_at
