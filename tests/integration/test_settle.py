"""The simulator's settling on the embedded broker: idle only when every group has handled
every record, whatever end offsets the broker reports.

The embedded broker (Tansu) reports a partition's end as its last record batch's first
offset plus one. A producer with several sends in flight packs them into one batch, so a
group that has handled only the first record of that batch has committed up to the
reported end: settling on the reported ends would call that idle.
"""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition

from pathway_cli.simulate import Settler
from pathway_schemas import topics

pytestmark = pytest.mark.timeout(120)

REFERRAL_0 = TopicPartition(topics.REFERRAL, 0)
REFERRAL_1 = TopicPartition(topics.REFERRAL, 1)


async def _send_packed(bootstrap: str, tp: TopicPartition, count: int) -> None:
    """`count` records sent without waiting for each, so the producer packs them together."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=50)
    await producer.start()
    try:
        pending = [
            await producer.send(tp.topic, b"{}", key=b"ref", partition=tp.partition)
            for _ in range(count)
        ]
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def _reported_end(bootstrap: str, tp: TopicPartition) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        return int((await consumer.end_offsets([tp]))[tp])
    finally:
        await consumer.stop()


async def _commit(bootstrap: str, group: str, offsets: dict[TopicPartition, int]) -> None:
    """Commit as a group's member would after handling the records below these offsets."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit(offsets)
    finally:
        await consumer.stop()


async def test_a_group_committed_to_the_reported_end_of_a_packed_batch_is_not_settled(
    kafka: str,
) -> None:
    await _send_packed(kafka, REFERRAL_0, 12)
    reported = await _reported_end(kafka, REFERRAL_0)
    # The premise: the broker's end stops short of the batch (on Kafka it would be 12).
    assert reported < 12
    await _commit(kafka, "reader", {REFERRAL_0: reported})

    settler = Settler(kafka, ("reader",), (topics.REFERRAL,))
    await settler.start()
    try:
        assert (await settler.ends())[REFERRAL_0] == 12
        assert await settler.end_offsets() == {topics.REFERRAL: 12}
        assert await settler.lag_by_group() == {("reader", topics.REFERRAL): 12 - reported}
        with pytest.raises(TimeoutError, match=f"reader on {topics.REFERRAL}: {12 - reported}"):
            await settler.settle(timeout=1)

        await _commit(kafka, "reader", {REFERRAL_0: 12})
        await settler.settle(timeout=10)
        assert await settler.lag() == 0

        # A later packed batch moves the reported end only to its own first record.
        await _send_packed(kafka, REFERRAL_0, 5)
        assert await _reported_end(kafka, REFERRAL_0) < 17
        assert await settler.lag() == 5
        await _commit(kafka, "reader", {REFERRAL_0: 16})
        assert await settler.lag() == 1
        await _commit(kafka, "reader", {REFERRAL_0: 17})
        await settler.settle(timeout=10)
        assert await settler.end_offsets() == {topics.REFERRAL: 17}
    finally:
        await settler.stop()


async def test_a_group_is_waited_for_on_the_topics_it_reads_before_its_first_commit(
    kafka: str,
) -> None:
    dead_letters = topics.dead_letter("vetting")
    await _send_packed(kafka, REFERRAL_0, 2)
    await _send_packed(kafka, REFERRAL_1, 1)
    await _send_packed(kafka, TopicPartition(dead_letters, 0), 3)
    # "other" is not named as reading anything: its one commit shows it reads the topic.
    await _commit(kafka, "other", {REFERRAL_1: 1})

    settler = Settler(
        kafka,
        ("reader", "other", "idle"),
        (topics.REFERRAL, dead_letters),
        reads={"reader": (topics.REFERRAL,)},
    )
    await settler.start()
    try:
        # Nobody reads the dead letters, and "idle" has neither a topic nor a commit.
        assert await settler.lag_by_group() == {
            ("reader", topics.REFERRAL): 3,
            ("other", topics.REFERRAL): 2,
        }
        with pytest.raises(TimeoutError, match="not yet handled"):
            await settler.settle(timeout=1)

        await _commit(kafka, "reader", {REFERRAL_0: 2, REFERRAL_1: 1})
        await _commit(kafka, "other", {REFERRAL_0: 2})
        await settler.settle(timeout=10)
        assert await settler.end_offsets() == {topics.REFERRAL: 3, dead_letters: 3}
    finally:
        await settler.stop()
