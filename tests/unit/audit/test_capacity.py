"""Slot capacity is read defensively from the providers file and counted in London time."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from pathway_cli.audit.capacity import load_providers, parse_providers

REPO = Path(__file__).resolve().parents[3]


def site(**changes: Any) -> dict[str, Any]:
    return {"id": "riverside-main", "name": "Riverside", "modalities": {"XR": {}}, **changes}


def one_provider(*sites: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {
        "providers": [
            {"ods": "RXA01", "name": "Riverside Imaging", "sites": list(sites), **changes}
        ]
    }


def test_a_file_without_sites_has_no_capacity_but_keeps_provider_names() -> None:
    config = parse_providers({"providers": [{"ods": "rxa01", "name": "Riverside Imaging"}]})
    assert not config.has_capacity
    assert config.names == {"RXA01": "Riverside Imaging"}
    assert config.problems == ()


def test_the_shipped_providers_file_is_read_without_error() -> None:
    config = load_providers(REPO / "config" / "providers.json")
    assert config.problems == ()
    assert "RXA01" in config.names


def test_a_missing_or_broken_file_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    assert "does not exist" in load_providers(tmp_path / "nope.json").problems[0]
    broken = tmp_path / "providers.json"
    broken.write_text("{not json")
    assert "could not be read" in load_providers(broken).problems[0]
    assert parse_providers([1, 2]).problems == ("the file has no 'providers' list",)


def test_default_hours_give_the_brief_s_opening_times() -> None:
    config = parse_providers(one_provider(site()))
    # A Monday (08:00-20:00: 72 ten-minute X-ray slots) and a Saturday (09:00-17:00: 48).
    monday = config.capacity(
        datetime(2026, 3, 8, 23, tzinfo=UTC), datetime(2026, 3, 9, 23, tzinfo=UTC)
    )
    saturday = config.capacity(
        datetime(2026, 3, 13, 23, tzinfo=UTC), datetime(2026, 3, 14, 23, tzinfo=UTC)
    )
    assert monday == {("RXA01", "riverside-main", "XR"): 72}
    assert saturday == {("RXA01", "riverside-main", "XR"): 48}


def test_rooms_slot_length_and_london_hours_across_the_clock_change() -> None:
    hours = {"sun": [{"open": "09:00", "close": "10:00"}]}
    config = parse_providers(
        one_provider(site(opening_hours=hours, modalities={"MR": {"rooms": 2, "slot_minutes": 20}}))
    )
    # Sunday 29 March 2026, the day the clocks go forward: 09:00-10:00 BST is 08:00-09:00 UTC.
    sunday = config.capacity(
        datetime(2026, 3, 29, 7, 59, tzinfo=UTC), datetime(2026, 3, 29, 8, 59, tzinfo=UTC)
    )
    assert sunday == {("RXA01", "riverside-main", "MR"): 6}  # 3 slots x 2 rooms
    per_day = config.capacity_per_day(
        datetime(2026, 3, 28, tzinfo=UTC), datetime(2026, 3, 30, tzinfo=UTC)
    )
    # Days not named keep the default hours: Saturday 09:00-17:00 is 24 slots x 2 rooms.
    assert per_day == {
        ("RXA01", "riverside-main", date(2026, 3, 28)): 48,
        ("RXA01", "riverside-main", date(2026, 3, 29)): 6,
    }


def test_closures_bank_holidays_and_suspended_providers_offer_no_slots() -> None:
    closed = site(
        closures=[
            {"from": "2026-03-10", "to": "2026-03-11"},
            {"from": "2026-03-12", "modalities": ["US"]},
        ],
        closed_on_bank_holidays=True,
        modalities=["XR", "US"],
    )
    config = parse_providers(one_provider(closed))
    week = config.capacity(
        datetime(2026, 3, 9, 1, tzinfo=UTC), datetime(2026, 3, 12, 23, tzinfo=UTC)
    )
    # Monday and Thursday open for X-ray (72 each), Thursday closed for ultrasound.
    assert week[("RXA01", "riverside-main", "XR")] == 144
    assert week[("RXA01", "riverside-main", "US")] == 36
    good_friday = config.capacity(
        datetime(2026, 4, 2, 23, tzinfo=UTC), datetime(2026, 4, 3, 22, tzinfo=UTC)
    )
    assert set(good_friday.values()) == {0}
    suspended = parse_providers(one_provider(site(), active=False))
    assert not suspended.has_capacity


def test_unusable_entries_are_skipped_with_a_reason(tmp_path: Path) -> None:
    raw = one_provider(
        site(),
        site(id="bad-hours", opening_hours={"mon": [{"open": "18:00", "close": "08:00"}]}),
        site(id="bad-modality", modalities={"PET": {}}),
        {"name": "no id"},
    )
    raw["providers"].append({"name": "no ods"})
    path = tmp_path / "providers.json"
    path.write_text(json.dumps(raw))
    config = load_providers(path)
    assert [t.site for t in config.templates] == ["riverside-main"]
    assert len(config.problems) == 4
    assert any("closes before it opens" in p for p in config.problems)
    assert any("unknown modality" in p for p in config.problems)
