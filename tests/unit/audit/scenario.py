"""A small hand-made month of the pathway, for checking the audit figure by figure.

Eight referrals from two practices to two providers, with a return, a query, a cancelled
duplicate, a did-not-attend and rebooking, a patient-elected deferral, a wait that crosses
the clock change (29 March 2026), a late urgent report with a critical alert, a report left
unreported past its deadline, and one event after the audit's end. test_compute.py
works out every figure by hand from the times below.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import Any, TypeVar

from pathway_schemas import events as ev
from pathway_schemas.base import PathwayEvent
from pathway_schemas.envelope import Received, derived_event_id, from_record, to_record
from pathway_schemas.examples import example

E = TypeVar("E", bound=PathwayEvent)

A, B = "A81001", "B82002"
RXA, NWX = "RXA01", "NWX02"
RIVERSIDE, NORTHWAY = "riverside-main", "northway-clinic"
UNTIL = datetime(2026, 4, 10, 0, 0, tzinfo=UTC)
# The audit's window: 30 London days back from UNTIL (01:00 BST) is 01:00 GMT on 11 March.
WINDOW_START = datetime(2026, 3, 11, 1, 0, tzinfo=UTC)

R1, R2, R3, R4, R5, R6, R7, R8 = (f"ref_{n:032x}" for n in range(1, 9))
EARLIER = f"ref_{99:032x}"


def at(month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(2026, month, day, hour, minute, second, tzinfo=UTC)


def make(model: type[E], **changes: Any) -> E:
    """An event like the example of its type, with these fields changed (and validated)."""
    data = example(model).model_dump()
    data.update(changes)
    return model.model_validate(data)


def received(event: PathwayEvent, number: int) -> Received:
    """Through the real encode and decode path, with a stable event id."""
    record = to_record(
        event,
        topic=event.topic,
        source="/tests/audit",
        event_id=derived_event_id("audit-scenario", str(number)),
        emitted_at=event.occurred_at,
    )
    return from_record(record.headers, record.value, topic=record.topic, key=record.key)


def slot(provider: str, site: str, start: datetime, minutes: int = 10) -> dict[str, Any]:
    from datetime import timedelta

    return {
        "provider_ods": provider,
        "site_id": site,
        "slot_id": f"{provider}.{site}.{start:%Y%m%dT%H%MZ}",
        "start": start,
        "end": start + timedelta(minutes=minutes),
    }


def submitted(
    rid: str,
    when: datetime,
    practice: str,
    code: str,
    modality: str,
    priority: str = "routine",
    guidance: str = "indicated",
    duplicate_of: Sequence[str] = (),
) -> ev.ReferralSubmitted:
    return make(
        ev.ReferralSubmitted,
        referral_id=rid,
        occurred_at=when,
        practice_ods=practice,
        examination_code=code,
        modality=modality,
        ionising=modality in {"XR", "CT"},
        priority=priority,
        guidance={"outcome": guidance},
        duplicate_of=tuple(duplicate_of),
    )


def accepted(
    rid: str,
    when: datetime,
    practice: str,
    code: str,
    modality: str,
    priority: str,
    received_at: datetime,
) -> ev.VettingAccepted:
    return make(
        ev.VettingAccepted,
        referral_id=rid,
        occurred_at=when,
        practice_ods=practice,
        examination_code=code,
        modality=modality,
        ionising=modality in {"XR", "CT"},
        priority=priority,
        referral_received_at=received_at,
    )


def booked(
    rid: str,
    when: datetime,
    appointment: dict[str, Any],
    modality: str,
    code: str,
    priority: str,
    wait: float,
    within: bool,
) -> ev.AppointmentBooked:
    return make(
        ev.AppointmentBooked,
        referral_id=rid,
        occurred_at=when,
        appointment=appointment,
        modality=modality,
        examination_code=code,
        priority=priority,
        wait_seconds=wait,
        within_target=within,
    )


def completed(
    rid: str, when: datetime, provider: str, site: str, modality: str, code: str
) -> ev.ExaminationCompleted:
    return make(
        ev.ExaminationCompleted,
        referral_id=rid,
        occurred_at=when,
        provider_ods=provider,
        site_id=site,
        modality=modality,
        examination_code=code,
    )


def scheduled(
    rid: str, when: datetime, due: datetime, rule: str, provider: str
) -> ev.ReportingScheduled:
    return make(
        ev.ReportingScheduled,
        referral_id=rid,
        occurred_at=when,
        due_at=due,
        rule=rule,
        provider_ods=provider,
    )


def final(
    rid: str,
    when: datetime,
    report_id: str,
    provider: str,
    practice: str,
    flag: str,
    examined: datetime,
    due: datetime,
) -> ev.ReportIssued:
    return make(
        ev.ReportIssued,
        referral_id=rid,
        occurred_at=when,
        report_id=report_id,
        status="final",
        provider_ods=provider,
        practice_ods=practice,
        finding_flag=flag,
        examination_completed_at=examined,
        due_at=due,
        within_target=when <= due,
    )


def delivered(rid: str, when: datetime, report_id: str, practice: str) -> ev.ReportDelivered:
    return make(
        ev.ReportDelivered,
        referral_id=rid,
        occurred_at=when,
        report_id=report_id,
        practice_ods=practice,
    )


def acknowledged(rid: str, when: datetime, report_id: str) -> ev.ReportAcknowledged:
    return make(ev.ReportAcknowledged, referral_id=rid, occurred_at=when, report_id=report_id)


def scenario_events() -> list[PathwayEvent]:
    r1_slot = slot(RXA, RIVERSIDE, at(3, 18, 10))
    r2_slot = slot(NWX, NORTHWAY, at(4, 1, 9, 30), minutes=15)
    r6_first, r6_second = slot(RXA, RIVERSIDE, at(3, 19, 14)), slot(RXA, RIVERSIDE, at(3, 26, 14))
    r7_first, r7_second = slot(RXA, RIVERSIDE, at(3, 30, 9)), slot(RXA, RIVERSIDE, at(4, 2, 9))
    r8_slot = slot(RXA, RIVERSIDE, at(2, 25, 10))
    return [
        # R1: routine chest X-ray at A, seen in 2 days 1 hour, reported next day, acknowledged.
        submitted(R1, at(3, 16, 9), A, "XCHES", "XR"),
        accepted(R1, at(3, 16, 10), A, "XCHES", "XR", "routine", at(3, 16, 9)),
        booked(R1, at(3, 16, 11), r1_slot, "XR", "XCHES", "routine", 176400.0, True),
        make(
            ev.PatientArrived,
            referral_id=R1,
            occurred_at=at(3, 18, 9, 55),
            provider_ods=RXA,
            site_id=RIVERSIDE,
        ),
        completed(R1, at(3, 18, 10, 15), RXA, RIVERSIDE, "XR", "XCHES"),
        scheduled(R1, at(3, 18, 10, 16), at(3, 19, 23, 59, 59), "next_working_day", RXA),
        final(
            R1,
            at(3, 19, 9, 15),
            "RPT-R1",
            RXA,
            A,
            "routine",
            at(3, 18, 10, 15),
            at(3, 19, 23, 59, 59),
        ),
        delivered(R1, at(3, 19, 9, 20), "RPT-R1", A),
        acknowledged(R1, at(3, 20, 9, 20), "RPT-R1"),
        # R2: urgent CT at A. Received 10:00 GMT on 25 March; 7 London days later is 10:00 BST
        # (09:00 UTC) on 1 April, so 09:30 UTC misses the target although it is under 7x24 h.
        submitted(R2, at(3, 25, 10), A, "CCHES", "CT", priority="urgent"),
        accepted(R2, at(3, 25, 11), A, "CCHES", "CT", "urgent", at(3, 25, 10)),
        make(
            ev.WaitTargetBreached,
            referral_id=R2,
            occurred_at=at(3, 25, 11, 30),
            priority="urgent",
            target_days=7,
            earliest_available=at(4, 1, 9, 30),
        ),
        booked(R2, at(3, 25, 12), r2_slot, "CT", "CCHES", "urgent", 603000.0, True),
        completed(R2, at(4, 1, 9, 50), NWX, NORTHWAY, "CT", "CCHES"),
        scheduled(R2, at(4, 1, 9, 51), at(4, 1, 10, 50), "urgent", NWX),
        final(
            R2, at(4, 1, 11, 20), "RPT-R2", NWX, A, "critical", at(4, 1, 9, 50), at(4, 1, 10, 50)
        ),
        make(
            ev.AlertRaised,
            referral_id=R2,
            occurred_at=at(4, 1, 11, 21),
            alert_id="alert-r2",
            report_id="RPT-R2",
            finding_flag="critical",
            acknowledge_by=at(4, 1, 12, 21),
        ),
        make(
            ev.ReportDeliveryFailed,
            referral_id=R2,
            occurred_at=at(4, 1, 11, 21, 30),
            report_id="RPT-R2",
            practice_ods=A,
            attempts=1,
        ),
        delivered(R2, at(4, 1, 11, 22), "RPT-R2", A),
        acknowledged(R2, at(4, 1, 11, 52), "RPT-R2"),
        # R3: returned as not indicated (guidance had said so).
        submitted(R3, at(3, 20, 9), B, "XKNEL", "XR", guidance="not_indicated"),
        make(ev.VettingReturned, referral_id=R3, occurred_at=at(3, 20, 14), reason="not_indicated"),
        # R4: flagged as a possible duplicate, returned as a duplicate.
        submitted(R4, at(3, 23, 9), B, "UABDO", "US", duplicate_of=[EARLIER]),
        make(ev.VettingReturned, referral_id=R4, occurred_at=at(3, 23, 12), reason="duplicate"),
        # R5: flagged, queried, then cancelled by the referrer.
        submitted(
            R5,
            at(3, 24, 9),
            A,
            "MKNEL",
            "MR",
            guidance="more_information_needed",
            duplicate_of=[EARLIER],
        ),
        make(ev.VettingQueried, referral_id=R5, occurred_at=at(3, 24, 10)),
        make(ev.ReferralCancelled, referral_id=R5, occurred_at=at(3, 24, 15), reason="duplicate"),
        # R6: did not attend on 19 March, rebooked for 26 March (14 days 5 hours: late),
        # examined, and still unreported at the audit's end (its report comes after it).
        submitted(R6, at(3, 12, 9), A, "XHIPL", "XR"),
        accepted(R6, at(3, 12, 9, 5), A, "XHIPL", "XR", "routine", at(3, 12, 9)),
        booked(R6, at(3, 12, 10), r6_first, "XR", "XHIPL", "routine", 626400.0, True),
        make(
            ev.AppointmentMissed,
            referral_id=R6,
            occurred_at=at(3, 19, 14, 30),
            appointment=r6_first,
            dna_count=1,
            next_step="rebook",
        ),
        make(
            ev.AppointmentRebooked,
            referral_id=R6,
            occurred_at=at(3, 19, 15),
            previous=r6_first,
            appointment=r6_second,
            reason="did_not_attend",
            wait_seconds=1227600.0,
            within_target=False,
        ),
        completed(R6, at(3, 26, 14, 12), RXA, RIVERSIDE, "XR", "XHIPL"),
        scheduled(R6, at(3, 26, 14, 13), at(3, 27, 23, 59, 59), "next_working_day", RXA),
        final(
            R6, at(4, 11, 9), "RPT-R6", RXA, A, "routine", at(3, 26, 14, 12), at(3, 27, 23, 59, 59)
        ),
        # R7: the patient defers to 24 March (6.5 days paused) and is rebooked for 2 April:
        # 9.5 days counted, within 14 but not 7; no outcome recorded by the audit's end.
        submitted(R7, at(3, 17, 9), B, "XCHES", "XR"),
        accepted(R7, at(3, 17, 9, 30), B, "XCHES", "XR", "routine", at(3, 17, 9)),
        booked(R7, at(3, 17, 10), r7_first, "XR", "XCHES", "routine", 1123200.0, True),
        make(
            ev.AppointmentDeferred,
            referral_id=R7,
            occurred_at=at(3, 17, 12),
            reason="Caring responsibilities",
            available_from=date(2026, 3, 24),
            previous=r7_first,
        ),
        booked(R7, at(3, 24, 8), r7_second, "XR", "XCHES", "routine", 820800.0, True),
        # R8: received and examined in February; its final report (delayed for MDT) comes in
        # the window, 15 days after the examination, with an unacknowledged, escalated alert.
        submitted(R8, at(2, 20, 9), A, "XCHES", "XR"),
        booked(R8, at(2, 20, 10), r8_slot, "XR", "XCHES", "routine", 435600.0, True),
        completed(R8, at(2, 25, 10), RXA, RIVERSIDE, "XR", "XCHES"),
        scheduled(R8, at(2, 25, 10, 1), at(2, 26, 18), "next_working_day", RXA),
        make(
            ev.ReportDelayed,
            referral_id=R8,
            occurred_at=at(2, 26, 12),
            reason="mdt",
            new_due_at=at(3, 2, 18),
            provider_ods=RXA,
            practice_ods=A,
        ),
        final(
            R8,
            at(3, 12, 10),
            "RPT-R8",
            RXA,
            A,
            "unexpected_significant",
            at(2, 25, 10),
            at(3, 2, 18),
        ),
        delivered(R8, at(3, 12, 10, 30), "RPT-R8", A),
        make(
            ev.AlertRaised,
            referral_id=R8,
            occurred_at=at(3, 12, 10, 31),
            alert_id="alert-r8",
            report_id="RPT-R8",
            finding_flag="unexpected_significant",
            acknowledge_by=at(3, 19, 10, 31),
        ),
        make(
            ev.AlertEscalated,
            referral_id=R8,
            occurred_at=at(3, 19, 11),
            alert_id="alert-r8",
            level=1,
            acknowledge_by=None,
        ),
    ]


def scenario() -> list[Received]:
    return [received(event, n) for n, event in enumerate(scenario_events())]


#: Riverside X-ray: one room, 60-minute slots, 09:00-11:00 London on weekdays only, closed on
#: bank holidays (Good Friday 3 April and Easter Monday 6 April 2026).
PROVIDERS_FILE: dict[str, Any] = {
    "providers": [
        {
            "ods": RXA,
            "name": "Riverside Imaging",
            "sites": [
                {
                    "id": RIVERSIDE,
                    "name": "Riverside main",
                    "closed_on_bank_holidays": True,
                    "opening_hours": {
                        **{
                            d: [{"open": "09:00", "close": "11:00"}]
                            for d in ("mon", "tue", "wed", "thu", "fri")
                        },
                        "sat": [],
                        "sun": [],
                    },
                    "modalities": {"XR": {"rooms": 1, "slot_minutes": 60}},
                }
            ],
        },
        {"ods": NWX, "name": "Northway Diagnostics"},
    ]
}
