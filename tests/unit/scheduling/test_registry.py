"""The provider registry file: defaults, validation that names the problem, and the shipped file."""

from __future__ import annotations

import json
from datetime import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from pathway_schemas.values import Modality
from services.scheduling.registry import (
    OpeningHours,
    Provider,
    RegistryFileError,
    load_registry_file,
)
from services.scheduling.settings import SchedulingPolicy, Settings
from tests.unit.scheduling.builders import provider, site

REPO = Path(__file__).resolve().parents[3]


def test_the_shipped_file_keeps_its_top_level_shape_and_describes_both_providers() -> None:
    raw = json.loads((REPO / "config" / "providers.json").read_text())
    assert [p["ods"] for p in raw["providers"]] == ["RXA01", "NWX02"]
    providers = load_registry_file(REPO / "config" / "providers.json")
    assert all(p.sites for p in providers)
    assert any(s.walk_in for p in providers for s in p.sites)
    offered = {m for p in providers for s in p.sites for m in s.modalities}
    assert offered == set(Modality)


def test_a_site_without_hours_gets_the_pathway_defaults() -> None:
    hours = provider("RXA01", site("S1")).sites[0].opening_hours
    assert hours == OpeningHours()
    assert [(s.open, s.close) for s in hours.mon] == [(time(8), time(20))]
    assert [(s.open, s.close) for s in hours.sun] == [(time(9), time(17))]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"opening_hours": {"mon": [{"open": "10:00", "close": "09:00"}]}}, "close must be later"),
        (
            {
                "opening_hours": {
                    "tue": [
                        {"open": "08:00", "close": "12:00"},
                        {"open": "11:00", "close": "13:00"},
                    ]
                }
            },
            "overlap",
        ),
        ({"walk_in": True, "modalities": {"US": {"rooms": 1}}}, "walk-ins but has no XR"),
        ({"modalities": {}}, "offers no modality"),
        ({"modalities": {"XR": {"rooms": 0}}}, "greater than or equal to 1"),
        ({"closures": [{"from": "2026-05-02", "to": "2026-05-01"}]}, "before 'from'"),
        ({"modalities": {"PET": {"rooms": 1}}}, "Input should be"),
        # With an offset it is a moment, not a wall time (and it was once a 500 to compare).
        (
            {"opening_hours": {"wed": [{"open": "08:00+01:00", "close": "12:00"}]}},
            "no UTC offset",
        ),
        ({"opening_hours": {"thu": [{"open": "08:00Z", "close": "12:00Z"}]}}, "no UTC offset"),
    ],
)
def test_a_wrong_site_is_refused_with_a_message_naming_the_problem(
    change: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        provider("RXA01", {**site("S1"), **change})


def test_site_ids_and_provider_codes_must_be_unique(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="site ids must be unique"):
        provider("RXA01", site("S1"), site("S1"))
    path = tmp_path / "providers.json"
    entry = {"ods": "RXA01", "name": "A", "sites": []}
    path.write_text(json.dumps({"providers": [entry, entry]}))
    with pytest.raises(RegistryFileError, match="ODS codes must be unique"):
        load_registry_file(path)


def test_a_missing_or_broken_file_says_which_file_and_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(RegistryFileError, match=r"missing: copy config/providers\.json"):
        load_registry_file(tmp_path / "nope.json")
    broken = tmp_path / "providers.json"
    broken.write_text(json.dumps({"providers": [{"ods": "rx", "name": "A"}]}))
    with pytest.raises(RegistryFileError, match=r"providers\.0\.ods"):
        load_registry_file(broken)


def test_an_edit_changes_the_fingerprint_and_a_round_trip_through_storage_does_not() -> None:
    original = provider("RXA01", site("S1", closures=[{"from": "2026-12-25"}]))
    stored = Provider.model_validate(original.model_dump(mode="json", by_alias=True))
    assert stored == original
    assert stored.fingerprint() == original.fingerprint()
    edited = provider("RXA01", site("S1", {"XR": {"rooms": 2}}, closures=[{"from": "2026-12-25"}]))
    assert edited.fingerprint() != original.fingerprint()


def test_local_policy_is_configurable_and_checked_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCHEDULING_POLICY__DNA_LIMIT", "3")
    monkeypatch.setenv(
        "SCHEDULING_POLICY__SLOT_MINUTES",
        '{"XR": 15, "US": 20, "CT": 15, "MR": 30, "DEXA": 20, "RF": 30, "NM": 45}',
    )
    settings = Settings()
    assert settings.policy.dna_limit == 3
    assert settings.policy.slot_minutes[Modality.NUCLEAR_MEDICINE] == 45
    with pytest.raises(ValidationError, match="no length for"):
        SchedulingPolicy(slot_minutes={Modality.XR: 10})
    with pytest.raises(ValidationError, match="must not exceed"):
        SchedulingPolicy(target_days_routine_desirable=20)
