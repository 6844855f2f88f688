"""The audit's files: one CSV per figure, a JSON document, and an HTML report that stands alone."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from pathway_cli.audit.capacity import parse_providers
from pathway_cli.audit.compute import Audit, compute_audit
from pathway_cli.audit.render import histogram_svg, write_all
from pathway_schemas.examples import NHS
from tests.unit.audit import scenario as sc


@pytest.fixture(scope="module")
def audit() -> Audit:
    return compute_audit(
        sc.scenario(), until=sc.UNTIL, providers=parse_providers(sc.PROVIDERS_FILE)
    )


@pytest.fixture
def written(audit: Audit, tmp_path: Path) -> Path:
    write_all(audit, tmp_path / "audit")
    return tmp_path / "audit"


def test_one_csv_per_figure_with_the_table_s_columns_and_rows(audit: Audit, written: Path) -> None:
    for name, table in audit.tables.items():
        with (written / f"{name}.csv").open(newline="") as handle:
            rows = list(csv.reader(handle))
        assert tuple(rows[0]) == table.columns
        assert len(rows) == 1 + len(table.rows)
    with (written / "turnaround.csv").open(newline="") as handle:
        total = next(csv.DictReader(handle))
    assert total["provider"] == "*"
    assert (total["share_within_target"], total["meets_tolerance"]) == ("0.25", "false")


def test_the_json_document_holds_every_table_and_the_distributions(
    audit: Audit, written: Path
) -> None:
    document = json.loads((written / "audit.json").read_text())
    assert document["window"] == {
        "start": "2026-03-11T01:00:00+00:00",
        "end": "2026-04-10T00:00:00+00:00",
        "days": 30,
        "timezone": "Europe/London",
    }
    assert set(document["tables"]) == set(audit.tables)
    waits = document["tables"]["waits"]["rows"]
    assert waits[0]["share_within_target"] == 0.5
    assert len(document["distributions"]["waits"]) == 4
    assert len(document["distributions"]["turnaround"]) == 3
    assert document["targets"]["turnaround_tolerance"] == 0.9


def test_the_html_report_has_the_charts_with_their_target_lines_and_needs_nothing_else(
    written: Path,
) -> None:
    html = (written / "report.html").read_text()
    charts = re.findall(r"<svg\b.*?</svg>", html, re.S)
    assert len(charts) == 5  # waits, waits per provider, turnaround, vs deadline, per provider
    targets = set(re.findall(r'class="target-line" data-value="([^"]+)"', html))
    # 7 and 14 days for waits, 1 hour for urgent reports, the deadline, the 90% tolerance.
    assert targets == {"7", "14", "1", "0", "0.9"}
    assert "90% tolerance" in html
    assert "14 days: routine acceptable" in html
    assert "<script" not in html
    assert not re.search(r'(?:src|href)="https?:', html)
    assert "Riverside Imaging" in html  # provider names from the providers file


def test_no_patient_identifier_reaches_any_output(written: Path) -> None:
    for path in written.iterdir():
        text = path.read_text()
        assert NHS not in text, path.name
        assert sc.R1 not in text, path.name  # figures only: not even referral ids


def test_a_histogram_keeps_values_outside_its_edges_in_the_end_bins() -> None:
    svg = histogram_svg("t", "x", [("s", [-5.0, 0.5, 3.5, 99.0])], edges=[0.0, 1.0, 2.0, 3.0])
    counts = [int(n) for n in re.findall(r"<title>s: (\d+)</title>", svg)]
    assert counts == [2, 2]  # -5 and 0.5 in the first bin; 3.5 and 99 in the open last bin
