"""Slot capacity as the scheduling service sees it: its providers file, policy and slot engine.

Utilisation compares the appointments held with the slots the scheduling service could have
offered, so the audit reads the service's configuration through the service's own code: the
registry model (`services.scheduling.registry`, the one definition of the providers file),
the policy (`SchedulingPolicy`: slot lengths and bank-holiday nation, from the same
`SCHEDULING_POLICY__*` environment the service reads) and the slot engine
(`services.scheduling.slots`: opening hours, closures, bank holidays, rooms, and slots cut
in elapsed time across the clock changes). A copy of any of them drifts from the service:
the audit's own did (it read slot lengths from the brief and from file keys the service
ignores). The audit is a tool that sits beside the services, as `pathway up` does; services
still never import each other.

A file the service would refuse offers no slots: the audit then reports no capacity, says
why, and keeps whatever provider names it can read.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from pathway_schemas.values import Modality
from services.common.clock import WorkingCalendar, london_date
from services.scheduling.registry import Provider, RegistryFile
from services.scheduling.settings import SchedulingPolicy, Settings
from services.scheduling.slots import Template, templates

#: (provider ODS, site id, modality)
SlotKey = tuple[str, str, str]

# The scheduling engine cuts slots starting in [from, to); the audit's windows are (start, end].
_INSTANT = timedelta(microseconds=1)


@dataclass(frozen=True)
class ProviderConfig:
    """The providers the scheduling service would load, and the policy it would apply."""

    names: Mapping[str, str] = field(default_factory=dict)
    providers: tuple[Provider, ...] = ()
    policy: SchedulingPolicy = field(default_factory=SchedulingPolicy)
    problems: tuple[str, ...] = ()

    @property
    def has_capacity(self) -> bool:
        return bool(self.templates())

    def templates(self) -> list[Template]:
        """Every active provider's site and modality, as the service cuts their slots."""
        calendar = WorkingCalendar(self.policy.bank_holiday_nation)
        return [
            template
            for modality in Modality
            for template in templates(self.providers, modality, self.policy.slot_minutes, calendar)
        ]

    def _slots(self, start: datetime, end: datetime) -> Iterator[tuple[Template, datetime]]:
        for template in self.templates():
            for slot in template.slots(start + _INSTANT, end + _INSTANT):
                yield template, slot.start

    def capacity(self, start: datetime, end: datetime) -> dict[SlotKey, int]:
        """Slots whose start falls in (start, end], per provider, site and modality."""
        counts = {_key(t): 0 for t in self.templates()}
        for template, _ in self._slots(start, end):
            counts[_key(template)] += 1
        return counts

    def capacity_per_day(self, start: datetime, end: datetime) -> dict[tuple[str, str, date], int]:
        """Slots in (start, end] per provider, site and London day (all modalities)."""
        counts: dict[tuple[str, str, date], int] = {}
        for template, moment in self._slots(start, end):
            day = (template.provider.ods, template.site.id, london_date(moment))
            counts[day] = counts.get(day, 0) + 1
        return counts


def _key(template: Template) -> SlotKey:
    return (template.provider.ods, template.site.id, template.modality.value)


def _names(raw: Any) -> dict[str, str]:
    """Provider names for the report, read leniently: also from a file the service refuses."""
    entries = raw.get("providers") if isinstance(raw, Mapping) else None
    return {
        entry["ods"].strip().upper(): str(entry.get("name") or entry["ods"]).strip()
        for entry in (entries if isinstance(entries, list) else [])
        if isinstance(entry, Mapping) and isinstance(entry.get("ods"), str)
    }


def parse_providers(raw: Any, policy: SchedulingPolicy | None = None) -> ProviderConfig:
    """A decoded providers file, validated as the scheduling service validates it at start."""
    policy = policy or SchedulingPolicy()
    try:
        WorkingCalendar(policy.bank_holiday_nation)
    except ValueError as error:
        return ProviderConfig(names=_names(raw), problems=(f"scheduling policy: {error}",))
    try:
        providers = RegistryFile.model_validate(raw).providers
    except ValidationError as error:
        problems = tuple(
            f"{'.'.join(str(p) for p in e['loc']) or 'the file'}: {e['msg']}"
            for e in error.errors(include_input=False)
        )
        return ProviderConfig(
            names=_names(raw),
            policy=policy,
            problems=("the scheduling service would refuse it, so it offers no slots", *problems),
        )
    return ProviderConfig(
        names={p.ods: p.name for p in providers}, providers=providers, policy=policy
    )


def scheduling_settings() -> Settings:
    """The scheduling service's settings, from the environment exactly as the service reads it."""
    return Settings()


def load_providers(path: Path | None = None, *, settings: Settings | None = None) -> ProviderConfig:
    """The scheduling service's providers file and policy (`path` instead of its file).

    A missing or broken file, or settings the service would refuse, are problems reported,
    not a crash.
    """
    try:
        settings = settings or scheduling_settings()
    except ValidationError as error:
        problems = tuple(
            f"scheduling settings (SCHEDULING_*): {'__'.join(str(p) for p in e['loc'])}: {e['msg']}"
            for e in error.errors(include_input=False)
        )
        return ProviderConfig(problems=problems)
    path = path or settings.config_dir / settings.providers_file
    try:
        raw = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return ProviderConfig(problems=(f"{path} does not exist",))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return ProviderConfig(problems=(f"{path} could not be read: {error}",))
    return parse_providers(raw, settings.policy)
