"""Hostile records for a topic, generated with hypothesis: none of them is a valid event.

Each strategy starts from a valid record for the topic (an example event of its family,
encoded as a provider or service would) and breaks it one way: random bytes, missing or
bad CloudEvents headers, a type the topic does not carry, a payload that fails its schema
(wrong types, MongoDB operators, overlong text), a body that is not a JSON object, headers
that are not UTF-8, a key or subject that is not the referral id. `rejected` is the
consumer's own decoder: a record it accepts is filtered out, and any error other than
InvalidEvent fails the generation itself (a decoder crash is a bug, not a poison).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from pathway_schemas import new_referral_id
from pathway_schemas.base import EVENT_TYPES, PathwayEvent
from pathway_schemas.envelope import MAX_RECORD_BYTES, InvalidEvent, from_record, to_record
from pathway_schemas.events import FAMILIES, ReferralRequested, family_of_topic
from pathway_schemas.examples import example

REQUIRED = ("ce_specversion", "ce_id", "ce_source", "ce_type", "ce_subject")


@dataclass(frozen=True)
class Poison:
    kind: str
    topic: str
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]

    def with_null(self, name: str) -> Poison:
        """The header present, with no value (Kafka allows it; it is not the attribute)."""
        return Poison(self.kind, self.topic, self.key, self.value, (*self.headers, (name, None)))


def rejected(poison: Poison) -> bool:
    """True when the consumer's decoder refuses the record (as every poison must be)."""
    try:
        from_record(poison.headers, poison.value, topic=poison.topic, key=poison.key)
    except InvalidEvent:
        return True
    return False


def _valid(topic: str, model: type[PathwayEvent]) -> Poison:
    event = example(model)
    if "referral_id" in type(event).model_fields:
        event = event.model_copy(update={"referral_id": new_referral_id()})
    record = to_record(event, topic=topic, source="/tests/poison")
    return Poison("valid", topic, record.key, record.value, record.headers)


def _with_header(poison: Poison, name: str, value: bytes | None, kind: str) -> Poison:
    headers = tuple((k, v) for k, v in poison.headers if k != name)
    if value is not None:
        headers += ((name, value),)
    return Poison(kind, poison.topic, poison.key, poison.value, headers)


_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
_hostile_values: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.just({"$gt": ""}),
    st.just({"$where": "sleep(1000)"}),
    st.lists(st.integers(), max_size=3),
    st.just("\x00" * 8),
    st.just("9434765918"),  # a failing NHS number check digit
    st.just("x" * 25_000),
)


