"""deploy/k8s: overlays build, core resources validate strictly, custom resources have the
shape reliability.md asks for (ACLs per user, topic settings), and every Deployment is
hardened (probes, resources, security contexts, labels)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from pathway_schemas import topics
from services.notify.settings import Settings as NotifySettings
from tests.deploy import manifests as m

Doc = dict[str, Any]
STANDARD_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/managed-by",
)


def _kustomizations() -> list[Path]:
    return sorted(m.DEPLOY.rglob("kustomization.yaml"))


# --------------------------------------------------------------------------- building


def test_every_kustomization_references_files_that_exist() -> None:
    """Runs without kubectl: every resource, generator file and patch path resolves."""
    for kustomization in _kustomizations():
        spec = m.load_yaml(kustomization)
        here = kustomization.parent
        for entry in spec.get("resources", []):
            target = (here / entry).resolve()
            assert target.exists(), f"{kustomization}: resource {entry} does not exist"
            if target.is_dir():
                assert (target / "kustomization.yaml").exists(), f"{entry} is no kustomization"
            else:
                assert m.load_all(target), f"{entry} holds no documents"
        for generator in spec.get("configMapGenerator", []):
            for file in generator.get("files", []):
                path = (here / file.split("=")[-1]).resolve()
                assert path.is_file(), f"{kustomization}: {file} does not exist"
                assert here in path.parents, f"{kustomization}: {file} is outside the kustomization"
        for patch in spec.get("patches", []):
            if "path" in patch:
                assert (here / patch["path"]).is_file(), f"{kustomization}: patch {patch['path']}"
            else:
                assert isinstance(yaml.safe_load(patch["patch"]), list | dict)


@pytest.mark.parametrize("overlay", m.OVERLAYS)
def test_overlay_builds_with_kubectl_kustomize(overlay: str) -> None:
    built = m.build_overlay(overlay)
    kinds = {d["kind"] for d in built.docs}
    assert {"Deployment", "KafkaTopic", "KafkaUser", "Kafka", "MongoDBCommunity"} <= kinds
    assert {d["metadata"].get("namespace") for d in built.docs if d["kind"] != "Namespace"} == {
        "imaging-pathway"
    }


@pytest.mark.parametrize("overlay", m.OVERLAYS)
def test_core_resources_pass_kubernetes_validate_strict(overlay: str, tmp_path: Path) -> None:
    validate = m.tool("kubernetes-validate")
    core = [d for d in m.build_overlay(overlay).docs if d["kind"] in m.CORE_KINDS]
    assert len(core) > 20
    path = tmp_path / f"{overlay}-core.yaml"
    path.write_text(yaml.safe_dump_all(core), encoding="utf-8")
    result = m.run(validate, "--strict", "--quiet", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_kubernetes_validate_strict_rejects_an_unknown_field(tmp_path: Path) -> None:
    """The check above can fail: a misspelt field in a Deployment is caught."""
    validate = m.tool("kubernetes-validate")
    deployment = m.base_of_kind("Deployment")[0]
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(broken), encoding="utf-8")
    assert m.run(validate, "--strict", "--quiet", str(path)).returncode != 0


# --------------------------------------------------------------------------- kafka


def _topic_acls(user: Doc) -> dict[str, set[str]]:
    acls: dict[str, set[str]] = {}
    for acl in user["spec"]["authorization"]["acls"]:
        if acl["resource"]["type"] == "topic":
            assert acl["resource"].get("patternType", "literal") == "literal", acl
            acls.setdefault(acl["resource"]["name"], set()).update(acl["operations"])
    return acls


def _group_acls(user: Doc) -> list[Doc]:
    return [a for a in user["spec"]["authorization"]["acls"] if a["resource"]["type"] == "group"]


def test_a_kafka_topic_is_declared_for_every_topic_with_replication_and_retention() -> None:
    declared = {t["spec"]["topicName"]: t for t in m.base_of_kind("KafkaTopic")}
    assert set(declared) == set(topics.all_topics(m.provider_codes()))
    for service in topics.SERVICES:
        assert topics.dead_letter(service) in declared
    for code in m.provider_codes():
        assert topics.provider_inbound(code) in declared
        assert topics.provider_outbound(code) in declared
    for name, topic in declared.items():
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == "pathway-kafka", name
        assert topic["spec"]["replicas"] == 3, name
        assert topic["spec"]["config"]["min.insync.replicas"] == 2, name
        assert int(topic["spec"]["config"]["retention.ms"]) > 0, name
        assert topic["spec"]["partitions"] >= 1, name


def test_each_provider_user_may_write_only_its_inbound_and_read_only_its_outbound_topic() -> None:
    users = {u["metadata"]["name"]: u for u in m.base_of_kind("KafkaUser")}
    for code in m.provider_codes():
        user = users[f"provider-{code.lower()}"]
        assert user["spec"]["authentication"]["type"] == "scram-sha-512"
        assert _topic_acls(user) == {
            topics.provider_inbound(code): {"Write", "Describe"},
            topics.provider_outbound(code): {"Read"},
        }
        groups = _group_acls(user)
        assert [g["resource"]["name"] for g in groups] == [f"provider-{code.lower()}"]
        assert all(g["operations"] == ["Read"] for g in groups)


def test_each_service_user_reads_and_writes_exactly_its_topics() -> None:
    users = {u["metadata"]["name"]: u for u in m.base_of_kind("KafkaUser")}
    for service, (reads, writes) in m.expected_topic_access().items():
        acls = _topic_acls(users[service])
        read = {t for t, ops in acls.items() if "Read" in ops}
        written = {t for t, ops in acls.items() if "Write" in ops}
        assert read == reads, f"{service} reads {read ^ reads} wrongly"
        assert written == writes, f"{service} writes {written ^ writes} wrongly"
        allowed = {"Read", "Write", "Describe"}
        assert all(ops <= allowed for ops in acls.values()), service
        groups = _group_acls(users[service])
        assert [(g["resource"]["name"], g["resource"].get("patternType")) for g in groups] == [
            (service, "literal")
        ]
    gateways = {
        d["metadata"]["name"]
        for d in m.base_of_kind("Deployment")
        if d["metadata"]["labels"]["app.kubernetes.io/component"] == m.GATEWAY_COMPONENT
    }
    assert set(users) == {
        *topics.SERVICES,
        *(f"provider-{c.lower()}" for c in m.provider_codes()),
        *gateways,
    }


def test_no_service_or_provider_is_granted_an_unknown_or_wildcard_topic() -> None:
    known = set(topics.all_topics(m.provider_codes()))
    for user in m.base_of_kind("KafkaUser"):
        for name in _topic_acls(user):
            assert name in known, (user["metadata"]["name"], name)
            assert "*" not in name, (user["metadata"]["name"], name)


def test_kafka_clusters_disable_auto_creation_and_require_scram_over_tls() -> None:
    for overlay, replicas, isr in (("prod", 3, 2), ("dev", 1, 1)):
        built = m.build_overlay(overlay)
        kafka = built.one("Kafka", "pathway-kafka")
        config = kafka["spec"]["kafka"]["config"]
        assert config["auto.create.topics.enable"] is False
        assert config["min.insync.replicas"] == isr
        assert kafka["spec"]["kafka"]["authorization"]["type"] == "simple"
        for listener in kafka["spec"]["kafka"]["listeners"]:
            assert listener["tls"] is True, (overlay, listener["name"])
            assert listener["authentication"]["type"] == "scram-sha-512"
        assert kafka["spec"]["kafkaExporter"], "consumer lag comes from Kafka Exporter"
        pools = built.of_kind("KafkaNodePool")
        assert sum(p["spec"]["replicas"] for p in pools) == replicas
        assert all(t["spec"]["replicas"] == replicas for t in built.of_kind("KafkaTopic"))


# --------------------------------------------------------------------------- mongodb


def test_mongodb_is_a_three_member_tls_replica_set_with_a_user_per_service() -> None:
    (mongo,) = m.base_of_kind("MongoDBCommunity")
    assert mongo["spec"]["members"] == 3
    assert mongo["spec"]["type"] == "ReplicaSet"
    assert mongo["spec"]["security"]["tls"]["enabled"] is True
    assert mongo["spec"]["security"]["authentication"]["modes"] == ["SCRAM"]
    users = {u["name"]: u for u in mongo["spec"]["users"]}
    assert set(users) == set(topics.SERVICES)
    for service, user in users.items():
        assert user["roles"] == [{"name": "readWrite", "db": f"imaging_{service}"}]
        assert user["passwordSecretRef"]["name"] == f"mongo-{service}-password"
        assert user["connectionStringSecretName"] == f"mongo-{service}-connection"


# --------------------------------------------------------------------------- services


def _deployments(built: m.Built) -> dict[str, Doc]:
    return m.deployments(built, m.SERVICE_COMPONENT)


@pytest.mark.parametrize("overlay", m.OVERLAYS)
def test_every_service_has_the_full_set_of_resources_with_standard_labels(overlay: str) -> None:
    built = m.build_overlay(overlay)
    for service in topics.SERVICES:
        for kind in (
            "Deployment",
            "Service",
            "ServiceAccount",
            "PodDisruptionBudget",
            "HorizontalPodAutoscaler",
        ):
            resource = built.one(kind, service)
            labels = resource["metadata"]["labels"]
            for label in STANDARD_LABELS:
                assert label in labels, f"{overlay} {kind} {service}: no {label}"
            assert labels["app.kubernetes.io/name"] == service
            assert labels["app.kubernetes.io/part-of"] == "imaging-pathway"


@pytest.mark.parametrize("overlay", m.OVERLAYS)
def test_deployments_are_hardened_probed_and_bounded(overlay: str) -> None:
    built = m.build_overlay(overlay)
    graceful = float(
        m.env_literals(m.BASE / "kustomization.yaml", "pathway-env")["KAFKA__GRACEFUL_TIMEOUT_S"]
    )
    for service, deployment in _deployments(built).items():
        spec = deployment["spec"]
        pod = spec["template"]["spec"]
        (container,) = pod["containers"]
        where = f"{overlay}/{service}"
        assert spec["replicas"] >= 2, where
        for label in STANDARD_LABELS:
            assert label in spec["template"]["metadata"]["labels"], f"{where}: pods lack {label}"
        # uvicorn waits graceful timeout + 5 s; the kubelet must wait longer still.
        assert pod["terminationGracePeriodSeconds"] > graceful + 5, where
        assert pod["automountServiceAccountToken"] is False, where
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False, where
        assert security["readOnlyRootFilesystem"] is True, where
        assert security["capabilities"]["drop"] == ["ALL"], where
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", where
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", where
        assert container["startupProbe"]["httpGet"]["path"] == "/healthz", where
        resources = container["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]), where
        assert "memory" in resources["limits"], where
        assert container["ports"] == [
            {"name": "http", "containerPort": m.PORTS[service], "protocol": "TCP"}
        ]
        image = container["image"]
        assert ":" in image.rsplit("/", 1)[-1], f"{where}: {image} has no tag"
        assert not image.endswith(":latest"), f"{where}: {image} is not pinned"
        assert any(v["mountPath"] == "/tmp" for v in container["volumeMounts"]), (
            f"{where}: no writable /tmp"
        )


@pytest.mark.parametrize("overlay", m.OVERLAYS)
def test_services_read_their_own_settings_and_secrets_only_by_reference(overlay: str) -> None:
    built = m.build_overlay(overlay)
    for service, deployment in _deployments(built).items():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        prefix = f"{service.upper()}_"
        assert [e["prefix"] for e in container["envFrom"]] == [prefix]
        env = {e["name"]: e for e in container["env"]}
        assert env[f"{prefix}HTTP__PORT"]["value"] == str(m.PORTS[service])
        assert env[f"{prefix}KAFKA__SASL_USERNAME"]["value"] == service
        assert env[f"{prefix}KAFKA__SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == service
        connection = env["MONGO_CONNECTION"]["valueFrom"]["secretKeyRef"]["name"]
        assert connection == f"mongo-{service}-connection"
    assert not built.of_kind("Secret"), "secrets are referenced, never written in the manifests"


# A switch such as NOTIFY_ALLOW_DEV_SECRETS=false names secrets but holds none; any other
# value under such a name is a secret, and must come from a Secret by reference.
SWITCHES = frozenset({"true", "false"})


def _inline_secrets(deployment: Doc) -> list[str]:
    return [
        item["name"]
        for container in deployment["spec"]["template"]["spec"]["containers"]
        for item in container.get("env", [])
        if any(word in item["name"] for word in ("PASSWORD", "SECRET", "TOKEN"))
        and "value" in item
        and str(item["value"]).lower() not in SWITCHES
    ]


@pytest.mark.parametrize("overlay", m.OVERLAYS)
def test_no_deployment_writes_a_secret_value_inline(overlay: str) -> None:
    for deployment in m.build_overlay(overlay).of_kind("Deployment"):
        assert not _inline_secrets(deployment), deployment["metadata"]["name"]


def test_the_inline_secret_check_refuses_a_secret_value_but_not_a_switch() -> None:
    """The check above can fail: a signing secret written inline is caught."""
    notify = m.build_overlay("prod").one("Deployment", "notify")
    (container,) = notify["spec"]["template"]["spec"]["containers"]
    assert {"name": "NOTIFY_ALLOW_DEV_SECRETS", "value": "false"} in container["env"]
    leaked = {"name": "NOTIFY_PRACTICE_SECRET", "value": "a-real-signing-secret"}
    broken_container = {**container, "env": [*container["env"], leaked]}
    broken_pod = {**notify["spec"]["template"]["spec"], "containers": [broken_container]}
    broken = {**notify, "spec": {**notify["spec"], "template": {"spec": broken_pod}}}
    assert _inline_secrets(notify) == []
    assert _inline_secrets(broken) == ["NOTIFY_PRACTICE_SECRET"]


@pytest.mark.parametrize("overlay", m.OVERLAYS)
def test_notify_runs_without_the_practice_inbox_or_development_secrets(
    overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What notify's own settings read from the built manifest, not the variable names."""
    built = m.build_overlay(overlay)
    deployment = built.one("Deployment", "notify")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    for name in [n for n in os.environ if n.startswith("NOTIFY_")]:
        monkeypatch.delenv(name)
    for name, value in m.container_env(built, container).items():
        monkeypatch.setenv(name, value)
    settings = NotifySettings()
    assert settings.inbox_enabled is False, overlay
    assert settings.allow_dev_secrets is False, overlay
    # With `dev:` secrets refused, the practices' signing secrets must be mountable.
    mounts = {v["name"]: v["mountPath"] for v in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["practice-secrets"]["secret"]["secretName"] == "notify-practice-secrets"
    assert mounts["practice-secrets"] == "/etc/pathway/practice-secrets"


@pytest.mark.parametrize("overlay", m.OVERLAYS)
def test_disruption_budgets_and_autoscalers_keep_two_replicas(overlay: str) -> None:
    built = m.build_overlay(overlay)
    deployments = _deployments(built)
    partitions = max(t["spec"]["partitions"] for t in built.of_kind("KafkaTopic"))
    for service, deployment in deployments.items():
        selector = deployment["spec"]["selector"]["matchLabels"]
        pdb = built.one("PodDisruptionBudget", service)
        assert pdb["spec"]["selector"]["matchLabels"] == selector
        assert 1 <= pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]
        hpa = built.one("HorizontalPodAutoscaler", service)
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": service,
        }
        assert hpa["spec"]["minReplicas"] >= 2
        # Consumers beyond the partition count would sit idle.
        assert hpa["spec"]["maxReplicas"] <= partitions
        svc = built.one("Service", service)
        assert svc["spec"]["selector"] == selector


