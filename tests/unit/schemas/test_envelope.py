"""Every event round-trips model → Kafka record → model; invalid records say what is wrong."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pathway_schemas import topics
from pathway_schemas.base import EVENT_TYPES, PathwayEvent
from pathway_schemas.envelope import InvalidEvent, from_record, to_record
from pathway_schemas.events import FAMILIES, ReferralSubmitted
from pathway_schemas.examples import NHS, all_examples, example


def topic_for(event: PathwayEvent) -> str:
    if event.topic == "provider.inbound":
        return topics.provider_inbound("RXA01")
    if event.topic == "provider.outbound":
        return topics.provider_outbound("RXA01")
    return event.topic


def test_every_event_type_has_an_example_and_a_family() -> None:
    examples = all_examples()
    assert {type(e) for e in examples} == set(EVENT_TYPES.values())
    in_families = {m for members in FAMILIES.values() for m in members}
    assert in_families == set(EVENT_TYPES.values())


@pytest.mark.parametrize("event", all_examples(), ids=lambda e: e.event_type)
def test_every_event_round_trips_through_a_kafka_record(event: PathwayEvent) -> None:
    topic = topic_for(event)
    record = to_record(
        event,
        topic=topic,
        source="/tests",
        trace={"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"},
    )
    assert record.key == event.subject.encode()
    assert NHS.encode() not in record.key
    received = from_record(record.headers, record.value, topic=topic, key=record.key)
    assert received.event == event
    assert received.envelope.type == event.event_type
    assert received.envelope.subject == event.subject
    assert received.envelope.occurredat == event.occurred_at
    assert received.envelope.trace["traceparent"].startswith("00-aaaa")


events = st.sampled_from(all_examples())
ids = st.uuids().map(str)
instants = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)
sources = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=64
)


@given(events, ids, instants, sources)
def test_envelope_attributes_survive_the_round_trip(
    event: PathwayEvent, event_id: str, emitted: datetime, source: str
) -> None:
    topic = topic_for(event)
    record = to_record(event, topic=topic, source=source, event_id=event_id, emitted_at=emitted)
    envelope = from_record(record.headers, record.value, topic=topic).envelope
    assert (envelope.id, envelope.source, envelope.time) == (event_id, source, emitted)


@given(
    st.binary(max_size=300),
    st.lists(st.tuples(st.text(max_size=20), st.binary(max_size=40)), max_size=8),
)
def test_arbitrary_records_are_refused_with_a_reason(
    value: bytes, headers: list[tuple[str, bytes]]
) -> None:
    with pytest.raises(InvalidEvent) as caught:
        from_record(headers, value, topic=topics.REFERRAL)
    assert caught.value.reason


def _valid_record() -> tuple[list[tuple[str, bytes]], dict[str, object]]:
    record = to_record(example(ReferralSubmitted), topic=topics.REFERRAL, source="/tests")
    return list(record.headers), json.loads(record.value)


def test_invalid_data_is_rejected_with_field_level_messages() -> None:
    headers, payload = _valid_record()
    payload["nhs_number"] = "9434765918"
    payload["priority"] = "whenever"
    del payload["clinical_question"]
    with pytest.raises(InvalidEvent) as caught:
        from_record(headers, json.dumps(payload).encode(), topic=topics.REFERRAL)
    fields = {e.field for e in caught.value.errors}
    assert {"nhs_number", "priority", "clinical_question"} <= fields
    assert "9434765918" not in str(caught.value)


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda h: [x for x in h if x[0] != "ce_type"], "missing CloudEvents attributes"),
        (
            lambda h: [(k, b"uk.nhs.imaging.nope.v1" if k == "ce_type" else v) for k, v in h],
            "unknown event type",
        ),
        (
            lambda h: [(k, b"0.3" if k == "ce_specversion" else v) for k, v in h],
            "unsupported specversion",
        ),
        (
            lambda h: [(k, b"ref_" + b"0" * 32 if k == "ce_subject" else v) for k, v in h],
            "subject does not match",
        ),
    ],
)
def test_bad_envelopes_are_rejected(mutate: object, reason: str) -> None:
    headers, payload = _valid_record()
    with pytest.raises(InvalidEvent, match=reason):
        from_record(mutate(headers), json.dumps(payload).encode(), topic=topics.REFERRAL)  # type: ignore[operator]


def test_an_event_on_another_familys_topic_is_refused() -> None:
    record = to_record(example(ReferralSubmitted), topic=topics.REFERRAL, source="/tests")
    with pytest.raises(InvalidEvent, match="not allowed on this topic"):
        from_record(record.headers, record.value, topic=topics.REPORT)
    with pytest.raises(ValueError, match="does not belong"):
        to_record(example(ReferralSubmitted), topic=topics.REPORT, source="/tests")


def test_oversized_and_non_json_bodies_are_refused() -> None:
    headers, _ = _valid_record()
    with pytest.raises(InvalidEvent, match="too large"):
        from_record(headers, b"{" + b" " * 1_000_001 + b"}", topic=topics.REFERRAL)
    with pytest.raises(InvalidEvent, match="not JSON"):
        from_record(headers, b"\xff\xfe", topic=topics.REFERRAL)
