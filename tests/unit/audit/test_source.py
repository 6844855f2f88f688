"""A JSON Lines export audits exactly as the events it was written from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pathway_cli.audit.compute import compute_audit
from pathway_cli.audit.export import write_jsonl
from pathway_cli.audit.source import SourceError, read_jsonl
from tests.unit.audit import scenario as sc


def test_events_survive_an_export_and_read_back_unchanged(tmp_path: Path) -> None:
    events = sc.scenario()
    path = tmp_path / "events.jsonl"
    assert write_jsonl(events, path) == len(events)
    batch = read_jsonl(path)
    assert batch.skipped == {}
    by_id = {r.envelope.id: r for r in batch.events}
    assert set(by_id) == {r.envelope.id for r in events}
    for original in events:
        copy = by_id[original.envelope.id]
        assert copy.event == original.event
        assert copy.envelope == original.envelope
    first = json.loads(path.read_text().splitlines()[0])
    assert first["specversion"] == "1.0"
    assert first["kafkatopic"].startswith("imaging.")
    assert (
        compute_audit(batch.events, until=sc.UNTIL).tables
        == compute_audit(events, until=sc.UNTIL).tables
    )


def test_lines_that_are_not_valid_events_are_counted_and_left_out(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    write_jsonl(sc.scenario()[:3], path)
    good = path.read_text().splitlines()
    tampered = json.loads(good[0])
    tampered["data"]["referral_id"] = "not-a-referral"
    wrong_topic = json.loads(good[1])
    wrong_topic["kafkatopic"] = "imaging.report.v1"
    path.write_text(
        "\n".join([good[2], "{oops", "[1]", json.dumps(tampered), json.dumps(wrong_topic), ""])
    )
    batch = read_jsonl(path)
    assert len(batch.events) == 1
    assert batch.skipped == {
        "line is not JSON": 1,
        "a line is not a JSON object": 1,
        "invalid event data": 1,
        "event type not allowed on this topic": 1,
    }
    assert "line is not JSON: 1 left out" in batch.notes()


def test_a_missing_export_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="export-events"):
        read_jsonl(tmp_path / "missing.jsonl")
