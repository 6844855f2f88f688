"""Properties of the audit that hold for any arrival order, repetition or gap in the events."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pathway_cli.audit.capacity import parse_providers
from pathway_cli.audit.compute import ALL, Audit, compute_audit
from pathway_schemas.envelope import Received
from tests.unit.audit import scenario as sc

EVENTS = sc.scenario()
PROVIDERS = parse_providers(sc.PROVIDERS_FILE)
BASELINE = compute_audit(EVENTS, until=sc.UNTIL, providers=PROVIDERS)


def figures(audit: Audit) -> tuple[object, ...]:
    return (audit.window_start, audit.tables, audit.waits, audit.turnaround)


@settings(max_examples=60, deadline=None)
@given(
    order=st.permutations(range(len(EVENTS))),
    repeats=st.lists(st.integers(0, len(EVENTS) - 1), max_size=30),
)
def test_the_audit_does_not_depend_on_arrival_order_or_redelivery(
    order: list[int], repeats: list[int]
) -> None:
    arrived: list[Received] = [EVENTS[i] for i in order] + [EVENTS[i] for i in repeats]
    audit = compute_audit(arrived, until=sc.UNTIL, providers=PROVIDERS)
    assert figures(audit) == figures(BASELINE)
    assert audit.events_unique == len(EVENTS)
    assert audit.events_read == len(EVENTS) + len(repeats)


@settings(max_examples=60, deadline=None)
@given(kept=st.sets(st.integers(0, len(EVENTS) - 1)))
def test_any_partial_history_gives_consistent_figures(kept: set[int]) -> None:
    """Events go missing (retention, a late provider): the figures stay well formed."""
    audit = compute_audit([EVENTS[i] for i in sorted(kept)], until=sc.UNTIL, providers=PROVIDERS)
    for table in audit.tables.values():
        for record in table.records():
            for column in table.measures:
                value = record[column]
                if isinstance(value, bool) or value is None:
                    continue
                assert isinstance(value, int | float)
                assert value >= 0, (table.name, record)
                if column.startswith("share") or column.endswith("rate"):
                    assert value <= 1.0, (table.name, record)
    volumes = audit.tables["volumes"]
    per_practice = [r for r in volumes.records() if r["practice"] != ALL and r["modality"] == ALL]
    assert volumes.row()["referrals"] == sum(int(r["referrals"] or 0) for r in per_practice)
    dna = audit.tables["dna"].row()
    outcomes = [dna["attended"], dna["missed"], dna["no_outcome"]]
    assert dna["appointments_due"] == sum(n for n in outcomes if isinstance(n, int))


def test_two_different_events_under_one_id_resolve_alike_whatever_the_order() -> None:
    """A broken producer reusing an id: the audit still does not depend on arrival order."""
    first = EVENTS[0]
    clash = Received(first.envelope, EVENTS[len(EVENTS) // 2].event)
    one_way = compute_audit([*EVENTS, clash], until=sc.UNTIL, providers=PROVIDERS)
    other_way = compute_audit([clash, *EVENTS], until=sc.UNTIL, providers=PROVIDERS)
    assert figures(one_way) == figures(other_way)
    assert one_way.events_unique == len(EVENTS)