def test_namespace_enforces_the_restricted_pod_security_profile() -> None:
    for overlay in m.OVERLAYS:
        (namespace,) = m.build_overlay(overlay).of_kind("Namespace")
        assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_network_policy_denies_by_default_and_lets_services_reach_only_their_dependencies() -> None:
    policies = {p["metadata"]["name"]: p for p in m.base_of_kind("NetworkPolicy")}
    deny = policies["default-deny"]["spec"]
    assert deny["podSelector"] == {}
    assert set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny
    assert "egress" not in deny
    services = policies["pathway-services"]["spec"]
    ports = {port["port"] for rule in services["egress"] for port in rule["ports"]}
    assert ports == {9093, 27017, 4318}, "Kafka (TLS), MongoDB and the OTLP collector only"
    assert [p["port"] for rule in services["ingress"] for p in rule["ports"]] == ["http"]
    # Only notify goes out of the cluster: HTTPS to the practices' endpoints.
    delivery = policies["notify-practice-delivery"]["spec"]
    assert delivery["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "notify"
    assert delivery["policyTypes"] == ["Egress"]
    assert [p["port"] for rule in delivery["egress"] for p in rule["ports"]] == [443]
    dns = policies["allow-dns"]["spec"]["egress"][0]["ports"]
    assert {(p["protocol"], p["port"]) for p in dns} == {("UDP", 53), ("TCP", 53)}


def test_prometheus_operator_scrapes_under_the_job_names_the_rules_use() -> None:
    (monitor,) = m.base_of_kind("ServiceMonitor")
    assert monitor["spec"]["jobLabel"] == "app.kubernetes.io/name"
    assert monitor["spec"]["endpoints"][0]["port"] == "http"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    (exporter,) = [
        p for p in m.base_of_kind("PodMonitor") if p["metadata"]["name"] == "pathway-kafka-exporter"
    ]
    relabel = exporter["spec"]["podMetricsEndpoints"][0]["relabelings"][0]
    assert (relabel["targetLabel"], relabel["replacement"]) == ("job", "kafka-exporter")
    built = m.build_overlay("prod")
    assert built.one("PrometheusRule", "imaging-pathway")
    dashboard = built.one("ConfigMap", "pathway-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
