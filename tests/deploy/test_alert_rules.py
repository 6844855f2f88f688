"""The alert rules: valid, unit-tested with promtool, documented, and on the agreed metrics."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from tests.deploy import manifests as m


def test_rules_file_passes_promtool_check() -> None:
    result = m.run(m.tool("promtool"), "check", "rules", str(m.RULES_FILE))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", m.RULE_TESTS, ids=lambda p: p.name)
def test_promtool_unit_tests_pass(path: Path) -> None:
    result = m.run(m.tool("promtool"), "test", "rules", path.name, cwd=path.parent)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_prometheus_config_loads_the_rules() -> None:
    config = m.load_yaml(m.MONITORING / "prometheus.yml")
    assert config["rule_files"] == ["alerts.yaml"]
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    # The rules select targets by job: one job per service, named as the service.
    assert set(m.PORTS) | {"kafka-exporter"} <= jobs
    for job in config["scrape_configs"]:
        if job["job_name"] in m.PORTS:
            assert job["static_configs"][0]["targets"] == [
                f"{job['job_name']}:{m.PORTS[job['job_name']]}"
            ]
    result = m.run(m.tool("promtool"), "check", "config", str(m.MONITORING / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_summary_description_severity_and_a_runbook_section() -> None:
    runbooks = m.RUNBOOKS.read_text(encoding="utf-8")
    headings = {
        re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
        for h in re.findall(r"(?m)^#{2,3} (.+)$", runbooks)
    }
    alerts = m.alert_rules()
    assert len({a["alert"] for a in alerts}) == len(alerts), "alert names must be unique"
    for alert in alerts:
        name = alert["alert"]
        annotations = alert.get("annotations", {})
        assert annotations.get("summary"), f"{name}: no summary"
        assert len(annotations.get("description", "")) > 40, f"{name}: no real description"
        assert annotations.get("runbook_url") == f"docs/runbooks.md#{name.lower()}", name
        assert name.lower() in headings, f"docs/runbooks.md has no section for {name}"
        assert alert["labels"]["severity"] in {"page", "ticket"}, name


def test_alerts_read_only_documented_metrics_and_their_own_recordings() -> None:
    recorded = m.recorded_names()
    for group in m.rule_groups():
        for rule in group["rules"]:
            unknown = m.unknown_metrics(rule["expr"], recorded)
            assert not unknown, (
                f"{rule.get('alert') or rule.get('record')} reads {unknown}, not in docs/metrics.md"
            )


def test_the_issue_s_alert_families_are_all_covered() -> None:
    read = {name for rule in m.alert_rules() for name in m.metric_names(rule["expr"])}
    for metric in (
        "pathway_bookings_total",
        "pathway_referrals_at_risk",
        "pathway_examinations_overdue",
        "pathway_vetting_worklist_oldest_seconds",
        "pathway_alerts_overdue",
        "pathway_alerts_open",
        "kafka_consumergroup_lag",
        "kafka_consumergroup_current_offset",
        "pathway_dead_letters_total",
        "pathway_handler_retries_total",
        "pathway_events_handled_total",
        "pathway_handler_seconds_bucket",
        "pathway_publish_errors_total",
        "pathway_outbox_backlog",
        "pathway_authz_denied_total",
        "pathway_reports_undelivered",
        "up",
    ):
        assert metric in read, f"no alert watches {metric}"
    recording = " ".join(r["expr"] for g in m.rule_groups() for r in g["rules"] if "record" in r)
    assert 'pathway_reports_total{within_target="false"}' in recording


def test_turnaround_burn_alerts_use_the_workbook_windows_and_a_volume_guard() -> None:
    alerts = {a["alert"]: a for a in m.alert_rules()}
    windows = {
        "ReportTurnaroundBudgetBurnFast": ("ratio_rate1h", "ratio_rate5m", "14.4", "page"),
        "ReportTurnaroundBudgetBurnMedium": ("ratio_rate6h", "ratio_rate30m", "6 *", "page"),
        "ReportTurnaroundBudgetBurnSlow": (
            "ratio_rate3d",
            "ratio_rate6h",
            "error_budget",
            "ticket",
        ),
    }
    for name, (long_window, short_window, factor, severity) in windows.items():
        expr = alerts[name]["expr"]
        assert long_window in expr, name
        assert short_window in expr, name
        assert factor in expr, name
        assert "pathway:reports:increase" in expr, f"{name} has no minimum-volume guard"
        assert alerts[name]["labels"]["severity"] == severity
    records = {r["record"]: r for g in m.rule_groups() for r in g["rules"] if "record" in r}
    budget = records["pathway:report_turnaround:error_budget"]
    assert budget["expr"] == "vector(0.10)", "the guide's tolerance is 90% within target"


def test_every_alert_has_promtool_cases_that_fire_it_and_that_do_not() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in m.rule_test_cases():
        (firing if case["exp_alerts"] else quiet).add(case["alertname"])
    for alert in m.alert_rules():
        assert alert["alert"] in firing, f"no promtool test fires {alert['alert']}"
        assert alert["alert"] in quiet, f"no promtool test shows {alert['alert']} staying quiet"


def test_prometheusrule_in_kubernetes_carries_exactly_the_rules_file() -> None:
    spec = importlib.util.spec_from_file_location(
        "render_prometheusrule", m.MONITORING / "render_prometheusrule.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    generated = (m.BASE / "prometheusrule.yaml").read_text(encoding="utf-8")
    assert generated == module.render(), "run deploy/monitoring/render_prometheusrule.py"
    rule = m.load_yaml(m.BASE / "prometheusrule.yaml")
    assert rule["kind"] == "PrometheusRule"
    assert rule["spec"]["groups"] == m.rule_groups()
