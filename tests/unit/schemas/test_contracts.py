"""Generated artefacts stay in sync with the models; a breaking change is caught."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pathway_cli import contracts
from pathway_schemas.events import ReportIssued
from pathway_schemas.jsonschema import breaking_changes, event_schema

REPO = Path(__file__).resolve().parents[3]


def test_committed_json_schemas_and_asyncapi_documents_match_the_code() -> None:
    problems = contracts.check()
    assert problems == [], "\n".join(problems) + "\nrun `make contracts` and commit the result"


def committed(event_type: str) -> dict[str, object]:
    loaded: dict[str, object] = json.loads(
        (contracts.SCHEMA_DIR / f"{event_type}.json").read_text()
    )
    return loaded


def test_an_additive_optional_field_is_compatible() -> None:
    old = committed(ReportIssued.event_type)
    new = copy.deepcopy(event_schema(ReportIssued))
    new["properties"]["second_opinion_by"] = {"type": "string", "default": ""}
    assert breaking_changes(old, new) == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda s: s["properties"].pop("conclusion"), "field 'conclusion' was removed"),
        (lambda s: s["required"].append("key_images"), "field 'key_images' became required"),
        (
            lambda s: s["properties"].__setitem__("within_target", {"type": "string"}),
            "field 'within_target' changed type",
        ),
        (
            lambda s: (
                s["properties"].__setitem__("reviewer", {"type": "string"}),
                s["required"].append("reviewer"),
            ),
            "required field 'reviewer' was added",
        ),
    ],
)
def test_a_breaking_change_within_a_version_is_caught(change: object, expected: str) -> None:
    old = committed(ReportIssued.event_type)
    new = copy.deepcopy(event_schema(ReportIssued))
    change(new)  # type: ignore[operator]
    assert expected in breaking_changes(old, new)


def test_the_schemas_package_installs_alone_with_only_pydantic_and_nhs_number(
    tmp_path: Path,
) -> None:
    """`pip install ./schemas` in an empty virtual environment pulls in nothing else."""
    source = tmp_path / "schemas"
    # Build from a copy, so the build leaves nothing in the working tree.
    shutil.copytree(
        REPO / "schemas",
        source,
        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"),
    )
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = venv / "bin" / "pip"
    subprocess.run(
        [str(pip), "install", "-q", "--disable-pip-version-check", str(source)],
        check=True,
        timeout=600,
    )
    frozen = subprocess.run([str(pip), "freeze"], check=True, capture_output=True, text=True).stdout
    names = {
        line.split("==")[0].lower().replace("_", "-")
        for line in frozen.splitlines()
        if "==" in line
    }
    allowed = {
        "pathway-schemas",
        "pydantic",
        "pydantic-core",
        "nhs-number",
        "annotated-types",
        "typing-extensions",
        "typing-inspection",
    }
    assert names - allowed == set(), f"unexpected dependencies: {names - allowed}"
    python = venv / "bin" / "python"
    check = "from pathway_schemas.examples import all_examples; print(len(all_examples()))"
    assert (
        int(
            subprocess.run(
                [str(python), "-c", check], check=True, capture_output=True, text=True
            ).stdout
        )
        > 40
    )
