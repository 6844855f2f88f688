"""Slot capacity is the scheduling service's: its providers file, its policy, its slot engine."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from pathway_cli.audit.capacity import load_providers, parse_providers
from pathway_schemas.values import Modality
from services.scheduling.settings import SchedulingPolicy

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
    refused = parse_providers([1, 2])
    assert not refused.has_capacity
    assert "would refuse" in refused.problems[0]


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
        modalities={"XR": {}, "US": {}},
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


def test_a_file_the_scheduling_service_would_refuse_offers_no_slots_and_says_why(
    tmp_path: Path,
) -> None:
    raw = one_provider(
        site(),
        site(id="bad-hours", opening_hours={"mon": [{"open": "18:00", "close": "08:00"}]}),
        site(id="bad-modality", modalities={"PET": {}}),
    )
    raw["providers"].append({"ods": "NWX02", "name": "Northway", "sites": [{"name": "no id"}]})
    path = tmp_path / "providers.json"
    path.write_text(json.dumps(raw))
    config = load_providers(path)
    assert not config.has_capacity
    assert (
        config.capacity(datetime(2026, 3, 9, tzinfo=UTC), datetime(2026, 3, 10, tzinfo=UTC)) == {}
    )
    assert config.names == {"RXA01": "Riverside Imaging", "NWX02": "Northway"}
    problems = " | ".join(config.problems)
    assert "close must be later" in problems
    assert "providers.0.sites.2.modalities.PET" in problems
    assert "providers.1.sites.0.id" in problems


ALL_TEN_MINUTES = {m.value: 10 for m in Modality}


def test_slot_lengths_come_from_the_scheduling_policy_unless_the_site_sets_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "providers.json"
    path.write_text(
        json.dumps(one_provider(site(modalities={"XR": {}, "CT": {"slot_minutes": 60}})))
    )
    monday = (datetime(2026, 3, 8, 23, tzinfo=UTC), datetime(2026, 3, 9, 23, tzinfo=UTC))
    # As the service reads it: SCHEDULING_POLICY__SLOT_MINUTES, every modality's length.
    monkeypatch.setenv(
        "SCHEDULING_POLICY__SLOT_MINUTES", json.dumps({**ALL_TEN_MINUTES, "XR": 15, "CT": 5})
    )
    assert load_providers(path).capacity(*monday) == {
        ("RXA01", "riverside-main", "XR"): 48,  # 12 hours of 15 minutes
        ("RXA01", "riverside-main", "CT"): 12,  # the site's own 60 minutes win
    }
    monkeypatch.delenv("SCHEDULING_POLICY__SLOT_MINUTES")
    assert load_providers(path).capacity(*monday)[("RXA01", "riverside-main", "XR")] == 72


def test_policy_keys_in_the_providers_file_are_ignored_as_the_service_ignores_them() -> None:
    raw = {**one_provider(site()), "slot_minutes": {"XR": 30}, "bank_holiday_nation": "SCT"}
    # 2 January 2026 is a bank holiday in Scotland only; the service's nation is England's.
    day = (datetime(2026, 1, 2, tzinfo=UTC), datetime(2026, 1, 2, 23, tzinfo=UTC))
    closed = site(closed_on_bank_holidays=True)
    assert parse_providers(raw).capacity(*day) == {("RXA01", "riverside-main", "XR"): 72}
    scottish = SchedulingPolicy(bank_holiday_nation="SCT")
    assert parse_providers(one_provider(closed), scottish).capacity(*day) == {
        ("RXA01", "riverside-main", "XR"): 0
    }
    assert (
        "scheduling policy"
        in parse_providers(raw, SchedulingPolicy(bank_holiday_nation="XX")).problems[0]
    )


def test_slots_on_the_nights_the_clocks_change_are_counted_in_elapsed_time() -> None:
    night = {"sun": [{"open": "00:00", "close": "04:00"}]}
    config = parse_providers(one_provider(site(opening_hours=night)))
    spring = config.capacity(
        datetime(2026, 3, 28, 23, tzinfo=UTC), datetime(2026, 3, 29, 4, tzinfo=UTC)
    )
    autumn = config.capacity(
        datetime(2026, 10, 24, 22, tzinfo=UTC), datetime(2026, 10, 25, 5, tzinfo=UTC)
    )
    # Four hours on the clock: three hours elapsed in spring, five in autumn.
    assert spring == {("RXA01", "riverside-main", "XR"): 18}
    assert autumn == {("RXA01", "riverside-main", "XR"): 30}


def test_with_no_file_named_the_audit_reads_the_scheduling_service_s_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SCHEDULING_CONFIG_DIR", str(tmp_path))
    monkeypatch.setenv("SCHEDULING_PROVIDERS_FILE", "registry.json")
    (tmp_path / "registry.json").write_text(json.dumps(one_provider(site())))
    assert load_providers().names == {"RXA01": "Riverside Imaging"}
    monkeypatch.setenv("SCHEDULING_POLICY__SLOT_MINUTES", '{"XR": 1}')
    refused = load_providers()
    assert not refused.has_capacity
    assert "slot_minutes has no length for US" in refused.problems[0]
