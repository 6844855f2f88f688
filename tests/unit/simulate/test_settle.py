"""What the settler counts as not yet handled, from committed offsets and true ends."""

from __future__ import annotations

from aiokafka.structs import TopicPartition
from hypothesis import given
from hypothesis import strategies as st

from pathway_cli.simulate import records_behind

A0, A1, B0 = TopicPartition("a", 0), TopicPartition("a", 1), TopicPartition("b", 0)
EMPTY = TopicPartition("c", 0)
ENDS = {A0: 10, A1: 4, B0: 7, EMPTY: 0}


def test_a_group_is_behind_on_the_topics_it_is_named_for_and_those_it_has_committed_on() -> None:
    behind = records_behind(
        committed={
            "named": {},  # never committed: counts from each partition's log start
            "inferred": {A1: 4},  # one commit on topic a: a's other partition counts too
            "caught-up": {A0: 10, A1: 4},
            "reads-nothing": {},
        },
        ends=ENDS,
        reads={"named": ("a", "c")},
        starts={A0: 3, A1: 0},
    )
    assert behind == {("named", "a"): 7 + 4, ("inferred", "a"): 7}


@given(
    ends=st.dictionaries(st.sampled_from([A0, A1, B0]), st.integers(0, 50), min_size=1),
    short=st.dictionaries(st.sampled_from([A0, A1, B0]), st.integers(1, 50)),
)
def test_a_group_is_idle_exactly_when_it_has_committed_every_partition_it_reads_to_its_end(
    ends: dict[TopicPartition, int], short: dict[TopicPartition, int]
) -> None:
    committed = {tp: max(0, end - short.get(tp, 0)) for tp, end in ends.items()}
    behind = records_behind(
        committed={"g": committed}, ends=ends, reads={"g": ("a", "b")}, starts={}
    )
    assert sum(behind.values()) == sum(end - committed[tp] for tp, end in ends.items())
    assert (behind == {}) == all(committed[tp] >= end for tp, end in ends.items())
