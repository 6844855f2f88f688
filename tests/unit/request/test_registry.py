"""The practice and referrer registry the operator edits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.common.auth import Principals, Role
from services.request.registry import PracticeRegistry, RegistryError

CONFIG = Path(__file__).resolve().parents[3] / "config"


def test_every_development_practice_principal_has_a_registered_practice() -> None:
    registry = PracticeRegistry.load(CONFIG / "practices.json")
    raw = json.loads((CONFIG / "principals.json").read_text("utf-8"))
    practices = [p["organisation"] for p in raw["principals"] if p["role"] == Role.PRACTICE]
    assert practices
    assert all(registry.practice(ods) is not None for ods in practices)
    assert Principals.load(CONFIG / "principals.json").resolve("dev-practice-a81001") is not None


def test_check_names_the_field_that_is_wrong() -> None:
    registry = PracticeRegistry.load(CONFIG / "practices.json")
    assert registry.check("A81001", "G1234567") == []
    assert [e.field for e in registry.check("Z99999", "G1234567")] == ["practice_ods"]
    assert [e.field for e in registry.check("A81001", "G2345678")] == ["referrer_id"]
    assert [e.field for e in registry.check("A81001", "nobody", referrer_field="amended_by")] == [
        "amended_by"
    ]
    inactive = registry.check("C83003", "G3456789")
    assert [(e.field, e.message) for e in inactive] == [
        ("practice_ods", "this practice is no longer active")
    ]


def test_an_inactive_referrer_may_no_longer_refer(tmp_path: Path) -> None:
    path = tmp_path / "practices.json"
    path.write_text(
        json.dumps(
            {
                "practices": [
                    {
                        "ods": "A81001",
                        "name": "P",
                        "referrers": [{"id": "G1", "name": "D", "active": False}],
                    }
                ]
            }
        )
    )
    assert "no longer active" in PracticeRegistry.load(path).check("A81001", "G1")[0].message


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ({"practices": [{"ods": "A1", "name": "P"}]}, "practices.0.ods"),
        (
            {"practices": [{"ods": "A81001", "name": "P"}, {"ods": "A81001", "name": "Q"}]},
            "listed twice",
        ),
        (
            {
                "practices": [
                    {
                        "ods": "A81001",
                        "name": "P",
                        "referrers": [{"id": "G1", "name": "a"}, {"id": "G1", "name": "b"}],
                    }
                ]
            },
            "referrer twice",
        ),
        ({"practice": []}, "practices"),
    ],
)
def test_a_bad_registry_fails_the_start_naming_the_entry(
    tmp_path: Path, content: object, says: str
) -> None:
    path = tmp_path / "practices.json"
    path.write_text(json.dumps(content))
    with pytest.raises(RegistryError, match=says):
        PracticeRegistry.load(path)


def test_a_missing_registry_says_where_to_put_it(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match=r"copy config/practices\.json"):
        PracticeRegistry.load(tmp_path / "practices.json")
