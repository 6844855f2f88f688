"""The worklist's order and ages, and the vetting metrics a decision records."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from pathway_schemas.events import ReturnReason
from pathway_schemas.values import Priority
from services.common.clock import LONDON, FixedClock
from services.vetting.metrics import VettingMetrics
from services.vetting.service import (
    RANK,
    AcceptCommand,
    ReturnCommand,
    State,
    WorklistItem,
    accept,
    age_seconds,
    enter_vetting,
    return_to_referrer,
    worklist_order,
)
from tests.unit.vetting.builders import OPEN_ACCESS, T0, submitted


def _waiting_item() -> WorklistItem:
    step = enter_vetting(None, submitted("CCHES"), OPEN_ACCESS, T0)
    assert step is not None
    return step.item


TEMPLATE = _waiting_item()

items = st.lists(
    st.builds(
        lambda priority, minutes, rid: TEMPLATE.model_copy(
            update={
                "referral_id": f"ref_{rid:032x}",
                "rank": RANK[priority],
                "entered_at": T0 + timedelta(minutes=minutes),
            }
        ),
        st.sampled_from(list(Priority)),
        st.integers(min_value=0, max_value=60 * 24 * 30),
        st.integers(min_value=0, max_value=2**64),
    ),
    max_size=40,
)


@given(items)
def test_urgent_items_come_first_then_the_longest_waiting(worklist: list[WorklistItem]) -> None:
    ordered = sorted(worklist, key=worklist_order)
    for before, after in itertools.pairwise(ordered):
        assert before.rank <= after.rank  # never a routine before an urgent
        if before.rank == after.rank:
            assert before.entered_at <= after.entered_at


@given(items)
def test_the_order_does_not_depend_on_the_order_items_arrived_in(
    worklist: list[WorklistItem],
) -> None:
    assert sorted(worklist, key=worklist_order) == sorted(reversed(worklist), key=worklist_order)


def test_age_across_the_spring_daylight_saving_change_is_real_elapsed_time() -> None:
    # 00:30 GMT to 03:30 BST on 29 March 2026: three hours on the wall clock, two in the world.
    entered = datetime(2026, 3, 29, 0, 30, tzinfo=LONDON)
    clock = FixedClock(datetime(2026, 3, 29, 3, 30, tzinfo=LONDON))
    assert age_seconds(entered, clock.now()) == 2 * 3600


def test_age_across_the_autumn_daylight_saving_change_is_real_elapsed_time() -> None:
    # 00:30 BST to 03:30 GMT on 25 October 2026: three hours on the wall clock, four in the world.
    entered = datetime(2026, 10, 25, 0, 30, tzinfo=LONDON)
    clock = FixedClock(datetime(2026, 10, 25, 3, 30, tzinfo=LONDON))
    assert age_seconds(entered, clock.now()) == 4 * 3600


def test_an_item_entered_after_now_has_no_negative_age() -> None:
    assert age_seconds(T0 + timedelta(seconds=5), T0) == 0.0


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_a_decision_records_vetting_time_by_confirmed_priority_and_outcome() -> None:
    registry = CollectorRegistry()
    metrics = VettingMetrics.create(registry)
    item = TEMPLATE
    accepted = accept(
        item,
        AcceptCommand(protocol="CT chest", priority="urgent", justified_by="RAD0001"),
        by="dr.vetting",
        now=item.entered_at + timedelta(hours=26),
        policy=OPEN_ACCESS,
    )

    metrics.record(accepted)

    labels = {"priority": "urgent", "outcome": "accepted"}
    assert sample(registry, "pathway_vetting_seconds_sum", **labels) == 26 * 3600
    assert sample(registry, "pathway_vetting_seconds_bucket", **labels, le="86400.0") == 0
    assert sample(registry, "pathway_vetting_seconds_bucket", **labels, le="172800.0") == 1
    assert (
        sample(registry, "pathway_vetting_decisions_total", outcome="accepted", reason="clinician")
        == 1
    )


def test_returns_are_counted_by_reason_and_open_access_by_its_own_reason() -> None:
    registry = CollectorRegistry()
    metrics = VettingMetrics.create(registry)
    returned = return_to_referrer(
        TEMPLATE,
        ReturnCommand(reason=ReturnReason.NOT_INDICATED, advice="Try ultrasound first"),
        by="dr.vetting",
        now=T0 + timedelta(minutes=10),
    )
    automatic = enter_vetting(None, submitted("XCHES"), OPEN_ACCESS, T0)
    assert automatic is not None
    assert automatic.item.state is State.ACCEPTED

    metrics.record(returned)
    metrics.record(automatic)
    metrics.record(None)

    assert (
        sample(
            registry, "pathway_vetting_decisions_total", outcome="returned", reason="not_indicated"
        )
        == 1
    )
    assert (
        sample(
            registry, "pathway_vetting_decisions_total", outcome="accepted", reason="open_access"
        )
        == 1
    )
    assert (
        sample(registry, "pathway_vetting_seconds_sum", priority="routine", outcome="returned")
        == 600
    )
    assert (
        sample(registry, "pathway_vetting_seconds_sum", priority="routine", outcome="accepted") == 0
    )
