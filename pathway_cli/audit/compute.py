"""The rolling audit (section 4 of the guide), computed from the pathway's events alone.

Pure functions: a collection of decoded events in, an `Audit` out. Every clock comes from the
events' `occurred_at`; nothing here reads the wall clock. The same referral's events may
arrive in any order and any number of times: they are deduplicated by event id and put in
`occurred_at` order first, so the result depends only on the set of events.

docs/audit.md defines each figure; the comments here say why where the code cannot.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TypeVar

from pathway_cli.audit.capacity import ProviderConfig, SlotKey
from pathway_schemas import events as ev
from pathway_schemas.base import PathwayEvent
from pathway_schemas.envelope import Received
from pathway_schemas.events import FAMILIES
from pathway_schemas.values import Priority
from services.common.clock import LONDON

ALL = "*"
UNKNOWN = "unknown"
DAY = 86400.0

Cell = str | int | float | None
Row = tuple[Cell, ...]
T = TypeVar("T")


class AuditError(ValueError):
    """The audit cannot be computed as asked; the message says what to change."""


@dataclass(frozen=True)
class Targets:
    """The guide's targets; configurable like the rest of local policy."""

    wait_days_urgent: int = 7
    wait_days_routine_desirable: int = 7
    wait_days_routine_acceptable: int = 14
    turnaround_tolerance: float = 0.9

    def wait_days(self, priority: str) -> int:
        if priority == Priority.URGENT.value:
            return self.wait_days_urgent
        return self.wait_days_routine_acceptable

    def desirable_days(self, priority: str) -> int:
        if priority == Priority.URGENT.value:
            return self.wait_days_urgent
        return self.wait_days_routine_desirable


@dataclass(frozen=True)
class Table:
    """One figure as rows; a dimension column holding ALL ("*") is a total over it."""

    name: str
    title: str
    dimensions: tuple[str, ...]
    measures: tuple[str, ...]
    rows: tuple[Row, ...]

    @property
    def columns(self) -> tuple[str, ...]:
        return self.dimensions + self.measures

    def records(self) -> list[dict[str, Cell]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]

    def row(self, **dims: str) -> dict[str, Cell]:
        """The row whose dimensions are exactly these (the rest ALL); KeyError when absent."""
        wanted = tuple(dims.get(d, ALL) for d in self.dimensions)
        for record, row in zip(self.records(), self.rows, strict=True):
            if row[: len(self.dimensions)] == wanted:
                return record
        raise KeyError(f"{self.name} has no row {dims}")


@dataclass(frozen=True)
class WaitSample:
    priority: str
    provider: str
    site: str
    modality: str
    wait_days: float
    within_target: bool
    within_desirable: bool
    source: str  # "recomputed" from the submission and deferrals, or "event" (as booked)
    agrees_with_booking: bool | None


@dataclass(frozen=True)
class TurnaroundSample:
    provider: str
    modality: str
    rule: str
    hours: float
    margin_hours: float  # issued minus due: negative is early
    within_target: bool
    agrees_with_report: bool
    delayed: bool


