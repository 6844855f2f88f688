"""The benchmark's arithmetic: quantiles, counters from /metrics, hops from event times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from benchmarks.load import PhaseLoad
from benchmarks.measure import Hop, Spread, Timelines, parse_counters, quantile
from pathway_schemas.envelope import Envelope, Received
from pathway_schemas.events import ReferralCancelled, ReferralQueryAnswered

METRICS = """\
# HELP pathway_store_commands_total MongoDB commands sent (round trips), by command name
# TYPE pathway_store_commands_total counter
pathway_store_commands_total{command="insert",service="vetting"} 12.0
pathway_store_commands_total{command="find",service="vetting"} 30.0
# HELP pathway_store_commands_created created
# TYPE pathway_store_commands_created gauge
pathway_store_commands_created{command="insert",service="vetting"} 1.7e9
# HELP pathway_events_handled_total Events consumed
# TYPE pathway_events_handled_total counter
pathway_events_handled_total{event_type="a",outcome="applied",service="vetting"} 5.0
pathway_events_handled_total{event_type="b",outcome="ignored",service="vetting"} 3.0
"""


def test_quantiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert quantile(values, 0.5) == 50
    assert quantile(values, 0.99) == 99
    assert quantile([7.0], 0.99) == 7
    assert quantile([], 0.5) is None
    assert Spread.of([3.0, 1.0, 2.0]) == Spread(count=3, p50=2.0, p95=3.0, p99=3.0, max=3.0)


@given(st.lists(st.floats(min_value=0, max_value=1e6), min_size=1, max_size=200))
def test_a_quantile_is_one_of_the_values_and_they_rise_with_q(values: list[float]) -> None:
    p50, p95, p99 = (quantile(values, q) for q in (0.5, 0.95, 0.99))
    assert p50 in values
    assert None not in (p50, p95, p99)
    assert p50 <= p95 <= p99 <= max(values)  # type: ignore[operator]


def test_counters_are_summed_from_the_metrics_text_and_subtracted() -> None:
    before = parse_counters([METRICS])
    after = parse_counters([METRICS.replace("12.0", "20.0"), METRICS])
    assert before.commands == 42
    assert before.handled("applied") == 5
    assert before.handled("applied", "ignored") == 8
    delta = after.minus(before)  # both texts are summed: 20 + 12 inserts, 30 + 30 finds
    assert delta.commands == 50
    assert delta.commands_by(1) == {"find": 30, "insert": 20}


def _received(event: ReferralCancelled | ReferralQueryAnswered, emitted: datetime) -> Received:
    envelope = Envelope(
        id=f"{event.event_type}-{emitted.isoformat()}",
        source="/tests",
        type=event.event_type,
        time=emitted,
        subject=event.referral_id,
        occurredat=event.occurred_at,
    )
    return Received(envelope=envelope, event=event)


def test_a_hop_is_the_effect_emitted_after_its_cause_per_referral() -> None:
    t0 = datetime(2026, 3, 9, 9, 0, tzinfo=UTC)
    referral = "ref_" + "a" * 32
    other = "ref_" + "b" * 32
    answered = ReferralQueryAnswered(
        referral_id=referral, occurred_at=t0, query_id="q1", answer="yes", answered_by="G1234567"
    )
    cancelled = ReferralCancelled(
        referral_id=referral, occurred_at=t0, reason="other", cancelled_by="G1234567"
    )
    events = [
        _received(answered, t0),
        _received(cancelled, t0 + timedelta(milliseconds=250)),
        # A repeat of the cause, later: the first time counts.
        _received(answered, t0 + timedelta(seconds=5)),
        # Another referral, not in the set asked for.
        _received(answered.model_copy(update={"referral_id": other}), t0),
    ]
    timelines = Timelines.of(events, {referral})
    hop = Hop("cancel after answer", "referral.query_answered", "referral.cancelled")
    assert timelines.hop_seconds(hop) == [pytest.approx(0.25)]


def test_the_sustained_rate_counts_between_the_tenth_and_ninetieth_finish() -> None:
    phase = PhaseLoad("paced", 20, 10.0)
    for i in range(20):
        phase.submitted_at[f"r{i}"] = 100.0 + i * 0.1
        phase.acknowledged_at[f"r{i}"] = 101.0 + i * 0.5  # two a second
    assert phase.sustained_rate() == pytest.approx(2.0)
    assert phase.overall_rate() == pytest.approx(20 / (101.0 + 19 * 0.5 - 100.0))