def poison(topic: str) -> st.SearchStrategy[Poison]:
    """Records for `topic` that the consumer must refuse, of every kind above."""
    allowed = FAMILIES[family_of_topic(topic)]
    foreign = [m for m in EVENT_TYPES.values() if m not in allowed]
    base = st.sampled_from(allowed).map(lambda model: _valid(topic, model))

    random_bytes = st.builds(
        lambda key, value, headers: Poison("random bytes", topic, key, value, tuple(headers)),
        st.one_of(st.none(), st.binary(max_size=64)),
        st.binary(max_size=2048),
        st.lists(st.tuples(_text, st.binary(max_size=64)), max_size=8),
    )
    missing = st.tuples(base, st.sampled_from(REQUIRED)).map(
        lambda pair: _with_header(pair[0], pair[1], None, "missing attribute")
    )
    bad_attribute = st.tuples(
        base,
        st.sampled_from(
            [
                ("ce_specversion", b"0.3"),
                ("ce_id", b"i" * 200),
                ("ce_source", b"s" * 300),
                ("ce_time", b"yesterday"),
                ("ce_time", b"2026-03-02T09:00:00"),
                ("ce_occurredat", b"not a time"),
                ("content-type", b"text/plain"),
                ("ce_type", b"uk.nhs.imaging.referral.exploded.v1"),
            ]
        ),
    ).map(lambda pair: _with_header(pair[0], pair[1][0], pair[1][1], "bad attribute"))
    unknown_type = st.tuples(base, _text).map(
        lambda pair: _with_header(pair[0], "ce_type", pair[1].encode(), "unknown type")
    )
    wrong_family = st.sampled_from(foreign).map(lambda model: _foreign(topic, model))
    not_utf8 = st.tuples(
        base, st.sampled_from((*REQUIRED, "traceparent")), st.sampled_from([b"\xff", b"\xc3\x28"])
    ).map(lambda t: _with_header(t[0], t[1], t[2] + b"abc", "header not UTF-8"))
    wrong_key = st.tuples(base, st.binary(min_size=1, max_size=40)).map(
        lambda pair: Poison("key mismatch", topic, pair[1], pair[0].value, pair[0].headers)
    )
    wrong_subject = base.map(
        lambda valid: _with_header(
            valid, "ce_subject", new_referral_id().encode(), "subject mismatch"
        )
    )
    bad_payload = _broken_payload(base)
    not_object = st.tuples(
        base,
        st.one_of(
            st.sampled_from([b"[]", b"null", b"42", b'"text"', b"{", b"\xff\xfe{}"]),
            st.binary(max_size=256),
        ),
    ).map(lambda pair: Poison("not a JSON object", topic, pair[0].key, pair[1], pair[0].headers))
    tombstone = base.map(lambda valid: Poison("no value", topic, valid.key, None, valid.headers))
    null_header = st.tuples(base, st.sampled_from(REQUIRED)).map(
        lambda pair: _with_header(pair[0], pair[1], None, "null header").with_null(pair[1])
    )

    return st.one_of(
        random_bytes,
        missing,
        bad_attribute,
        unknown_type,
        wrong_family,
        not_utf8,
        wrong_key,
        wrong_subject,
        bad_payload,
        not_object,
        tombstone,
        null_header,
    ).filter(rejected)


def _foreign(topic: str, model: type[PathwayEvent]) -> Poison:
    """A valid event of another family, with its own true headers, on this topic."""
    own = model.topic
    source_topic = (
        "imaging.provider.rxa01.inbound.v1"
        if own == "provider.inbound"
        else "imaging.provider.rxa01.outbound.v1"
        if own == "provider.outbound"
        else own
    )
    valid = _valid(source_topic, model)
    return Poison("type not carried by the topic", topic, valid.key, valid.value, valid.headers)


@st.composite
def _broken_payload(draw: st.DrawFn, base: st.SearchStrategy[Poison]) -> Poison:
    valid = draw(base)
    payload = json.loads(valid.value or b"{}")
    field = draw(st.sampled_from(sorted(payload)))
    if draw(st.booleans()):
        del payload[field]
    else:
        payload[field] = draw(_hostile_values)
    value = json.dumps(payload).encode()
    return Poison("invalid payload", valid.topic, valid.key, value, valid.headers)


def huge(topic: str) -> list[Poison]:
    """One record over the decoder's size limit, one under it with a field far too long."""
    valid = _valid(topic, FAMILIES[family_of_topic(topic)][0])
    payload = json.loads(valid.value or b"{}")
    over = b'{"pad": "' + b"x" * (MAX_RECORD_BYTES + 1) + b'"}'
    payload["occurred_at"] = "2026" * 150_000
    return [
        Poison("over the size limit", topic, valid.key, over, valid.headers),
        Poison("field far too long", topic, valid.key, json.dumps(payload).encode(), valid.headers),
    ]


def corpus(topic: str, count: int) -> list[Poison]:
    """`count` distinct kinds of hostile record for one topic, the same on every run."""
    found: list[Poison] = []

    @settings(
        max_examples=count,
        database=None,
        derandomize=True,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(poison(topic))
    def collect(record: Poison) -> None:
        found.append(record)

    collect()
    return found + huge(topic)


def sentinel(topic: str) -> Poison:
    """A valid event for the topic: published after the poison, it must still be applied."""
    model = FAMILIES[family_of_topic(topic)][0]
    if model is ReferralRequested:
        event = example(model).model_copy(update={"request_id": f"poison-{uuid.uuid4().hex}"})
        record = to_record(event, topic=topic, source="/tests/poison")
        return Poison("valid", topic, record.key, record.value, record.headers)
    return _valid(topic, model)
