"""`pathway audit --events FILE` writes the files; its options are checked before any work."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from pathway_cli.audit.commands import parse_until
from pathway_cli.audit.export import write_jsonl
from pathway_cli.main import app
from tests.unit.audit import scenario as sc

runner = CliRunner()


def test_audit_from_an_export_writes_csv_json_and_html(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    write_jsonl(sc.scenario(), events)
    providers = tmp_path / "providers.json"
    providers.write_text(json.dumps(sc.PROVIDERS_FILE))
    out = tmp_path / "audit"
    result = runner.invoke(
        app,
        [
            "audit",
            "--events",
            str(events),
            "--until",
            "2026-04-10T00:00:00Z",
            "--out",
            str(out),
            "--providers",
            str(providers),
        ],
    )
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} >= {
        "audit.json",
        "report.html",
        "waits.csv",
        "turnaround.csv",
    }
    document = json.loads((out / "audit.json").read_text())
    assert document["tables"]["volumes"]["rows"][0]["referrals"] == 7
    assert document["tables"]["utilisation"]["rows"][0]["utilisation"] == 0.1
    assert "referrals 7" in result.output


def test_audit_refuses_two_sources_at_once(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["audit", "--events", str(tmp_path / "x.jsonl"), "--bootstrap", "127.0.0.1:1"]
    )
    assert result.exit_code == 1
    assert "either --bootstrap or --events" in result.output


def test_audit_of_a_missing_export_fails_with_advice(tmp_path: Path) -> None:
    result = runner.invoke(app, ["audit", "--events", str(tmp_path / "none.jsonl")])
    assert result.exit_code == 1
    assert "export-events" in result.output


def test_until_takes_an_instant_or_a_date_meaning_the_end_of_that_london_day() -> None:
    assert parse_until("2026-03-31T18:00:00Z") == datetime(2026, 3, 31, 18, tzinfo=UTC)
    # 31 March is in BST: the day ends at 23:00 UTC; 31 January ends at midnight UTC.
    assert parse_until("2026-03-31") == datetime(2026, 3, 31, 23, tzinfo=UTC)
    assert parse_until("2026-01-31") == datetime(2026, 2, 1, tzinfo=UTC)
    with pytest.raises(typer.BadParameter):
        parse_until("2026-03-31T18:00:00")
    with pytest.raises(typer.BadParameter):
        parse_until("yesterday")
