"""compose.yaml, the Dockerfiles and the Grafana dashboard, checked offline."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pathway_schemas import topics
from tests.deploy import manifests as m

PINNED = re.compile(r"^[\w./-]+:v?\d+(\.\d+)+(-[\w.]+)?$|@sha256:[0-9a-f]{64}$")


def test_compose_file_matches_the_compose_specification() -> None:
    result = m.run(
        m.tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(m.COMPOSE)
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_schema_check_rejects_a_broken_file(tmp_path: Path) -> None:
    """The check above can fail: a wrong depends_on condition is caught."""
    broken = tmp_path / "compose.yaml"
    broken.write_text(m.COMPOSE.read_text().replace("service_healthy", "healthy_please"))
    result = m.run(
        m.tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(broken)
    )
    assert result.returncode != 0


def test_services_start_only_on_healthy_kafka_and_an_initiated_replica_set() -> None:
    services = m.compose()["services"]
    assert services["kafka"]["healthcheck"]["test"]
    assert services["mongo"]["healthcheck"]["test"]
    assert "--replSet" in services["mongo"]["command"]
    for service, port in m.PORTS.items():
        spec = services[service]
        depends = spec["depends_on"]
        assert depends["kafka"]["condition"] == "service_healthy", service
        assert depends["mongo"]["condition"] == "service_healthy", service
        assert depends["kafka-init"]["condition"] == "service_completed_successfully", service
        assert depends["mongo-init"]["condition"] == "service_completed_successfully", service
        assert spec["build"] == {"context": ".", "dockerfile": f"services/{service}/Dockerfile"}
        assert spec["ports"] == [f"127.0.0.1:{port}:{port}"]
        assert spec["read_only"] is True, service
        assert spec["cap_drop"] == ["ALL"], service
        env = spec["environment"]
        prefix = service.upper() + "_"
        assert all(key.startswith(prefix) for key in env), service
        assert env[f"{prefix}KAFKA__ENABLE_IDEMPOTENCE"] == "true", (
            "idempotence is on for real Kafka"
        )
        assert "replicaSet=rs0" in env[f"{prefix}MONGO__URL"]
        assert env[f"{prefix}OTEL__EXPORTER"] == "otlp"


def test_compose_writes_no_secret_inline_and_pins_every_image() -> None:
    doc = m.compose()
    for name, spec in doc["services"].items():
        for key, value in spec.get("environment", {}).items():
            if re.search(r"PASSWORD|SECRET|TOKEN|KEY", key):
                assert key.endswith("__FILE"), (name, key)
                assert str(value).startswith("/run/secrets/"), (name, key)
        if "image" in spec and "build" not in spec:
            assert PINNED.search(spec["image"]), (
                f"{name}: {spec['image']} is not pinned to a version"
            )
    for secret in doc["secrets"].values():
        assert "secrets/" in secret["file"]
    ignored = (m.ROOT / "deploy" / "compose" / ".gitignore").read_text()
    assert "secrets/" in ignored.splitlines()


def test_compose_topic_job_creates_exactly_the_pathway_topics() -> None:
    script = (m.ROOT / "deploy" / "compose" / "create-topics.sh").read_text()
    created = re.findall(r"(?m)^create (\S+) \d+ \d+$", script)
    assert sorted(created) == sorted(topics.all_topics(m.provider_codes()))
    assert (
        m.compose()["services"]["kafka"]["environment"]["KAFKA_AUTO_CREATE_TOPICS_ENABLE"]
        == "false"
    )


def test_compose_monitoring_loads_the_rules_dashboard_and_trace_pipeline() -> None:
    services = m.compose()["services"]
    assert "./deploy/monitoring:/etc/prometheus:ro" in services["prometheus"]["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]
    grafana_volumes = services["grafana"]["volumes"]
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in grafana_volumes
    assert "./deploy/grafana/dashboards:/var/lib/grafana/dashboards:ro" in grafana_volumes
    provider = m.load_yaml(
        m.DEPLOY / "grafana" / "provisioning" / "dashboards" / "imaging-pathway.yaml"
    )
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    collector = m.load_yaml(m.MONITORING / "otel-collector.yaml")
    assert collector["service"]["pipelines"]["traces"]["exporters"] == ["otlp/jaeger"]
    assert collector["exporters"]["otlp/jaeger"]["endpoint"] == "jaeger:4317"
    assert services["kafka-exporter"]["command"] == ["--kafka.server=kafka:9092"]


@pytest.mark.parametrize("service", topics.SERVICES)
def test_dockerfile_is_multi_stage_pinned_non_root_and_health_checked(service: str) -> None:
    text = m.dockerfile(service)
    port = m.PORTS[service]
    base = re.search(r"(?m)^ARG PYTHON_IMAGE=(\S+)$", text)
    assert base is not None
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base.group(1))
    assert len(re.findall(r"(?m)^FROM ", text)) == 2, "a build stage and a run stage"
    final = m.final_stage(text)
    assert "COPY --from=build /opt/venv /opt/venv" in final
    user = re.search(r"(?m)^USER (\d+):(\d+)$", final)
    assert user is not None, "runs as a numeric user"
    assert int(user.group(1)) >= 10000, "runs as a non-root user"
    assert "HEALTHCHECK" in final
    assert f"http://127.0.0.1:{port}/healthz" in final
    assert f'ENTRYPOINT ["python", "-m", "services.{service}"]' in final
    assert f"{service.upper()}_HTTP__HOST=0.0.0.0" in final
    assert "PYTHONDONTWRITEBYTECODE=1" in final, "nothing written to a read-only root"
    assert "pip uninstall" in final
    for tool in ("apt-get", "gcc", "build-essential", "pip install"):
        assert tool not in final, f"{service}: the run stage has {tool}"
    # Only the contracts, the kit and this service: no other service's code in the image.
    others = [s for s in topics.SERVICES if s != service]
    assert not any(f"services/{other}/" in text for other in others)


def test_dockerfiles_pass_hadolint() -> None:
    files = [str(m.ROOT / "services" / s / "Dockerfile") for s in topics.SERVICES]
    files.append(str(m.GATEWAY_DOCKERFILE))
    result = m.run(m.tool("hadolint"), *files)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerignore_keeps_the_context_to_what_images_copy() -> None:
    lines = (m.ROOT / ".dockerignore").read_text().splitlines()
    assert "**" in lines
    assert {"!schemas/", "!pyproject.toml", "!services/", "!pathway_cli/"} <= set(lines)


def test_dashboard_shows_flow_waits_share_backlog_dead_letters_and_lag() -> None:
    dashboard = json.loads(m.DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    recorded = m.recorded_names()
    for expr in exprs:
        assert not m.unknown_metrics(expr, recorded), expr
    read = {name for expr in exprs for name in m.metric_names(expr)}
    wanted = {
        "flow": {
            "pathway_referrals_received_total",
            "pathway_vetting_decisions_total",
            "pathway_reports_total",
        },
        "waits": {
            "pathway_wait_to_appointment_seconds_bucket",
            "pathway_report_turnaround_seconds_bucket",
        },
        "share within target": {"pathway_bookings_total"},
        "backlog": {
            "pathway_vetting_worklist_open",
            "pathway_outbox_backlog",
            "pathway_examinations_overdue",
        },
        "dead letters": {"pathway_dead_letters_total"},
        "lag": {"kafka_consumergroup_lag"},
    }
    for theme, metrics in wanted.items():
        assert metrics <= read, f"dashboard lacks {theme}: {metrics - read}"
    assert all(p["datasource"]["uid"] == "${datasource}" for p in panels)
    share = [p for p in panels if p["fieldConfig"]["defaults"].get("unit") == "percentunit"]
    assert share
    for panel in share:
        steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
        assert steps[-1]["value"] == 0.9, f"{panel['title']} must turn green at the 90% target"
