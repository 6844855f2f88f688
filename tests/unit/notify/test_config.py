"""The operator's notify policy: the shipped file loads, secrets resolve by reference."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pathway_schemas.values import FindingFlag
from services.notify.config import (
    NotifyConfig,
    Window,
    load_config,
    practice_directory,
    resolve_secret,
)

REPO = Path(__file__).resolve().parents[3]


def test_the_shipped_policy_has_the_briefs_defaults_and_the_local_inbox() -> None:
    config = load_config(REPO / "config" / "notify.json")
    assert config.alerts.windows[FindingFlag.CRITICAL] == Window(hours=1)
    assert config.alerts.windows[FindingFlag.URGENT] == Window(hours=24)
    assert config.alerts.windows[FindingFlag.UNEXPECTED_SIGNIFICANT] == Window(working_days=5)
    assert [r.role for r in config.alerts.ladder] == [
        "requesting_gp",
        "practice_duty_clinician",
        "radiology_lead",
    ]
    endpoints = {p.ods: p.endpoint for p in config.practices}
    assert endpoints["A81001"] == "http://127.0.0.1:8005/inbox/A81001/reports"
    assert config == NotifyConfig.model_validate(
        json.loads((REPO / "config/notify.json").read_text())
    )


def test_secrets_resolve_from_the_environment_a_file_or_a_development_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_TEST_SECRET", "from-env")
    (tmp_path / "secret").write_text("from-file\n")
    assert (
        resolve_secret("env:NOTIFY_TEST_SECRET", base_dir=tmp_path, allow_dev=False) == b"from-env"
    )
    assert resolve_secret("file:secret", base_dir=tmp_path, allow_dev=False) == b"from-file"
    assert resolve_secret("dev:plain", base_dir=tmp_path, allow_dev=True) == b"plain"


def test_a_secret_that_cannot_be_resolved_stops_the_service_with_a_reason(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="NOTIFY_NO_SUCH_SECRET is not set"):
        resolve_secret("env:NOTIFY_NO_SUCH_SECRET", base_dir=tmp_path, allow_dev=True)
    with pytest.raises(ValueError, match="does not exist"):
        resolve_secret("file:missing", base_dir=tmp_path, allow_dev=True)
    with pytest.raises(ValueError, match="development secret"):
        resolve_secret("dev:plain", base_dir=tmp_path, allow_dev=False)


def test_production_refuses_the_shipped_development_secrets() -> None:
    config = load_config(REPO / "config" / "notify.json")
    with pytest.raises(ValueError, match=r"practice A81001: .*development secret"):
        practice_directory(config, base_dir=REPO / "config", allow_dev=False)
    directory = practice_directory(config, base_dir=REPO / "config", allow_dev=True)
    assert directory.secret("A81001")
    assert directory.secret("A81001") != directory.secret("B82002")
    assert directory.get("ZZZ999") is None


def test_a_practice_listed_twice_or_an_unknown_field_is_refused(tmp_path: Path) -> None:
    practice = {"ods": "A81001", "endpoint": "https://gp.example/r", "secret_ref": "dev:x"}
    path = tmp_path / "notify.json"
    path.write_text(json.dumps({"practices": [practice, practice]}))
    with pytest.raises(ValueError, match="listed twice"):
        load_config(path)
    path.write_text(json.dumps({"practises": []}))
    with pytest.raises(ValueError, match="not valid"):
        load_config(path)
    with pytest.raises(FileNotFoundError, match="NOTIFY_CONFIG_FILE"):
        load_config(tmp_path / "absent.json")