@dataclass(frozen=True)
class Audit:
    window_start: datetime
    window_end: datetime
    window_days: int
    targets: Targets
    events_read: int
    events_unique: int
    events_considered: int
    referrals_seen: int
    capacity_known: bool
    tables: Mapping[str, Table]
    waits: tuple[WaitSample, ...]
    turnaround: tuple[TurnaroundSample, ...]
    notes: tuple[str, ...] = ()
    provider_names: Mapping[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------- preparing the set

_FAMILY_ORDER = (
    "imaging.referral.v1",
    "imaging.vetting.v1",
    "imaging.booking.v1",
    "imaging.examination.v1",
    "imaging.report.v1",
    "imaging.notification.v1",
)
# Events at the same instant are put in pathway order, so that ties never depend on arrival.
_RANK: dict[str, int] = {
    model.event_type: 100 * family + index
    for family, topic in enumerate(_FAMILY_ORDER)
    for index, model in enumerate(FAMILIES[topic])
}


def _order(item: Received) -> tuple[datetime, int, str]:
    event = item.event
    return (
        event.occurred_at.astimezone(UTC),
        _RANK.get(event.event_type, 10_000),
        item.envelope.id,
    )


def _content(item: Received) -> tuple[datetime, str]:
    return (item.event.occurred_at, item.event.model_dump_json())


def unique_in_order(items: Iterable[Received]) -> list[Received]:
    """One copy of each event id, in occurred-at order; ties go by pathway step, then id.

    Two different events under one id break the contract; the audit still picks the same
    one whatever the arrival order (the earlier, then the smaller content).
    """
    by_id: dict[str, Received] = {}
    for item in items:
        kept = by_id.get(item.envelope.id)
        if kept is None or (kept.event != item.event and _content(item) < _content(kept)):
            by_id[item.envelope.id] = item
    return sorted(by_id.values(), key=_order)


# --------------------------------------------------------------------------- one referral


@dataclass
class Booking:
    """An appointment held for a referral, from booking until cancelled or moved away."""

    appointment: ev.Appointment
    modality: str
    booked_at: datetime | None
    ended_at: datetime | None = None
    missed: bool = False

    @property
    def start(self) -> datetime:
        return self.appointment.start

    @property
    def held_at_start(self) -> bool:
        """Not cancelled or moved before its time: the slot was used (attended or missed)."""
        return self.ended_at is None or self.ended_at >= self.appointment.start


@dataclass
class Referral:
    """Everything the events say about one referral, folded in occurred-at order."""

    id: str
    submitted: ev.ReferralSubmitted | None = None
    amended: ev.ReferralAmended | None = None
    accepted: ev.VettingAccepted | None = None
    returns: list[ev.VettingReturned] = field(default_factory=list)
    queries: list[ev.VettingQueried] = field(default_factory=list)
    cancelled: ev.ReferralCancelled | None = None
    bookings: list[Booking] = field(default_factory=list)
    latest_booking: ev.AppointmentBooked | ev.AppointmentRebooked | None = None
    booked_priority: str | None = None
    deferrals: list[ev.AppointmentDeferred] = field(default_factory=list)
    breaches: list[ev.WaitTargetBreached] = field(default_factory=list)
    seen_at_provider: list[datetime] = field(default_factory=list)
    completed: ev.ExaminationCompleted | None = None
    scheduled: ev.ReportingScheduled | None = None
    delays: list[ev.ReportDelayed] = field(default_factory=list)
    final: ev.ReportIssued | None = None
    practice_hint: str | None = None
    delivered: dict[str, ev.ReportDelivered] = field(default_factory=dict)
    delivery_failures: list[ev.ReportDeliveryFailed] = field(default_factory=list)
    acknowledged: dict[str, ev.ReportAcknowledged] = field(default_factory=dict)
    alerts: list[ev.AlertRaised] = field(default_factory=list)
    escalated_alerts: set[str] = field(default_factory=set)

    @property
    def practice(self) -> str:
        if self.submitted is not None:
            return self.submitted.practice_ods
        if self.amended is not None:
            return self.amended.practice_ods
        if self.accepted is not None:
            return self.accepted.practice_ods
        return self.practice_hint or UNKNOWN

    @property
    def modality(self) -> str:
        if self.completed is not None:
            return self.completed.modality.value
        for source in (self.accepted, self.amended, self.submitted):
            if source is not None:
                return source.modality.value
        return self.bookings[0].modality if self.bookings else UNKNOWN

    @property
    def priority(self) -> str:
        """The confirmed priority: as booked, else as vetted, else as requested."""
        if self.booked_priority is not None:
            return self.booked_priority
        for source in (self.accepted, self.submitted):
            if source is not None:
                return source.priority.value
        return UNKNOWN

    @property
    def received_at(self) -> datetime | None:
        if self.submitted is not None:
            return self.submitted.occurred_at
        return self.accepted.referral_received_at if self.accepted is not None else None

    def booking_for(self, slot_id: str) -> Booking | None:
        """The most recent booking of this slot that is still held."""
        for booking in reversed(self.bookings):
            if booking.appointment.slot_id == slot_id and booking.ended_at is None:
                return booking
        return None

    def end_booking(
        self, appointment: ev.Appointment, at: datetime, modality: str | None = None
    ) -> None:
        booking = self.booking_for(appointment.slot_id)
        if booking is None:  # its booking is missing from the set: record what we know
            booking = Booking(appointment, modality or self.modality, booked_at=None)
            self.bookings.append(booking)
        booking.ended_at = at

    def report_deadline(self) -> datetime | None:
        """The deadline currently applying: the latest delay's, else the scheduled one."""
        if self.delays:
            return self.delays[-1].new_due_at
        return self.scheduled.due_at if self.scheduled is not None else None


def _apply(referral: Referral, event: PathwayEvent) -> None:
    at: datetime = event.occurred_at
    if isinstance(event, ev.ReferralSubmitted):
        referral.submitted = referral.submitted or event
    elif isinstance(event, ev.ReferralAmended):
        referral.amended = event
    elif isinstance(event, ev.ReferralCancelled):
        referral.cancelled = referral.cancelled or event
    elif isinstance(event, ev.VettingAccepted):
        referral.accepted = event
    elif isinstance(event, ev.VettingReturned):
        referral.returns.append(event)
    elif isinstance(event, ev.VettingQueried):
        referral.queries.append(event)
    elif isinstance(event, ev.AppointmentBooked):
        referral.booked_priority = event.priority.value
        referral.bookings.append(Booking(event.appointment, event.modality.value, at))
        referral.latest_booking = event
    elif isinstance(event, ev.AppointmentRebooked):
        previous = referral.booking_for(event.previous.slot_id)
        modality = previous.modality if previous is not None else referral.modality
        referral.end_booking(event.previous, at, modality)
        referral.bookings.append(Booking(event.appointment, modality, at))
        referral.latest_booking = event
    elif isinstance(event, ev.AppointmentCancelled):
        referral.end_booking(event.appointment, at)
    elif isinstance(event, ev.AppointmentDeferred):
        referral.deferrals.append(event)
        if event.previous is not None:
            referral.end_booking(event.previous, at)
    elif isinstance(event, ev.AppointmentMissed):
        booking = referral.booking_for(event.appointment.slot_id) or next(
            (
                b
                for b in reversed(referral.bookings)
                if b.appointment.slot_id == event.appointment.slot_id
            ),
            None,
        )
        if booking is None:
            booking = Booking(event.appointment, referral.modality, booked_at=None)
            referral.bookings.append(booking)
        booking.missed = True
    elif isinstance(event, ev.WaitTargetBreached):
        referral.breaches.append(event)
    elif isinstance(event, ev.PatientArrived | ev.ExaminationAbandoned):
        referral.seen_at_provider.append(at)
    elif isinstance(event, ev.ExaminationCompleted):
        referral.seen_at_provider.append(at)
        referral.completed = referral.completed or event
    elif isinstance(event, ev.ReportingScheduled):
        referral.scheduled = referral.scheduled or event
    elif isinstance(event, ev.ReportDelayed):
        referral.delays.append(event)
    elif isinstance(event, ev.ReportIssued):
        referral.practice_hint = event.practice_ods
        if event.status is ev.ReportStatus.FINAL and referral.final is None:
            referral.final = event
    elif isinstance(event, ev.ReportDelivered):
        referral.practice_hint = referral.practice_hint or event.practice_ods
        if event.addendum_id is None:
            referral.delivered.setdefault(event.report_id, event)
    elif isinstance(event, ev.ReportDeliveryFailed):
        if event.addendum_id is None:
            referral.delivery_failures.append(event)
    elif isinstance(event, ev.ReportAcknowledged):
        if event.addendum_id is None:
            referral.acknowledged.setdefault(event.report_id, event)
    elif isinstance(event, ev.AlertRaised):
        referral.alerts.append(event)
    elif isinstance(event, ev.AlertEscalated):
        referral.escalated_alerts.add(event.alert_id)


def fold(items: Sequence[Received]) -> dict[str, Referral]:
    """Each referral's story from events already in order (see `unique_in_order`)."""
    referrals: dict[str, Referral] = {}
    for item in items:
        referral_id = getattr(item.event, "referral_id", None)
        if referral_id is None:
            continue  # intake requests and rejections are not yet referrals
        referral = referrals.get(referral_id)
        if referral is None:
            referral = referrals[referral_id] = Referral(referral_id)
        _apply(referral, item.event)
    return referrals


# --------------------------------------------------------------------------- measures


def nearest_rank(values: Sequence[float], q: float) -> float | None:
    """The q-quantile by the nearest-rank method: the ceil(q*n)-th smallest value."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _distribution(values: Sequence[float]) -> tuple[Cell, ...]:
    return (
        nearest_rank(values, 0.5),
        nearest_rank(values, 0.9),
        max(values) if values else None,
    )


def rollup(
    items: Sequence[T],
    dimensions: Sequence[str],
    groupings: Sequence[Sequence[str]],
    key: Callable[[T], Mapping[str, str]],
    measure: Callable[[list[T]], tuple[Cell, ...]],
) -> tuple[Row, ...]:
    """Rows of `measure` per group, for each grouping (the dimensions it names; others ALL).

    The grand total (the empty grouping) is always present, even with no items.
    """
    rows: list[Row] = []
    for grouping in groupings:
        groups: dict[tuple[str, ...], list[T]] = defaultdict(list)
        for item in items:
            values = key(item)
            groups[tuple(values[d] if d in grouping else ALL for d in dimensions)].append(item)
        if not grouping and not groups:
            groups[tuple(ALL for _ in dimensions)] = []
        for dims in sorted(groups):
            rows.append((*dims, *measure(groups[dims])))
    return tuple(rows)


# --------------------------------------------------------------------------- the figures


@dataclass(frozen=True)
class _Window:
    start: datetime
    end: datetime

    def __contains__(self, moment: object) -> bool:
        return isinstance(moment, datetime) and self.start < moment <= self.end


def _submitted_in(referrals: Iterable[Referral], window: _Window) -> list[Referral]:
    return [r for r in referrals if r.submitted is not None and r.submitted.occurred_at in window]


def _volumes(referrals: Sequence[Referral], window: _Window) -> Table:
    dims = ("practice", "modality", "priority")
    population = _submitted_in(referrals, window)

    def key(r: Referral) -> dict[str, str]:
        assert r.submitted is not None
        return {
            "practice": r.submitted.practice_ods,
            "modality": r.submitted.modality.value,
            "priority": r.submitted.priority.value,
        }

    rows = rollup(
        population,
        dims,
        [(), ("practice",), ("modality",), ("priority",), dims],
        key,
        lambda group: (len(group),),
    )
    return Table("volumes", "Referrals received", dims, ("referrals",), rows)


def _held_slots(referrals: Iterable[Referral], window: _Window) -> list[Booking]:
    return [b for r in referrals for b in r.bookings if b.held_at_start and b.start in window]


def _utilisation(
    referrals: Sequence[Referral],
    window: _Window,
    config: ProviderConfig | None,
) -> tuple[Table, Table]:
    dims = ("provider", "site", "modality")
    booked: dict[SlotKey, int] = defaultdict(int)
    per_day: dict[tuple[str, str, date], int] = defaultdict(int)
    for booking in _held_slots(referrals, window):
        a = booking.appointment
        booked[(a.provider_ods, a.site_id, booking.modality)] += 1
        per_day[(a.provider_ods, a.site_id, a.start.astimezone(LONDON).date())] += 1
    capacity: dict[SlotKey, int] = {}
    day_capacity: dict[tuple[str, str, date], int] = {}
    if config is not None and config.has_capacity:
        capacity = config.capacity(window.start, window.end)
        day_capacity = config.capacity_per_day(window.start, window.end)
    keys = sorted(set(booked) | set(capacity))

    def measure(group: list[SlotKey]) -> tuple[Cell, ...]:
        # Only bookings at templates with a known capacity count towards the percentage, so
        # a site missing from the providers file cannot push utilisation over 100%.
        known = [k for k in group if k in capacity]
        offered = sum(capacity[k] for k in known) if known else None
        used_known = sum(booked.get(k, 0) for k in known)
        return (
            sum(booked.get(k, 0) for k in group),
            offered,
            share(used_known, offered) if offered else None,
        )

    rows = rollup(
        keys,
        dims,
        [(), ("provider",), ("provider", "site"), dims],
        lambda k: dict(zip(dims, k, strict=True)),
        measure,
    )
    utilisation = Table(
        "utilisation",
        "Slot utilisation: appointments held against slots offered",
        dims,
        ("booked_slots", "capacity_slots", "utilisation"),
        rows,
    )
    day_rows = tuple(
        (p, s, d.isoformat(), per_day.get((p, s, d), 0), day_capacity.get((p, s, d)))
        for p, s, d in sorted(set(per_day) | set(day_capacity))
    )
    daily = Table(
        "booked_per_day",
        "Appointments held per site per day",
        ("provider", "site", "date"),
        ("booked_slots", "capacity_slots"),
        day_rows,
    )
    return utilisation, daily


def _returns(referrals: Sequence[Referral], window: _Window) -> Table:
    dims = ("practice", "reason")
    population = [(r, ret) for r in referrals for ret in r.returns if ret.occurred_at in window]
    rows = rollup(
        population,
        dims,
        [(), ("reason",), ("practice",), dims],
        lambda pair: {"practice": pair[0].practice, "reason": pair[1].reason.value},
        lambda group: (len(group),),
    )
    return Table(
        "returns", "Referrals returned to the referrer, by reason", dims, ("returns",), rows
    )


def _appropriateness(referrals: Sequence[Referral], window: _Window) -> Table:
    dims = ("practice",)
    population = _submitted_in(referrals, window)

    def measure(group: list[Referral]) -> tuple[Cell, ...]:
        returned = sum(1 for r in group if r.returns)
        return (
            len(group),
            sum(1 for r in group if r.accepted is not None),
            returned,
            sum(1 for r in group if r.queries),
            share(returned, len(group)),
        )

    rows = rollup(population, dims, [(), dims], lambda r: {"practice": r.practice}, measure)
    return Table(
        "appropriateness",
        "Appropriateness: what became of the referrals received",
        dims,
        ("referrals", "accepted", "returned", "queried", "return_rate"),
        rows,
    )


def _guidance(referrals: Sequence[Referral], window: _Window) -> Table:
    dims = ("practice", "guidance")
    population = _submitted_in(referrals, window)

    def key(r: Referral) -> dict[str, str]:
        assert r.submitted is not None
        return {"practice": r.practice, "guidance": r.submitted.guidance.outcome.value}

    def measure(group: list[Referral]) -> tuple[Cell, ...]:
        return (
            len(group),
            sum(1 for r in group if r.accepted is not None),
            sum(1 for r in group if r.returns),
            sum(1 for r in group if r.cancelled is not None),
        )

    rows = rollup(population, dims, [(), ("guidance",), dims], key, measure)
    return Table(
        "guidance",
        "Guidance at the point of referral, and what vetting then did",
        dims,
        ("referrals", "accepted", "returned", "cancelled"),
        rows,
    )


def _paused_seconds(referral: Referral, until: datetime) -> float:
    """Patient-elected delay up to `until`: each deferral pauses the clock from when it was
    asked for to the start of the day the patient is available again; overlaps count once."""
    paused = 0.0
    resume_at: datetime | None = None
    for deferral in referral.deferrals:
        if deferral.occurred_at > until:
            break
        resume = datetime.combine(deferral.available_from, datetime.min.time(), tzinfo=LONDON)
        resume = resume.astimezone(UTC)
        begins = max(deferral.occurred_at, resume_at) if resume_at else deferral.occurred_at
        paused += max(0.0, (resume - begins).total_seconds())
        resume_at = max(resume, resume_at) if resume_at else resume
    return paused


def _deadline(received: datetime, days: int, paused: float) -> datetime:
    """Target days are London calendar days: 10:00 plus 7 days is 10:00, whatever DST did."""
    local = received.astimezone(LONDON) + timedelta(days=days)
    return local.astimezone(UTC) + timedelta(seconds=paused)


def _wait_samples(
    referrals: Sequence[Referral], window: _Window, targets: Targets
) -> list[WaitSample]:
    samples = []
    for r in referrals:
        booking_event = r.latest_booking
        if booking_event is None or booking_event.occurred_at not in window:
            continue
        current = next(
            (b for b in reversed(r.bookings) if b.appointment == booking_event.appointment), None
        )
        if current is not None and not current.held_at_start:
            continue  # cancelled or moved before its time: no appointment to have waited for
        appointment = booking_event.appointment
        priority = r.priority
        received = r.received_at
        if received is not None:
            paused = _paused_seconds(r, booking_event.occurred_at)
            wait = max(0.0, (appointment.start - received).total_seconds() - paused)
            within = appointment.start <= _deadline(received, targets.wait_days(priority), paused)
            desirable = appointment.start <= _deadline(
                received, targets.desirable_days(priority), paused
            )
            agrees: bool | None = (
                abs(wait - booking_event.wait_seconds) <= 60
                and within == booking_event.within_target
            )
            source = "recomputed"
        else:
            wait = booking_event.wait_seconds
            within = booking_event.within_target
            desirable = wait <= targets.desirable_days(priority) * DAY
            agrees, source = None, "event"
        modality = current.modality if current is not None else r.modality
        samples.append(
            WaitSample(
                priority=priority,
                provider=appointment.provider_ods,
                site=appointment.site_id,
                modality=modality,
                wait_days=wait / DAY,
                within_target=within,
                within_desirable=desirable,
                source=source,
                agrees_with_booking=agrees,
            )
        )
    return samples


def _waits(samples: Sequence[WaitSample]) -> Table:
    dims = ("priority", "provider", "site", "modality")

    def measure(group: list[WaitSample]) -> tuple[Cell, ...]:
        within = sum(1 for s in group if s.within_target)
        desirable = sum(1 for s in group if s.within_desirable)
        return (
            len(group),
            *_distribution([s.wait_days for s in group]),
            within,
            share(within, len(group)),
            desirable,
            share(desirable, len(group)),
            sum(1 for s in group if s.agrees_with_booking is False),
        )

    rows = rollup(
        samples,
        dims,
        [
            (),
            ("priority",),
            ("provider",),
            ("priority", "provider"),
            ("priority", "provider", "site"),
            ("priority", "modality"),
        ],
        lambda s: {
            "priority": s.priority,
            "provider": s.provider,
            "site": s.site,
            "modality": s.modality,
        },
        measure,
    )
    return Table(
        "waits",
        "Wait from referral received to appointment, against target",
        dims,
        (
            "appointments",
            "median_days",
            "p90_days",
            "max_days",
            "within_target",
            "share_within_target",
            "within_desirable",
            "share_within_desirable",
            "disagree_with_booking",
        ),
        rows,
    )


def _wait_breaches(referrals: Sequence[Referral], window: _Window) -> Table:
    dims = ("priority",)
    population = [b for r in referrals for b in r.breaches if b.occurred_at in window]
    rows = rollup(
        population,
        dims,
        [(), dims],
        lambda b: {"priority": b.priority.value},
        lambda group: (len(group),),
    )
    return Table(
        "wait_breaches",
        "No appointment within target could be found (capacity shortfall notices)",
        dims,
        ("notices",),
        rows,
    )


@dataclass(frozen=True)
class _Overdue:
    provider: str
    modality: str
    rule: str


def _turnaround_samples(
    referrals: Sequence[Referral], window: _Window
) -> tuple[list[TurnaroundSample], list[_Overdue]]:
    samples: list[TurnaroundSample] = []
    overdue: list[_Overdue] = []
    for r in referrals:
        rule = r.scheduled.rule if r.scheduled is not None else UNKNOWN
        final = r.final
        if final is not None and final.occurred_at in window:
            examined = (
                r.completed.occurred_at
                if r.completed is not None
                else final.examination_completed_at
            )
            within = final.occurred_at <= final.due_at
            samples.append(
                TurnaroundSample(
                    provider=final.provider_ods,
                    modality=r.modality,
                    rule=rule,
                    hours=(final.occurred_at - examined).total_seconds() / 3600,
                    margin_hours=(final.occurred_at - final.due_at).total_seconds() / 3600,
                    within_target=within,
                    agrees_with_report=within == final.within_target,
                    delayed=any(d.occurred_at <= final.occurred_at for d in r.delays),
                )
            )
        elif final is None and r.completed is not None:
            deadline = r.report_deadline()
            if deadline is not None and deadline in window:
                provider = (
                    r.scheduled.provider_ods
                    if r.scheduled is not None
                    else r.completed.provider_ods
                )
                overdue.append(_Overdue(provider, r.modality, rule))
    return samples, overdue


def _turnaround(
    samples: Sequence[TurnaroundSample], overdue: Sequence[_Overdue], targets: Targets
) -> Table:
    dims = ("provider", "modality", "rule")
    items: list[TurnaroundSample | _Overdue] = [*samples, *overdue]

    def measure(group: list[TurnaroundSample | _Overdue]) -> tuple[Cell, ...]:
        issued = [s for s in group if isinstance(s, TurnaroundSample)]
        late_open = len(group) - len(issued)
        within = sum(1 for s in issued if s.within_target)
        ratio = share(within, len(group))
        return (
            len(issued),
            late_open,
            within,
            ratio,
            None if ratio is None else ratio >= targets.turnaround_tolerance,
            *_distribution([s.hours for s in issued]),
            sum(1 for s in issued if s.delayed),
            sum(1 for s in issued if not s.agrees_with_report),
        )

    rows = rollup(
        items,
        dims,
        [(), ("provider",), ("modality",), ("rule",), ("provider", "modality")],
        lambda s: {"provider": s.provider, "modality": s.modality, "rule": s.rule},
        measure,
    )
    return Table(
        "turnaround",
        "Report turnaround (examination to final report) against target, 90% tolerance",
        dims,
        (
            "reports",
            "open_past_deadline",
            "within_target",
            "share_within_target",
            "meets_tolerance",
            "median_hours",
            "p90_hours",
            "max_hours",
            "delayed_mdt_or_specialist",
            "disagree_with_report",
        ),
        rows,
    )


def _dna(referrals: Sequence[Referral], window: _Window) -> Table:
    dims = ("provider", "site", "modality")
    population: list[tuple[Booking, str]] = []
    for r in referrals:
        for booking in r.bookings:
            if not (booking.held_at_start and booking.start in window):
                continue
            if booking.missed:
                outcome = "missed"
            elif any(
                booking.booked_at is None or at >= booking.booked_at for at in r.seen_at_provider
            ):
                outcome = "attended"
            else:
                outcome = "no_outcome"
            population.append((booking, outcome))

    def measure(group: list[tuple[Booking, str]]) -> tuple[Cell, ...]:
        missed = sum(1 for _, o in group if o == "missed")
        return (
            len(group),
            sum(1 for _, o in group if o == "attended"),
            missed,
            sum(1 for _, o in group if o == "no_outcome"),
            share(missed, len(group)),
        )

    rows = rollup(
        population,
        dims,
        [(), ("provider",), ("provider", "site"), ("modality",)],
        lambda pair: {
            "provider": pair[0].appointment.provider_ods,
            "site": pair[0].appointment.site_id,
            "modality": pair[0].modality,
        },
        measure,
    )
    return Table(
        "dna",
        "Did not attend: appointments missed among those that reached their time",
        dims,
        ("appointments_due", "attended", "missed", "no_outcome", "dna_rate"),
        rows,
    )


def _delivery(referrals: Sequence[Referral], window: _Window) -> Table:
    dims = ("finding_flag", "provider")

    @dataclass(frozen=True)
    class Item:
        flag: str
        provider: str
        minutes: float | None
        not_delivered: bool
        failures: int

    items: list[Item] = []
    for r in referrals:
        final = r.final
        if final is None:
            continue
        failures = sum(
            1
            for f in r.delivery_failures
            if f.report_id == final.report_id and f.occurred_at in window
        )
        delivered = r.delivered.get(final.report_id)
        minutes = None
        if delivered is not None and delivered.occurred_at in window:
            minutes = (delivered.occurred_at - final.occurred_at).total_seconds() / 60
        not_delivered = delivered is None and final.occurred_at in window
        if minutes is not None or not_delivered or failures:
            items.append(
                Item(final.finding_flag.value, final.provider_ods, minutes, not_delivered, failures)
            )

    def measure(group: list[Item]) -> tuple[Cell, ...]:
        minutes = [i.minutes for i in group if i.minutes is not None]
        return (
            len(minutes),
            *_distribution(minutes),
            sum(1 for i in group if i.not_delivered),
            sum(i.failures for i in group),
        )

    rows = rollup(
        items,
        dims,
        [(), ("finding_flag",), ("provider",)],
        lambda i: {"finding_flag": i.flag, "provider": i.provider},
        measure,
    )
    return Table(
        "delivery",
        "Delivery of final reports into the GP system (issued to receipt)",
        dims,
        (
            "delivered",
            "median_minutes",
            "p90_minutes",
            "max_minutes",
            "not_delivered",
            "failed_attempts",
        ),
        rows,
    )


def _acknowledgement(referrals: Sequence[Referral], window: _Window) -> Table:
    dims = ("finding_flag", "practice")

    @dataclass(frozen=True)
    class Item:
        flag: str
        practice: str
        hours: float | None = None
        unacknowledged: bool = False
        alert: bool = False
        alert_in_time: bool = False
        escalated: bool = False

    items: list[Item] = []
    for r in referrals:
        final = r.final
        if final is None:
            continue
        flag, practice = final.finding_flag.value, r.practice
        delivered = r.delivered.get(final.report_id)
        acknowledged = r.acknowledged.get(final.report_id)
        if (
            delivered is not None
            and acknowledged is not None
            and acknowledged.occurred_at in window
        ):
            hours = (acknowledged.occurred_at - delivered.occurred_at).total_seconds() / 3600
            items.append(Item(flag, practice, hours=hours))
        if delivered is not None and acknowledged is None and delivered.occurred_at in window:
            items.append(Item(flag, practice, unacknowledged=True))
        for alert in r.alerts:
            if alert.report_id != final.report_id or alert.occurred_at not in window:
                continue
            items.append(
                Item(
                    alert.finding_flag.value,
                    practice,
                    alert=True,
                    alert_in_time=acknowledged is not None
                    and acknowledged.occurred_at <= alert.acknowledge_by,
                    escalated=alert.alert_id in r.escalated_alerts,
                )
            )

    def measure(group: list[Item]) -> tuple[Cell, ...]:
        hours = [i.hours for i in group if i.hours is not None]
        alerts = [i for i in group if i.alert]
        in_time = sum(1 for i in alerts if i.alert_in_time)
        return (
            len(hours),
            *_distribution(hours),
            sum(1 for i in group if i.unacknowledged),
            len(alerts),
            in_time,
            share(in_time, len(alerts)),
            sum(1 for i in alerts if i.escalated),
        )

    rows = rollup(
        items,
        dims,
        [(), ("finding_flag",), ("practice",)],
        lambda i: {"finding_flag": i.flag, "practice": i.practice},
        measure,
    )
    return Table(
        "acknowledgement",
        "Acknowledgement by the practice (receipt to action), and alerts",
        dims,
        (
            "acknowledged",
            "median_hours",
            "p90_hours",
            "max_hours",
            "not_acknowledged",
            "alerts",
            "alerts_acknowledged_in_time",
            "share_alerts_in_time",
            "alerts_escalated",
        ),
        rows,
    )


def _duplicates(referrals: Sequence[Referral], window: _Window) -> Table:
    dims = ("practice", "modality")
    population = [
        r for r in _submitted_in(referrals, window) if r.submitted and r.submitted.duplicate_of
    ]

    def measure(group: list[Referral]) -> tuple[Cell, ...]:
        returned = {
            r.id for r in group if any(x.reason is ev.ReturnReason.DUPLICATE for x in r.returns)
        }
        cancelled = {r.id for r in group if r.cancelled is not None}
        return (
            len(group),
            len(returned),
            len(cancelled),
            len(returned | cancelled),
            sum(1 for r in group if r.completed is not None),
        )

    def key(r: Referral) -> dict[str, str]:
        assert r.submitted is not None
        return {"practice": r.practice, "modality": r.submitted.modality.value}

    rows = rollup(population, dims, [(), ("practice",), ("modality",)], key, measure)
    return Table(
        "duplicates",
        "Possible duplicate imaging flagged at referral, and duplicates prevented",
        dims,
        ("flagged", "returned_as_duplicate", "cancelled", "prevented", "examined_anyway"),
        rows,
    )


# --------------------------------------------------------------------------- the audit


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def compute_audit(
    items: Iterable[Received],
    *,
    window_days: int = 30,
    until: datetime | None = None,
    providers: ProviderConfig | None = None,
    targets: Targets | None = None,
    notes: Sequence[str] = (),
) -> Audit:
    """The rolling audit over (until - window_days, until], from the events alone.

    `until` defaults to the latest occurred_at among the events (never the wall clock);
    events that occurred after `until` are left out, so the audit shows the world as it
    stood at `until`.
    """
    if window_days < 1:
        raise AuditError("the window must be at least 1 day (--window-days)")
    if until is not None and until.tzinfo is None:
        raise AuditError("--until needs a UTC offset, e.g. 2026-03-31T23:59:59Z")
    targets = targets or Targets()
    read = list(items)
    unique = unique_in_order(read)
    if until is None:
        if not unique:
            raise AuditError("there are no events to audit: pass --until to audit an empty window")
        until = unique[-1].event.occurred_at
    until = until.astimezone(UTC)
    considered = [i for i in unique if i.event.occurred_at <= until]
    start = (until.astimezone(LONDON) - timedelta(days=window_days)).astimezone(UTC)
    window = _Window(start, until)
    referrals = sorted(fold(considered).values(), key=lambda r: r.id)

    wait_samples = _wait_samples(referrals, window, targets)
    turnaround_samples, overdue = _turnaround_samples(referrals, window)
    utilisation, daily = _utilisation(referrals, window, providers)
    tables = [
        _volumes(referrals, window),
        utilisation,
        daily,
        _appropriateness(referrals, window),
        _returns(referrals, window),
        _guidance(referrals, window),
        _waits(wait_samples),
        _wait_breaches(referrals, window),
        _turnaround(turnaround_samples, overdue, targets),
        _dna(referrals, window),
        _delivery(referrals, window),
        _acknowledgement(referrals, window),
        _duplicates(referrals, window),
    ]

    remarks = list(notes)
    if len(considered) < len(unique):
        remarks.append(
            f"{_count(len(unique) - len(considered), 'event')} occurred after "
            f"{until.isoformat()} and left out"
        )
    if len(unique) < len(read):
        remarks.append(
            f"{_count(len(read) - len(unique), 'repeated event')} (same event id) counted once"
        )
    partial = sum(1 for r in referrals if r.submitted is None)
    if partial:
        remarks.append(
            f"{_count(partial, 'referral')} with events but no ReferralSubmitted in the set (history "
            "starts before the retained events); they count where their other events allow"
        )
    capacity_known = providers is not None and providers.has_capacity
    if not capacity_known:
        remarks.append(
            "no slot capacity in the providers file: utilisation is reported as appointments "
            "held per site per day (booked_per_day), without a percentage"
        )
    if providers is not None:
        remarks.extend(f"providers file: {p}" for p in providers.problems)
    disagreements = sum(1 for s in wait_samples if s.agrees_with_booking is False)
    if disagreements:
        remarks.append(
            f"waits recomputed from the events that differ from the booking's own figure: "
            f"{disagreements}"
        )

    return Audit(
        window_start=start,
        window_end=until,
        window_days=window_days,
        targets=targets,
        events_read=len(read),
        events_unique=len(unique),
        events_considered=len(considered),
        referrals_seen=len(referrals),
        capacity_known=capacity_known,
        tables={t.name: t for t in tables},
        waits=tuple(wait_samples),
        turnaround=tuple(turnaround_samples),
        notes=tuple(remarks),
        provider_names=dict(providers.names) if providers is not None else {},
    )
