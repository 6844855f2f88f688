"""One referral's end-to-end timeline, and its state derived from the events seen.

The timeline is kept in a total order that does not depend on arrival: occurred-at (at
millisecond resolution, what the store keeps), then the event's step along the pathway,
then its id. The state is a function of that ordered set only, so events that arrive out of
order across families, or twice, give the same state:

- the milestones from the examination on (examined, reported, delivered, acknowledged) are
  facts that never go back: the highest one seen wins, whatever their order;
- otherwise a cancellation wins;
- otherwise the pre-examination loop (vetting queries and returns, offers, bookings,
  deferrals, did-not-attend, abandonment) is folded in timeline order, where each event
  moves the state only from the states it can follow; so a booking whose clock ran a little
  behind the vetting acceptance still leaves the referral booked.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from pathway_schemas import events as ev
from pathway_schemas.base import PathwayEvent
from pathway_schemas.envelope import Envelope


class ReferralState(StrEnum):
    SUBMITTED = "submitted"
    AWAITING_VETTING = "awaiting_vetting"
    QUERIED = "queried"
    RETURNED = "returned"
    ACCEPTED = "accepted"
    OFFERED = "offered"
    BOOKED = "booked"
    DEFERRED = "deferred"
    DID_NOT_ATTEND = "did_not_attend"
    WALK_IN = "walk_in"
    RETURNED_AFTER_DNA = "returned_after_dna"
    ARRIVED = "arrived"
    ABANDONED = "abandoned"
    EXAMINED = "examined"
    REPORTED_PRELIMINARY = "reported_preliminary"
    REPORTED = "reported"
    DELIVERED = "delivered"
    ACKNOWLEDGED = "acknowledged"
    CANCELLED = "cancelled"


S = ReferralState

# Milestones in rank order: once one is seen the referral is at least there.
MILESTONES = (S.EXAMINED, S.REPORTED_PRELIMINARY, S.REPORTED, S.DELIVERED, S.ACKNOWLEDGED)
EXAMINATION_DONE = frozenset(MILESTONES)
# The examination has begun or happened: too late to cancel.
CANCEL_TOO_LATE = frozenset({S.ARRIVED, *MILESTONES})
# Not open: no duplicate warning for these unless examined within the window.
CLOSED = frozenset({S.CANCELLED, S.ABANDONED, S.RETURNED_AFTER_DNA, *MILESTONES})

_VETTING_OPEN = frozenset({S.SUBMITTED, S.AWAITING_VETTING, S.QUERIED})
_BOOKING = frozenset({S.OFFERED, S.BOOKED, S.DEFERRED, S.DID_NOT_ATTEND, S.WALK_IN})
_BOOKABLE = _VETTING_OPEN | {S.ACCEPTED, S.ABANDONED} | _BOOKING
_PRE_EXAMINATION = _BOOKABLE | {S.RETURNED, S.RETURNED_AFTER_DNA, S.ARRIVED}

# Pathway order: breaks ties between events that carry the same occurred-at.
STEP_ORDER: tuple[type[PathwayEvent], ...] = (
    ev.ReferralSubmitted,
    ev.VettingQueued,
    ev.VettingQueried,
    ev.ReferralQueryAnswered,
    ev.VettingReturned,
    ev.ReferralAmended,
    ev.VettingAccepted,
    ev.WalkInAuthorised,
    # A did-not-attend comes before the rebooking or new offers it causes in the same instant.
    ev.AppointmentMissed,
    ev.AppointmentsOffered,
    ev.WaitTargetBreached,
    ev.AppointmentDeferred,
    ev.AppointmentBooked,
    ev.AppointmentRebooked,
    ev.AppointmentCancelled,
    ev.ReferralReturnedAfterDna,
    ev.ReferralCancelled,
    ev.PatientArrived,
    ev.ExaminationAbandoned,
    ev.ExaminationCompleted,
    ev.ReportingScheduled,
    ev.ReportDelayed,
    ev.ReportIssued,
    ev.ReportAddended,
    ev.AlertRaised,
    ev.AlertEscalated,
    ev.ReportDelivered,
    ev.ReportDeliveryFailed,
    ev.ReportAcknowledged,
    ev.PatientNotified,
    ev.ReferrerNotified,
)
_STEP = {cls.event_type: index for index, cls in enumerate(STEP_ORDER)}

# Which payload fields a timeline entry keeps: closed values and opaque ids, never free
# text or patient identifiers (the record holds those once).
_DETAIL_FIELDS: dict[str, tuple[str, ...]] = {
    ev.ReferralSubmitted.event_type: ("examination_code", "priority", "channel"),
    ev.ReferralAmended.event_type: ("examination_code", "priority", "amended_by"),
    ev.ReferralQueryAnswered.event_type: ("query_id", "answered_by"),
    ev.ReferralCancelled.event_type: ("reason", "cancelled_by"),
    ev.VettingQueued.event_type: ("priority", "modality"),
    ev.VettingAccepted.event_type: ("priority", "modality", "protocol", "decided_by", "automatic"),
    ev.VettingReturned.event_type: ("reason", "decided_by"),
    ev.VettingQueried.event_type: ("query_id", "decided_by"),
    ev.AppointmentsOffered.event_type: ("choose_by", "target_days"),
    ev.AppointmentBooked.event_type: ("appointment", "booked_by", "within_target"),
    ev.AppointmentRebooked.event_type: ("appointment", "reason", "within_target"),
    ev.AppointmentDeferred.event_type: ("available_from",),
    ev.AppointmentCancelled.event_type: ("appointment", "reason"),
    ev.AppointmentMissed.event_type: ("appointment", "dna_count", "next_step"),
    ev.ReferralReturnedAfterDna.event_type: ("dna_count",),
    ev.WalkInAuthorised.event_type: ("provider_ods", "site_id", "valid_from", "valid_until"),
    ev.WaitTargetBreached.event_type: ("priority", "target_days"),
    ev.PatientArrived.event_type: ("provider_ods", "site_id"),
    ev.ExaminationCompleted.event_type: ("provider_ods", "site_id", "modality", "examination_code"),
    ev.ExaminationAbandoned.event_type: ("provider_ods",),
    ev.ReportingScheduled.event_type: ("provider_ods", "due_at", "rule"),
    ev.ReportIssued.event_type: (
        "provider_ods",
        "report_id",
        "status",
        "finding_flag",
        "within_target",
    ),
    ev.ReportAddended.event_type: ("provider_ods", "report_id", "addendum_id", "finding_flag"),
    ev.ReportDelayed.event_type: ("provider_ods", "reason", "new_due_at"),
    ev.ReportDelivered.event_type: ("report_id", "addendum_id", "receipt_id", "transport"),
    ev.ReportDeliveryFailed.event_type: ("report_id", "attempts", "error_class"),
    ev.ReportAcknowledged.event_type: ("report_id", "acknowledged_by"),
    ev.AlertRaised.event_type: ("alert_id", "finding_flag", "recipient_role"),
    ev.AlertEscalated.event_type: ("alert_id", "level", "recipient_role"),
    ev.PatientNotified.event_type: ("notice", "channel"),
    ev.ReferrerNotified.event_type: ("notice", "channel"),
}

_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")


def to_millis(moment: datetime) -> datetime:
    """The store keeps milliseconds: compare and sort at that resolution, before and after."""
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def trace_id(traceparent: str | None) -> str | None:
    match = _TRACEPARENT.match(traceparent or "")
    if match is None or match.group(1) == "0" * 32:
        return None
    return match.group(1)


def _flat(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value.value) if isinstance(value, StrEnum) else str(value)


def describe(event: PathwayEvent) -> dict[str, str]:
    detail: dict[str, str] = {}
    for name in _DETAIL_FIELDS.get(event.event_type, ()):
        value = getattr(event, name, None)
        if value is None:
            continue
        if isinstance(value, ev.Appointment):
            detail.update(
                provider_ods=value.provider_ods, site_id=value.site_id, start=_flat(value.start)
            )
        else:
            detail[name] = _flat(value)
    return detail


@dataclass(frozen=True)
class TimelineEntry:
    event_id: str
    event_type: str
    occurred_at: datetime
    emitted_at: datetime
    received_at: datetime
    actor: str
    trace_id: str | None = None
    detail: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, event: PathwayEvent, envelope: Envelope, received_at: datetime) -> TimelineEntry:
        return cls(
            event_id=envelope.id,
            event_type=envelope.type,
            occurred_at=to_millis(event.occurred_at),
            emitted_at=to_millis(envelope.time),
            received_at=to_millis(received_at),
            actor=envelope.source,
            trace_id=trace_id(envelope.trace.get("traceparent")),
            detail=describe(event),
        )

    @property
    def sort_key(self) -> tuple[datetime, int, str]:
        return (self.occurred_at, _STEP.get(self.event_type, len(_STEP)), self.event_id)

    def to_document(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "event_type": self.event_type,
            "occurred_at": self.occurred_at,
            "emitted_at": self.emitted_at,
            "received_at": self.received_at,
            "actor": self.actor,
            "trace_id": self.trace_id,
            "detail": dict(self.detail),
        }

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> TimelineEntry:
        return cls(
            event_id=document["event_id"],
            event_type=document["event_type"],
            occurred_at=document["occurred_at"],
            emitted_at=document["emitted_at"],
            received_at=document["received_at"],
            actor=document["actor"],
            trace_id=document.get("trace_id"),
            detail=dict(document.get("detail") or {}),
        )


def append(
    timeline: Iterable[TimelineEntry], entry: TimelineEntry
) -> tuple[tuple[TimelineEntry, ...], bool]:
    """The timeline with this entry in its place; False when its event id is there already."""
    entries = tuple(timeline)
    if any(e.event_id == entry.event_id for e in entries):
        return entries, False
    return tuple(sorted((*entries, entry), key=lambda e: e.sort_key)), True


@dataclass(frozen=True)
class Projection:
    """What the record keeps from its timeline, for reads and for the duplicate check."""

    state: ReferralState
    open: bool
    examined_at: datetime | None
    open_query_id: str | None
    return_event_id: str | None
    providers: tuple[str, ...]


_T = {cls.__name__: cls.event_type for cls in STEP_ORDER}


def _milestone(entry: TimelineEntry) -> ReferralState | None:
    kind = entry.event_type
    if kind in (_T["ExaminationCompleted"], _T["ReportingScheduled"], _T["ReportDelayed"]):
        return S.EXAMINED
    if kind == _T["ReportIssued"]:
        return (
            S.REPORTED
            if entry.detail.get("status") == ev.ReportStatus.FINAL.value
            else S.REPORTED_PRELIMINARY
        )
    if kind in (_T["ReportAddended"], _T["AlertRaised"], _T["AlertEscalated"]):
        return S.REPORTED_PRELIMINARY
    if kind in (_T["ReportDelivered"], _T["ReportDeliveryFailed"]):
        return S.REPORTED if kind == _T["ReportDeliveryFailed"] else S.DELIVERED
    if kind == _T["ReportAcknowledged"]:
        return S.ACKNOWLEDGED
    return None


def _step(state: ReferralState, entry: TimelineEntry) -> ReferralState:
    """The pre-examination state after one more event; unchanged when it cannot follow."""
    kind = entry.event_type
    if kind == _T["VettingQueued"]:
        return S.AWAITING_VETTING if state is S.SUBMITTED else state
    if kind == _T["VettingQueried"]:
        return S.QUERIED if state in _VETTING_OPEN else state
    if kind == _T["ReferralQueryAnswered"]:
        return S.AWAITING_VETTING if state is S.QUERIED else state
    if kind == _T["VettingReturned"]:
        return S.RETURNED if state in _VETTING_OPEN else state
    if kind == _T["ReferralAmended"]:
        return S.AWAITING_VETTING if state is S.RETURNED else state
    if kind == _T["VettingAccepted"]:
        return S.ACCEPTED if state in _VETTING_OPEN else state
    booking = {
        _T["AppointmentsOffered"]: S.OFFERED,
        _T["AppointmentBooked"]: S.BOOKED,
        _T["AppointmentRebooked"]: S.BOOKED,
        _T["AppointmentDeferred"]: S.DEFERRED,
        _T["WalkInAuthorised"]: S.WALK_IN,
        _T["ReferralReturnedAfterDna"]: S.RETURNED_AFTER_DNA,
    }
    if kind in booking:
        return booking[kind] if state in _BOOKABLE else state
    if kind == _T["AppointmentMissed"]:
        if state not in _BOOKABLE:
            return state
        return (
            S.RETURNED_AFTER_DNA
            if entry.detail.get("next_step") == "return_to_referrer"
            else S.DID_NOT_ATTEND
        )
    if kind == _T["AppointmentCancelled"]:
        # The slot was freed but the referral still needs one (a cancellation or return
        # of the referral itself has its own event).
        if (
            entry.detail.get("reason") in ("patient_request", "provider_request")
            and state in _BOOKING
        ):
            return S.ACCEPTED
        return state
    if kind == _T["PatientArrived"]:
        return S.ARRIVED if state in _PRE_EXAMINATION else state
    if kind == _T["ExaminationAbandoned"]:
        return S.ABANDONED if state in _PRE_EXAMINATION else state
    return state


def project(timeline: Iterable[TimelineEntry]) -> Projection:
    """The referral's state and derived fields from its timeline (any order in, same answer)."""
    entries = sorted(timeline, key=lambda e: e.sort_key)
    milestone_rank = -1
    examined_at: datetime | None = None
    cancelled = False
    state = S.SUBMITTED
    query_id: str | None = None
    return_id: str | None = None
    providers: set[str] = set()
    for entry in entries:
        if "provider_ods" in entry.detail:
            providers.add(entry.detail["provider_ods"])
        milestone = _milestone(entry)
        if milestone is not None:
            milestone_rank = max(milestone_rank, MILESTONES.index(milestone))
            examined_at = (
                entry.occurred_at if examined_at is None else min(examined_at, entry.occurred_at)
            )
            continue
        if entry.event_type == _T["ReferralCancelled"]:
            cancelled = True
            continue
        before = state
        state = _step(state, entry)
        if state is S.QUERIED and entry.event_type == _T["VettingQueried"]:
            query_id = entry.detail.get("query_id")
        if state is S.RETURNED and before is not S.RETURNED:
            return_id = entry.event_id
    if milestone_rank >= 0:
        final = MILESTONES[milestone_rank]
    elif cancelled:
        final = S.CANCELLED
    else:
        final = state
    return Projection(
        state=final,
        open=final not in CLOSED,
        examined_at=examined_at,
        open_query_id=query_id if final is S.QUERIED else None,
        return_event_id=return_id if final is S.RETURNED else None,
        providers=tuple(sorted(providers)),
    )
