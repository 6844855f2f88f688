"""`read_to_end` reads every record written before it began, whatever end offsets the broker
reports, and always ends. The stand-in below keeps the embedded broker's habit (a partition's
reported end is its last batch's base offset plus one); the real broker is in
tests/integration/test_audit_kafka.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from pathway_cli.audit.source import SourceError, read_to_end

P0, P1, P2 = (TopicPartition("imaging.booking.v1", n) for n in range(3))
FETCH_SIZE = 10


class TansuLikeLog:
    """Partitions as lists of batch sizes, read through the calls `read_to_end` makes."""

    def __init__(self, batches: dict[TopicPartition, list[int]]) -> None:
        self.batches = {tp: list(sizes) for tp, sizes in batches.items()}
        self.positions = dict.fromkeys(batches, 0)
        self.paused: set[TopicPartition] = set()
        #: called before each fetch: a producer writing while the read goes on
        self.on_fetch: Callable[[TansuLikeLog], None] = lambda log: None
        self.reported: Callable[[TopicPartition], int] = self.last_batch_base_plus_one

    def true_end(self, tp: TopicPartition) -> int:
        return sum(self.batches[tp])

    def last_batch_base_plus_one(self, tp: TopicPartition) -> int:
        sizes = self.batches[tp]
        return sum(sizes[:-1]) + 1 if sizes else 0

    async def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.reported(tp) for tp in partitions}

    def pause(self, *partitions: TopicPartition) -> None:
        self.paused |= set(partitions)

    async def position(self, partition: TopicPartition) -> int:
        return self.positions[partition]

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0
    ) -> dict[TopicPartition, list[ConsumerRecord[Any, Any]]]:
        self.on_fetch(self)
        fetched: dict[TopicPartition, list[ConsumerRecord[Any, Any]]] = {}
        for tp in partitions:
            start = self.positions[tp]
            stop = min(self.true_end(tp), start + FETCH_SIZE)
            if tp in self.paused or start >= stop:
                continue
            fetched[tp] = [_record(tp, offset) for offset in range(start, stop)]
            self.positions[tp] = stop
        await asyncio.sleep(0)  # let other tasks run, as a real fetch would
        return fetched


def _record(tp: TopicPartition, offset: int) -> ConsumerRecord[Any, Any]:
    return ConsumerRecord(
        topic=tp.topic,
        partition=tp.partition,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=None,
        value=b"",
        checksum=None,
        serialized_key_size=0,
        serialized_value_size=0,
        headers=[],
    )


async def _read(
    log: TansuLikeLog, *, stall_timeout: float = 30.0, settle_timeout: float = 10.0
) -> tuple[set[tuple[int, int]], list[str]]:
    taken: set[tuple[int, int]] = set()
    remarks = await asyncio.wait_for(
        read_to_end(
            log,
            list(log.batches),
            lambda record: taken.add((record.partition, record.offset)),
            stall_timeout=stall_timeout,
            settle_timeout=settle_timeout,
        ),
        timeout=10,
    )
    return taken, remarks


def _everything(batches: dict[TopicPartition, list[int]]) -> set[tuple[int, int]]:
    return {(tp.partition, offset) for tp, sizes in batches.items() for offset in range(sum(sizes))}


async def test_a_partition_is_read_past_an_end_offset_that_counts_its_last_batch_as_one() -> None:
    batches = {P0: [1, 6], P1: [4, 4, 3], P2: []}
    log = TansuLikeLog(batches)
    assert (log.reported(P0), log.reported(P1)) == (2, 9)  # of 7 and 11
    taken, remarks = await _read(log)
    assert taken == _everything(batches)
    assert remarks == []


async def test_under_a_steady_stream_of_writes_the_read_ends_with_all_written_before() -> None:
    batches = {P0: [5, 5], P1: [2, 2]}
    log = TansuLikeLog(batches)
    log.on_fetch = lambda log: log.batches[P0].append(3)
    taken, remarks = await _read(log)
    assert _everything(batches) <= taken
    assert remarks == []  # it ended because the end moved on, not at the time limit


async def test_records_that_never_stop_under_an_end_that_never_moves_are_left_with_a_note() -> None:
    log = TansuLikeLog({P0: [3]})
    log.reported = lambda tp: 1
    log.on_fetch = lambda log: log.batches[P0].append(1)
    taken, remarks = await _read(log, settle_timeout=0.2)
    assert {(0, 0), (0, 1), (0, 2)} <= taken
    assert len(remarks) == 1
    assert "kept arriving on 1 partitions" in remarks[0]


async def test_a_partition_that_never_reaches_its_reported_end_is_a_stall() -> None:
    log = TansuLikeLog({P0: [3]})
    log.reported = lambda tp: 10
    with pytest.raises(SourceError, match="stalled"):
        await _read(log, stall_timeout=0.2)
