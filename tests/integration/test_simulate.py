"""`pathway simulate` then `pathway audit`: a few simulated days, audited from the export.

Starts a whole system (broker, store, five services) on a simulated clock, as the command
does; the figures the plan fixes (who referred what, when) must come out of the audit.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pathway_cli.audit.source import read_jsonl
from pathway_cli.main import app
from pathway_cli.simulate import WorkloadSettings, plan_workload
from pathway_cli.system import REPO

DAYS = 3
AUDIT_FILES = {
    "report.html",
    "audit.json",
    "volumes.csv",
    "utilisation.csv",
    "booked_per_day.csv",
    "appropriateness.csv",
    "returns.csv",
    "guidance.csv",
    "waits.csv",
    "wait_breaches.csv",
    "turnaround.csv",
    "dna.csv",
    "delivery.csv",
    "acknowledgement.csv",
    "duplicates.csv",
}


@pytest.mark.timeout(600)
def test_simulate_then_audit_writes_the_audit_of_the_simulated_days(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # both commands' defaults: var/simulation/events.jsonl
    runner = CliRunner()
    simulated = runner.invoke(app, ["simulate", "--seed", "1", "--days", str(DAYS)])
    assert simulated.exit_code == 0, simulated.output
    events_file = tmp_path / "var" / "simulation" / "events.jsonl"
    summary = json.loads((tmp_path / "var" / "simulation" / "summary.json").read_text())

    audited = runner.invoke(
        app,
        [
            "audit",
            "--out",
            str(tmp_path / "audit"),
            "--providers",
            str(REPO / "config" / "providers.json"),
        ],
    )
    assert audited.exit_code == 0, audited.output
    assert "from var/simulation/events.jsonl" in audited.output  # the default source
    assert {p.name for p in (tmp_path / "audit").iterdir()} == AUDIT_FILES

    # The plan decides who refers what: the audit of the events must say the same.
    plan = plan_workload(WorkloadSettings(seed=1, days=DAYS))
    document = json.loads((tmp_path / "audit" / "audit.json").read_text())
    volumes = document["tables"]["volumes"]["rows"]
    by = {(r["practice"], r["modality"], r["priority"]): r["referrals"] for r in volumes}
    assert by[("*", "*", "*")] == len(plan)
    for practice, count in Counter(p.practice for p in plan).items():
        assert by[(practice, "*", "*")] == count
    for modality, count in Counter(p.modality for p in plan).items():
        assert by[("*", modality, "*")] == count
    assert by.get(("*", "*", "urgent"), 0) == sum(p.urgent for p in plan)

    # The whole pathway ran: walk-ins and bookings, examinations, reports, deliveries.
    happened = {row["what"]: row["referrals"] for row in summary["summary"]}
    assert happened["referrals received"] == len(plan)
    assert happened["walk-in authorised"] > 0
    assert happened["booked"] > 0
    assert happened["examined"] > 0
    assert happened["reported"] > 0
    assert happened["delivered to the practice"] == happened["reported"]
    assert summary["run"]["refused"].get("submit 422", 0) == 0

    # Every clock is the simulated one: nothing happened outside the simulated days.
    events = read_jsonl(events_file).events
    first = min(r.event.occurred_at for r in events)
    last = max(r.event.occurred_at for r in events)
    assert first >= plan[0].submit_at
    assert (last - plan[0].submit_at).days <= DAYS
