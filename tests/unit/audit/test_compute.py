"""Every figure of the audit against the hand-made scenario, worked out by hand.

Window: 30 London days back from 00:00 UTC on 10 April 2026 (01:00 BST), that is from
01:00 GMT on 11 March, exclusive, to 00:00 UTC on 10 April, inclusive.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pathway_cli.audit.capacity import load_providers, parse_providers
from pathway_cli.audit.compute import (
    ALL,
    Audit,
    AuditError,
    Targets,
    compute_audit,
    nearest_rank,
)
from pathway_schemas.values import Modality
from tests.unit.audit import scenario as sc

DAY_HOURS = 24.0


@pytest.fixture(scope="module")
def audit() -> Audit:
    return compute_audit(
        sc.scenario(), until=sc.UNTIL, providers=parse_providers(sc.PROVIDERS_FILE)
    )


def test_window_is_thirty_london_days_ending_at_until(audit: Audit) -> None:
    assert audit.window_end == sc.UNTIL
    # The clocks went forward on 29 March: 30 London days is 30 x 24 h less an hour.
    assert audit.window_start == sc.WINDOW_START
    assert audit.events_read == audit.events_unique == len(sc.scenario_events())
    # R6's final report on 11 April happened after the end: the audit does not see it.
    assert audit.events_considered == audit.events_unique - 1
    assert any("after 2026-04-10" in note for note in audit.notes)


def test_volumes_count_referrals_received_in_the_window_by_practice_modality_priority(
    audit: Audit,
) -> None:
    volumes = audit.tables["volumes"]
    # R1-R7 were received in the window; R8 on 20 February was not.
    assert volumes.row()["referrals"] == 7
    assert volumes.row(practice=sc.A)["referrals"] == 4  # R1 R2 R5 R6
    assert volumes.row(practice=sc.B)["referrals"] == 3  # R3 R4 R7
    assert volumes.row(modality="XR")["referrals"] == 4  # R1 R3 R6 R7
    assert volumes.row(modality="CT")["referrals"] == 1
    assert volumes.row(priority="urgent")["referrals"] == 1
    assert volumes.row(priority="routine")["referrals"] == 6
    assert volumes.row(practice=sc.A, modality="XR", priority="routine")["referrals"] == 2
    assert volumes.row(practice=sc.B, modality="US", priority="routine")["referrals"] == 1


def test_utilisation_is_held_appointments_against_slots_from_the_templates(
    audit: Audit,
) -> None:
    table = audit.tables["utilisation"]
    # Held and starting in the window: R1 18/3, R6 19/3 (missed: still used), R6 26/3,
    # R7 2/4 at Riverside; R2 1/4 at Northway. R7's 30/3 slot was given up on 17/3.
    riverside = table.row(provider=sc.RXA, site=sc.RIVERSIDE, modality="XR")
    # Capacity: 2 one-hour slots a weekday, 22 weekdays from 11 March to 9 April, less Good
    # Friday and Easter Monday (closed on bank holidays) = 20 days = 40 slots.
    assert riverside == {**riverside, "booked_slots": 4, "capacity_slots": 40}
    assert riverside["utilisation"] == pytest.approx(4 / 40)
    northway = table.row(provider=sc.NWX)
    assert northway["booked_slots"] == 1
    assert northway["capacity_slots"] is None
    assert northway["utilisation"] is None
    total = table.row()
    # Northway's slot has no known capacity, so it is not in the percentage.
    assert total["booked_slots"] == 5
    assert total["utilisation"] == pytest.approx(4 / 40)
    assert audit.capacity_known


def test_booked_per_day_lists_every_open_day_with_its_capacity(audit: Audit) -> None:
    days = {
        (r["provider"], r["date"]): (r["booked_slots"], r["capacity_slots"])
        for r in audit.tables["booked_per_day"].records()
    }
    assert days[(sc.RXA, "2026-03-18")] == (1, 2)
    assert days[(sc.RXA, "2026-03-19")] == (1, 2)
    assert days[(sc.RXA, "2026-03-20")] == (0, 2)
    assert days[(sc.NWX, "2026-04-01")] == (1, None)
    assert (sc.RXA, "2026-04-03") not in days  # Good Friday
    assert (sc.RXA, "2026-03-21") not in days  # a Saturday: closed
    assert sum(1 for p, _ in days if p == sc.RXA) == 20


def test_appropriateness_returns_and_guidance_by_practice(audit: Audit) -> None:
    appropriateness = audit.tables["appropriateness"]
    assert appropriateness.row(practice=sc.A) == {
        "practice": sc.A,
        "referrals": 4,
        "accepted": 3,  # R1 R2 R6
        "returned": 0,
        "queried": 1,  # R5
        "return_rate": 0.0,
    }
    b = appropriateness.row(practice=sc.B)
    assert (b["referrals"], b["accepted"], b["returned"]) == (3, 1, 2)  # R7; R3 R4
    assert b["return_rate"] == pytest.approx(2 / 3)
    assert appropriateness.row()["return_rate"] == pytest.approx(2 / 7)

    returns = audit.tables["returns"]
    assert returns.row()["returns"] == 2
    assert returns.row(practice=sc.B, reason="not_indicated")["returns"] == 1
    assert returns.row(practice=sc.B, reason="duplicate")["returns"] == 1
    with pytest.raises(KeyError):
        returns.row(practice=sc.A)

    guidance = audit.tables["guidance"]
    indicated = guidance.row(guidance="indicated")  # R1 R2 R4 R6 R7
    assert (indicated["referrals"], indicated["accepted"], indicated["returned"]) == (5, 4, 1)
    assert guidance.row(guidance="not_indicated")["returned"] == 1  # R3
    assert guidance.row(practice=sc.A, guidance="more_information_needed")["cancelled"] == 1


def test_waits_are_recomputed_in_london_days_less_patient_elected_delay(audit: Audit) -> None:
    waits = audit.tables["waits"]
    # R1 2 d 1 h (in target); R2 6 d 23.5 h, urgent, but 7 London days from 10:00 GMT end
    # at 09:00 UTC after the clocks change, so 09:30 UTC is late; R6 rebooked after a DNA,
    # 14 d 5 h (late); R7 16 days less 6.5 days deferred = 9.5 d (within 14, not within 7).
    r1, r2, r6, r7 = 2 + 1 / 24, 6 + 23.5 / 24, 14 + 5 / 24, 9.5
    total = waits.row()
    assert total["appointments"] == 4
    assert total["median_days"] == pytest.approx(r2)  # nearest rank: the 2nd of 4
    assert total["p90_days"] == pytest.approx(r6)  # the 4th of 4
    assert total["max_days"] == pytest.approx(r6)
    assert (total["within_target"], total["share_within_target"]) == (2, 0.5)  # R1 R7
    assert (total["within_desirable"], total["share_within_desirable"]) == (1, 0.25)  # R1
    # The booking said R2 was within target (7 x 24 h): the audit's recomputation disagrees.
    assert total["disagree_with_booking"] == 1

    routine = waits.row(priority="routine", provider=sc.RXA, site=sc.RIVERSIDE)
    assert routine["appointments"] == 3
    assert routine["median_days"] == pytest.approx(r7)
    assert routine["share_within_target"] == pytest.approx(2 / 3)
    assert routine["share_within_desirable"] == pytest.approx(1 / 3)
    urgent = waits.row(priority="urgent", modality="CT")
    assert (urgent["appointments"], urgent["within_target"]) == (1, 0)
    assert urgent["max_days"] == pytest.approx(r2)
    assert sorted(s.wait_days for s in audit.waits) == pytest.approx(sorted([r1, r2, r6, r7]))
    assert audit.tables["wait_breaches"].row(priority="urgent")["notices"] == 1


def test_turnaround_counts_open_reports_past_deadline_against_the_90_percent_tolerance(
    audit: Audit,
) -> None:
    turnaround = audit.tables["turnaround"]
    # Final reports in the window: R1 23 h (on time), R2 1.5 h (urgent, 30 min late),
    # R8 360 h (late, after an MDT delay). R6 was examined but its deadline (27 March)
    # passed with no report by the end: counted as outside target.
    total = turnaround.row()
    assert (total["reports"], total["open_past_deadline"], total["within_target"]) == (3, 1, 1)
    assert total["share_within_target"] == pytest.approx(1 / 4)
    assert total["meets_tolerance"] is False
    assert total["median_hours"] == pytest.approx(23.0)
    assert total["p90_hours"] == pytest.approx(15 * DAY_HOURS)
    assert total["delayed_mdt_or_specialist"] == 1
    assert total["disagree_with_report"] == 0

    riverside = turnaround.row(provider=sc.RXA, modality="XR")
    assert (riverside["reports"], riverside["open_past_deadline"]) == (2, 1)
    assert riverside["share_within_target"] == pytest.approx(1 / 3)
    urgent = turnaround.row(rule="urgent")
    assert (urgent["reports"], urgent["within_target"], urgent["median_hours"]) == (1, 0, 1.5)
    margins = sorted(s.margin_hours for s in audit.turnaround)
    # R1 14 h 44 m 59 s early; R2 30 minutes late; R8 9 days 16 hours after its new deadline.
    assert margins == pytest.approx([-(14 + 44 / 60 + 59 / 3600), 0.5, 9 * DAY_HOURS + 16])


def test_dna_rate_is_missed_over_appointments_that_reached_their_time(audit: Audit) -> None:
    dna = audit.tables["dna"]
    # Due: R1 (attended), R2 (attended), R6 19/3 (missed), R6 26/3 (attended), R7 2/4 (no
    # arrival, completion or did-not-attend recorded).
    assert dna.row() == {
        "provider": ALL,
        "site": ALL,
        "modality": ALL,
        "appointments_due": 5,
        "attended": 3,
        "missed": 1,
        "no_outcome": 1,
        "dna_rate": pytest.approx(0.2),
    }
    assert dna.row(provider=sc.RXA, site=sc.RIVERSIDE)["dna_rate"] == pytest.approx(0.25)
    assert dna.row(provider=sc.NWX)["dna_rate"] == 0.0


def test_delivery_and_acknowledgement_times_by_finding_flag(audit: Audit) -> None:
    delivery = audit.tables["delivery"]
    # Issued to receipt: R1 5 min, R2 2 min (after one failed attempt), R8 30 min.
    total = delivery.row()
    assert (total["delivered"], total["median_minutes"], total["max_minutes"]) == (3, 5.0, 30.0)
    assert (total["not_delivered"], total["failed_attempts"]) == (0, 1)
    assert delivery.row(finding_flag="critical")["median_minutes"] == pytest.approx(2.0)
    assert delivery.row(provider=sc.RXA)["delivered"] == 2

    ack = audit.tables["acknowledgement"]
    # Receipt to acknowledgement: R1 24 h, R2 30 min; R8 never acknowledged. Alerts: R2's
    # critical alert acknowledged 31 minutes after it was raised (allowed 1 h); R8's
    # unexpected-significant alert not acknowledged, and escalated.
    total = ack.row()
    assert (total["acknowledged"], total["median_hours"], total["max_hours"]) == (2, 0.5, 24.0)
    assert total["not_acknowledged"] == 1
    assert (total["alerts"], total["alerts_acknowledged_in_time"]) == (2, 1)
    assert total["alerts_escalated"] == 1
    assert ack.row(finding_flag="routine")["median_hours"] == pytest.approx(24.0)
    unexpected = ack.row(finding_flag="unexpected_significant")
    assert (unexpected["acknowledged"], unexpected["not_acknowledged"]) == (0, 1)
    assert unexpected["share_alerts_in_time"] == 0.0


def test_duplicates_prevented_are_flagged_referrals_returned_as_duplicate_or_cancelled(
    audit: Audit,
) -> None:
    duplicates = audit.tables["duplicates"]
    assert duplicates.row() == {
        "practice": ALL,
        "modality": ALL,
        "flagged": 2,  # R4 R5
        "returned_as_duplicate": 1,  # R4
        "cancelled": 1,  # R5
        "prevented": 2,
        "examined_anyway": 0,
    }
    assert duplicates.row(practice=sc.B)["prevented"] == 1


def test_a_later_until_sees_the_late_report_and_moves_the_window() -> None:
    later = compute_audit(sc.scenario(), until=datetime(2026, 4, 12, tzinfo=UTC))
    turnaround = later.tables["turnaround"].row()
    # The window now starts at 01:00 GMT on 13 March: R8's report (12 March) drops out and
    # R6's (11 April) counts as issued, late, instead of open past its deadline.
    assert (turnaround["reports"], turnaround["open_past_deadline"]) == (3, 0)
    assert turnaround["within_target"] == 1  # R1
    assert not later.capacity_known
    assert any("no slot capacity" in n for n in later.notes)


def test_until_defaults_to_the_latest_event_never_the_wall_clock() -> None:
    result = compute_audit(sc.scenario(), window_days=7)
    assert result.window_end == datetime(2026, 4, 11, 9, 0, tzinfo=UTC)
    assert result.window_start == datetime(2026, 4, 4, 9, 0, tzinfo=UTC)


def test_an_empty_set_needs_an_explicit_end_and_then_gives_zero_totals() -> None:
    with pytest.raises(AuditError, match="--until"):
        compute_audit([])
    empty = compute_audit([], until=sc.UNTIL)
    assert empty.tables["volumes"].row()["referrals"] == 0
    assert empty.tables["turnaround"].row()["share_within_target"] is None


def test_targets_are_configurable() -> None:
    lenient = compute_audit(sc.scenario(), until=sc.UNTIL, targets=Targets(wait_days_urgent=8))
    assert lenient.tables["waits"].row(priority="urgent")["within_target"] == 1


def test_nearest_rank_takes_the_ceil_q_n_th_smallest() -> None:
    assert nearest_rank([], 0.5) is None
    assert nearest_rank([4.0, 1.0, 3.0, 2.0], 0.5) == 2.0
    assert nearest_rank([4.0, 1.0, 3.0, 2.0], 0.9) == 4.0
    assert nearest_rank([5.0], 0.0) == 5.0


def test_a_non_default_slot_length_in_the_scheduling_policy_changes_utilisation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The scenario's registry with Riverside X-ray's own 60-minute length taken out, so that
    # the length the scheduling service applies is its policy's.
    raw = copy.deepcopy(sc.PROVIDERS_FILE)
    del raw["providers"][0]["sites"][0]["modalities"]["XR"]["slot_minutes"]
    path = tmp_path / "providers.json"
    path.write_text(json.dumps(raw))

    def riverside() -> dict[str, str | int | float | None]:
        audit = compute_audit(sc.scenario(), until=sc.UNTIL, providers=load_providers(path))
        return audit.tables["utilisation"].row(provider=sc.RXA, site=sc.RIVERSIDE, modality="XR")

    # The policy's default of 10 minutes: 12 slots in each 09:00-11:00 session, 20 open days.
    monkeypatch.delenv("SCHEDULING_POLICY__SLOT_MINUTES", raising=False)
    default = riverside()
    assert (default["booked_slots"], default["capacity_slots"]) == (4, 240)
    assert default["utilisation"] == pytest.approx(4 / 240)
    lengths = {m.value: 10 for m in Modality} | {"XR": 20}
    monkeypatch.setenv("SCHEDULING_POLICY__SLOT_MINUTES", json.dumps(lengths))
    longer = riverside()
    assert (longer["booked_slots"], longer["capacity_slots"]) == (4, 120)
    assert longer["utilisation"] == pytest.approx(4 / 120)
