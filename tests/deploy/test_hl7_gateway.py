"""The HL7 v2 gateway's deployment: its image, its compose service and its Kubernetes
manifests agree with what the gateway's own code and settings read and use."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from pathway_cli.hl7.gateway import GatewaySettings
from pathway_schemas import topics
from tests.deploy import manifests as m

Doc = dict[str, Any]


def _gateways(overlay: str) -> dict[str, Doc]:
    found = m.deployments(m.build_overlay(overlay), m.GATEWAY_COMPONENT)
    assert found, f"{overlay}: no HL7 gateway Deployment"
    return found


def _settings(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> GatewaySettings:
    """The gateway's settings exactly as it would read them from this environment."""
    for name in [n for n in os.environ if n.startswith("PATHWAY_HL7_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return GatewaySettings()


def _container(deployment: Doc) -> Doc:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(container)


def _port(container: Doc, name: str) -> int:
    (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == name]
    return int(port)


# --------------------------------------------------------------------------- Kafka access


def test_the_gateway_code_names_every_topic_it_uses_in_a_way_the_checks_can_read() -> None:
    use = m.gateway_kafka_use()
    assert use.reads, "no topic found in the function that assigns the gateway's consumer"
    assert use.writes, "no topic found in the gateway's to_record(topic=...) calls"
    unclassified = use.referenced - use.reads - use.writes
    assert not unclassified, f"pathway_cli/hl7 uses topics {unclassified}: read or written?"


def _granted(user: Doc) -> tuple[dict[str, set[str]], list[Doc]]:
    """A KafkaUser's operations per topic, and its ACLs on anything else (groups, cluster)."""
    topic_acls: dict[str, set[str]] = {}
    others: list[Doc] = []
    for acl in user["spec"]["authorization"]["acls"]:
        resource = acl["resource"]
        assert resource.get("patternType", "literal") == "literal", resource
        if resource["type"] == "topic":
            topic_acls.setdefault(resource["name"], set()).update(acl["operations"])
        else:
            others.append(acl)
    return topic_acls, others


def test_each_gateway_user_may_use_exactly_the_topics_its_code_reads_and_writes() -> None:
    use = m.gateway_kafka_use()
    built = m.build_overlay("prod")
    users = {u["metadata"]["name"]: u for u in built.of_kind("KafkaUser")}
    for name, deployment in _gateways("prod").items():
        env = m.container_env(built, _container(deployment))
        provider = env["PATHWAY_HL7_PROVIDER"]
        assert provider in m.provider_codes(), f"{name}: {provider} is not in providers.json"
        username = env["PATHWAY_HL7_KAFKA__SASL_USERNAME"]
        assert username == name
        assert env["PATHWAY_HL7_KAFKA__SASL_PASSWORD"] == f"<secret {name}/password>"
        user = users[username]
        assert user["metadata"]["labels"]["strimzi.io/cluster"] == "pathway-kafka"
        assert user["spec"]["authentication"]["type"] == "scram-sha-512"
        granted, others = _granted(user)
        assert granted == m.gateway_topic_acls(provider, use), name
        # No consumer group (positions are kept on the gateway's volume): no group ACL.
        assert bool(others) == use.consumer_group, f"{name}: {others}"


def test_the_acl_check_fails_for_a_gateway_that_wrote_another_topic_or_joined_a_group() -> None:
    """The check above can fail: the analysis sees what a changed gateway would need."""
    source = (m.HL7_CODE / "gateway.py").read_text(encoding="utf-8")
    written = "topic=topics.provider_inbound(self.provider)"
    assert written in source
    assert "group_id=None" in source
    changed = source.replace(written, "topic=topics.REPORT").replace(
        "group_id=None", 'group_id="hl7-gateway"'
    )
    use = m.gateway_kafka_use(changed)
    assert use.consumer_group
    user = m.build_overlay("prod").one("KafkaUser", "hl7-gateway-rxa01")
    granted, _ = _granted(user)
    needed = m.gateway_topic_acls("RXA01", use)
    assert needed != granted
    assert needed[topics.REPORT] == {"Write", "Describe"}


# --------------------------------------------------------------------------- the Deployment


@pytest.mark.parametrize("overlay", m.OVERLAYS)
def test_the_manifest_gives_the_gateway_settings_it_can_run_with(
    overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = m.build_overlay(overlay)
    for name, deployment in _gateways(overlay).items():
        container = _container(deployment)
        settings = _settings(monkeypatch, m.container_env(built, container))
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert pod_labels["imaging-pathway/provider"] == settings.provider, name
        assert name == f"hl7-gateway-{settings.provider.lower()}"
        # Reachable from outside the pod, on the ports the manifest declares.
        assert settings.listen_host == "0.0.0.0"
        assert settings.listen_port == _port(container, "mllp")
        assert settings.metrics_port == _port(container, "metrics")
        assert settings.allow_from == (), "probes come from the node: the NetworkPolicy filters"
        # Kafka as the services reach it: SCRAM over TLS, trusting the cluster CA.
        assert settings.kafka.security_protocol == "SASL_SSL"
        assert settings.kafka.sasl_mechanism == "SCRAM-SHA-512"
        assert settings.kafka.sasl_username == name
        assert settings.kafka.enable_idempotence is True
        env = {e["name"]: e for e in container["env"]}
        assert env["SSL_CERT_FILE"]["value"].startswith("/etc/pathway/kafka-ca/")
        # Its orders and read positions are on the claimed volume, not in the container.
        mounts = {v["mountPath"]: v["name"] for v in container["volumeMounts"]}
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        state = volumes[mounts[str(settings.state_dir)]]
        claim = built.one("PersistentVolumeClaim", state["persistentVolumeClaim"]["claimName"])
        assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]


@pytest.mark.parametrize("overlay", m.OVERLAYS)
def test_the_gateway_is_one_hardened_replica_probed_on_its_mllp_port(overlay: str) -> None:
    built = m.build_overlay(overlay)
    for name, deployment in _gateways(overlay).items():
        spec = deployment["spec"]
        pod = spec["template"]["spec"]
        container = _container(deployment)
        # Assigned partitions and positions on a volume: two copies would send orders twice.
        assert spec["replicas"] == 1, name
        assert spec["strategy"] == {"type": "Recreate"}, name
        targets = {
            h["spec"]["scaleTargetRef"]["name"] for h in built.of_kind("HorizontalPodAutoscaler")
        }
        assert name not in targets
        assert pod["automountServiceAccountToken"] is False
        assert pod["serviceAccountName"] == name
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert pod["terminationGracePeriodSeconds"] >= 30
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["readOnlyRootFilesystem"] is True
        assert security["capabilities"]["drop"] == ["ALL"]
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert container[probe]["tcpSocket"]["port"] == "mllp", (name, probe)
        assert {"cpu", "memory"} <= set(container["resources"]["requests"])
        assert "memory" in container["resources"]["limits"]
        image = container["image"]
        assert image.rsplit("/", 1)[-1].startswith("hl7-gateway:"), image
        assert not image.endswith(":latest")
        assert any(v["mountPath"] == "/tmp" for v in container["volumeMounts"])
        for labels in (deployment["metadata"]["labels"], spec["template"]["metadata"]["labels"]):
            assert labels["app.kubernetes.io/name"] == "hl7-gateway"
            assert labels["app.kubernetes.io/instance"] == name
            assert labels["app.kubernetes.io/component"] == m.GATEWAY_COMPONENT
            assert labels["app.kubernetes.io/part-of"] == "imaging-pathway"
            assert labels["app.kubernetes.io/managed-by"] == "kustomize"
        service = built.one("Service", name)
        assert service["spec"]["selector"] == spec["selector"]["matchLabels"]
        assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [
            (_port(container, "mllp"), "mllp")
        ]


@pytest.mark.parametrize("overlay", m.OVERLAYS)
def test_only_the_ris_and_prometheus_reach_the_gateway_and_it_reaches_only_kafka_and_the_ris(
    overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = m.build_overlay(overlay)
    policies = built.of_kind("NetworkPolicy")
    for name, deployment in _gateways(overlay).items():
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        settings = _settings(monkeypatch, m.container_env(built, _container(deployment)))
        own = [
            p
            for p in policies
            if p["spec"]["podSelector"]
            and m.labels_match(p["spec"]["podSelector"]["matchLabels"], pod_labels)
        ]
        assert [p["metadata"]["name"] for p in own] == [name], "one policy of its own"
        spec = own[0]["spec"]
        ingress = {port["port"]: rule["from"] for rule in spec["ingress"] for port in rule["ports"]}
        assert set(ingress) == {"mllp", "metrics"}
        assert all("ipBlock" in peer for peer in ingress["mllp"]), "MLLP from the RIS only"
        assert ingress["metrics"] == [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
        ]
        egress = {port["port"]: rule["to"] for rule in spec["egress"] for port in rule["ports"]}
        assert set(egress) == {9093, settings.ris_port}, "Kafka (TLS) and the RIS only"
        assert all("ipBlock" in peer for peer in egress[settings.ris_port])
        ris_networks = {peer["ipBlock"]["cidr"] for peer in egress[settings.ris_port]}
        assert ris_networks == {peer["ipBlock"]["cidr"] for peer in ingress["mllp"]}
        # The brokers let it in.
        kafka = built.one("NetworkPolicy", "kafka-cluster")["spec"]["ingress"][0]["from"]
        assert any(
            "podSelector" in peer and m.labels_match(peer["podSelector"]["matchLabels"], pod_labels)
            for peer in kafka
        ), "the kafka-cluster policy does not admit the gateway"


def test_prometheus_scrapes_the_gateway_metrics_port() -> None:
    built = m.build_overlay("prod")
    (monitor,) = [
        p for p in built.of_kind("PodMonitor") if p["metadata"]["name"] == "pathway-hl7-gateways"
    ]
    for name, deployment in _gateways("prod").items():
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert m.labels_match(monitor["spec"]["selector"]["matchLabels"], pod_labels), name
        endpoint = monitor["spec"]["podMetricsEndpoints"][0]
        assert _port(_container(deployment), endpoint["port"])
        assert endpoint["path"] == "/metrics"


# --------------------------------------------------------------------------- image and compose


def test_gateway_dockerfile_ships_the_cli_and_kit_without_services_and_runs_non_root() -> None:
    text = m.GATEWAY_DOCKERFILE.read_text(encoding="utf-8")
    service_base = re.search(r"(?m)^ARG PYTHON_IMAGE=(\S+)$", m.dockerfile("request"))
    assert service_base is not None
    assert f"ARG PYTHON_IMAGE={service_base.group(1)}" in text, "the services' base image"
    assert len(re.findall(r"(?m)^FROM ", text)) == 2
    copied = re.findall(r"(?m)^COPY (?!--from)(\S+) ", text)
    assert set(copied) == {
        "schemas/",
        "pyproject.toml",
        "services/__init__.py",
        "services/common/",
        "pathway_cli/__init__.py",
        "pathway_cli/hl7/",
    }
    final = m.final_stage(text)
    assert "COPY --from=build /opt/venv /opt/venv" in final
    user = re.search(r"(?m)^USER (\d+):(\d+)$", final)
    assert user is not None
    assert int(user.group(1)) >= 10000
    assert "HEALTHCHECK" in final
    assert 'ENTRYPOINT ["python", "-m", "pathway_cli.hl7"]' in final
    assert "PYTHONDONTWRITEBYTECODE=1" in final
    for tool in ("apt-get", "gcc", "build-essential", "pip install"):
        assert tool not in final


def test_what_the_gateway_image_copies_is_all_the_gateway_imports(tmp_path: Path) -> None:
    """Only the Dockerfile's COPY sources on the path, not the checkout or its editable
    install: the image's entry point still loads every module of the gateway, so the image
    lacks nothing of ours it needs (third-party packages come from the test environment)."""
    text = m.GATEWAY_DOCKERFILE.read_text(encoding="utf-8")
    for source in re.findall(r"(?m)^COPY (?!--from)(\S+) ", text):
        origin = m.ROOT / source
        target = tmp_path / source
        target.parent.mkdir(parents=True, exist_ok=True)
        if origin.is_dir():
            shutil.copytree(origin, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(origin, target)
    entrypoint = re.search(r"(?m)^ENTRYPOINT (\[.*\])$", text)
    assert entrypoint is not None
    program, *arguments = json.loads(entrypoint.group(1))
    assert program == "python"
    site_packages = next(p for p in sys.path if p.endswith("site-packages"))
    # -S: the site-packages' .pth files (the checkout's editable install) are not run.
    env = {
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(tmp_path / "schemas"), site_packages]),
        "PATH": os.environ.get("PATH", ""),
    }
    started = m.run(sys.executable, "-S", *arguments, "--help", cwd=tmp_path, env=env)
    assert started.returncode == 0, started.stderr
    assert "--provider" in started.stdout
    modules = [
        f"pathway_cli.hl7.{p.stem}" for p in sorted(m.HL7_CODE.glob("*.py")) if p.stem[0] != "_"
    ]
    loads = (
        "import importlib, sys\n"
        "for name in sys.argv[2:]:\n"
        "    module = importlib.import_module(name)\n"
        "    assert module.__file__.startswith(sys.argv[1]), module.__file__\n"
        "import aiokafka.structs\n"
    )
    imported = m.run(
        sys.executable, "-S", "-c", loads, str(tmp_path), *modules, cwd=tmp_path, env=env
    )
    assert imported.returncode == 0, imported.stderr


def test_compose_runs_the_gateway_image_on_kafka_with_a_state_volume(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    doc = m.compose()
    spec = doc["services"]["hl7-gateway-rxa01"]
    assert spec["build"] == {"context": ".", "dockerfile": "pathway_cli/hl7/Dockerfile"}
    assert spec["profiles"] == ["hl7"], "started only when there is a RIS to talk to"
    assert spec["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert spec["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"
    assert spec["read_only"] is True
    assert spec["cap_drop"] == ["ALL"]
    image_env = dict(
        re.findall(r"(PATHWAY_HL7_\w+)=(\S+)", m.final_stage(m.GATEWAY_DOCKERFILE.read_text()))
    )
    env = {**image_env, **{k: m.compose_value(v) for k, v in spec["environment"].items()}}
    settings = _settings(monkeypatch, env)
    assert settings.provider in m.provider_codes()
    assert settings.kafka.bootstrap_servers == "kafka:9092"
    assert settings.kafka.enable_idempotence is True
    volume, mount = spec["volumes"][0].split(":")[:2]
    assert volume in doc["volumes"], "a named volume: the state outlives the container"
    assert mount == str(settings.state_dir)
    assert spec["ports"] == [f"127.0.0.1:{settings.listen_port}:{settings.listen_port}"]
    scrape = m.load_yaml(m.MONITORING / "prometheus.yml")["scrape_configs"]
    targets = [t for job in scrape for c in job["static_configs"] for t in c["targets"]]
    assert f"hl7-gateway-rxa01:{settings.metrics_port}" in targets
