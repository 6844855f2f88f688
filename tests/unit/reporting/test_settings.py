"""The reporting service reads its local policy from REPORTING_* settings and its providers from config."""

from __future__ import annotations

import json
from datetime import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from services.reporting.main import load_providers
from services.reporting.settings import Settings
from tests.fixtures import REPO


def test_turnaround_policy_comes_from_reporting_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPORTING_TURNAROUND__NATION", "WLS")
    monkeypatch.setenv("REPORTING_TURNAROUND__URGENT_MINUTES", "45")
    monkeypatch.setenv("REPORTING_TURNAROUND__WORKING_DAY_ENDS_AT", "17:00")
    monkeypatch.setenv("REPORTING_PARK_TIMEOUT_S", "120")
    settings = Settings()
    assert settings.turnaround.nation == "WLS"
    assert settings.turnaround.urgent_minutes == 45
    assert settings.turnaround.working_day_ends_at == time(17, 0)
    assert settings.park_timeout_s == 120
    assert settings.http.port == 8004


def test_an_unknown_nation_fails_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPORTING_TURNAROUND__NATION", "FRA")
    with pytest.raises(ValidationError):
        Settings()


def test_each_configured_provider_is_read_once(tmp_path: Path) -> None:
    assert load_providers(REPO / "config" / "providers.json") == ("RXA01", "NWX02")
    path = tmp_path / "providers.json"
    path.write_text(
        json.dumps({"providers": [{"ods": "rxa01"}, {"ods": "RXA01"}, {"ods": "ZZZ9"}]})
    )
    assert load_providers(path) == ("RXA01", "ZZZ9")
    path.write_text(json.dumps({"providers": [{"ods": "not an ods code"}]}))
    with pytest.raises(ValidationError):
        load_providers(path)
    with pytest.raises(FileNotFoundError, match="REPORTING_CONFIG_DIR"):
        load_providers(tmp_path / "missing.json")
