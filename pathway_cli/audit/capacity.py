"""Slot capacity from `config/providers.json`, read defensively.

The scheduling service owns the file's format (providers, sites, slot templates, opening
hours, closures). The audit only needs to count how many slots each site could have offered,
so it reads what it understands and says what it skipped, instead of failing on a field it
does not know. A file without sites yields no capacity at all, and the audit says so.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from pathway_schemas.values import Modality
from services.common.clock import LONDON, WorkingCalendar

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

# The brief's defaults (pathway.md "Local policy defaults"); a site may override them. The
# scheduling service keeps its own copy in its settings: services never share code.
DEFAULT_SLOT_MINUTES: dict[str, int] = {
    Modality.XR.value: 10,
    Modality.US.value: 20,
    Modality.CT.value: 15,
    Modality.MR.value: 30,
    Modality.DEXA.value: 20,
    Modality.FLUOROSCOPY.value: 30,
    Modality.NUCLEAR_MEDICINE.value: 30,
}

Session = tuple[time, time]
Week = dict[str, tuple[Session, ...]]

DEFAULT_HOURS: Week = {
    **{d: ((time(8), time(20)),) for d in WEEKDAYS[:5]},
    **{d: ((time(9), time(17)),) for d in WEEKDAYS[5:]},
}

#: (provider ODS, site id, modality)
SlotKey = tuple[str, str, str]


@dataclass(frozen=True)
class Closure:
    first: date
    last: date
    modalities: frozenset[str]

    def covers(self, day: date, modality: str) -> bool:
        return self.first <= day <= self.last and (
            not self.modalities or modality in self.modalities
        )


@dataclass(frozen=True)
class SlotTemplate:
    """One modality at one site: rooms in parallel, slot length, opening hours, closures."""

    provider: str
    site: str
    modality: str
    rooms: int
    slot_minutes: int
    hours: Week
    closures: tuple[Closure, ...] = ()
    closed_on_bank_holidays: bool = False

    @property
    def key(self) -> SlotKey:
        return (self.provider, self.site, self.modality)

    def slot_starts(self, day: date, calendar: WorkingCalendar) -> Iterator[datetime]:
        """Every slot start of one London day, one per room, as UTC instants."""
        if any(c.covers(day, self.modality) for c in self.closures):
            return
        if self.closed_on_bank_holidays and calendar.is_bank_holiday(day):
            return
        length = timedelta(minutes=self.slot_minutes)
        for opens, closes in self.hours.get(WEEKDAYS[day.weekday()], ()):
            start = datetime.combine(day, opens, tzinfo=LONDON)
            end = datetime.combine(day, closes, tzinfo=LONDON)
            while start + length <= end:
                instant = start.astimezone(UTC)
                for _ in range(self.rooms):
                    yield instant
                start += length


@dataclass(frozen=True)
class ProviderConfig:
    """What the audit could read from the providers file."""

    names: Mapping[str, str] = field(default_factory=dict)
    templates: tuple[SlotTemplate, ...] = ()
    problems: tuple[str, ...] = ()
    bank_holiday_nation: str = "ENG"

    @property
    def has_capacity(self) -> bool:
        return bool(self.templates)

    def capacity(self, start: datetime, end: datetime) -> dict[SlotKey, int]:
        """Slots whose start falls in (start, end], per provider, site and modality."""
        calendar = WorkingCalendar(self.bank_holiday_nation)
        counts: dict[SlotKey, int] = {}
        first = start.astimezone(LONDON).date()
        last = end.astimezone(LONDON).date()
        for template in self.templates:
            total = 0
            day = first
            while day <= last:
                total += sum(1 for s in template.slot_starts(day, calendar) if start < s <= end)
                day += timedelta(days=1)
            counts[template.key] = counts.get(template.key, 0) + total
        return counts

    def capacity_per_day(self, start: datetime, end: datetime) -> dict[tuple[str, str, date], int]:
        """Slots in (start, end] per provider, site and London day (all modalities)."""
        calendar = WorkingCalendar(self.bank_holiday_nation)
        counts: dict[tuple[str, str, date], int] = {}
        first = start.astimezone(LONDON).date()
        last = end.astimezone(LONDON).date()
        for template in self.templates:
            day = first
            while day <= last:
                n = sum(1 for s in template.slot_starts(day, calendar) if start < s <= end)
                if n:
                    key = (template.provider, template.site, day)
                    counts[key] = counts.get(key, 0) + n
                day += timedelta(days=1)
        return counts


class _Skip(ValueError):
    """One entry of the file the audit cannot use; the message says where and why."""


def _time(value: Any, where: str) -> time:
    if not isinstance(value, str):
        raise _Skip(f"{where}: expected a time like '08:00'")
    try:
        return time.fromisoformat(value)
    except ValueError:
        raise _Skip(f"{where}: {value!r} is not a time like '08:00'") from None


def _week(raw: Any, where: str) -> Week | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise _Skip(f"{where}: opening hours must be an object of weekdays")
    week: Week = {}
    for day in WEEKDAYS:
        if day not in raw:  # as in the scheduling registry: a day left out keeps the default
            week[day] = DEFAULT_HOURS[day]
            continue
        sessions = raw[day]
        if not isinstance(sessions, list):
            raise _Skip(f"{where}.{day}: expected a list of {{open, close}} sessions")
        parsed: list[Session] = []
        for i, session in enumerate(sessions):
            if not isinstance(session, Mapping):
                raise _Skip(f"{where}.{day}[{i}]: expected {{open, close}}")
            opens = _time(session.get("open"), f"{where}.{day}[{i}].open")
            closes = _time(session.get("close"), f"{where}.{day}[{i}].close")
            if closes <= opens:
                raise _Skip(f"{where}.{day}[{i}]: closes before it opens")
            parsed.append((opens, closes))
        week[day] = tuple(sorted(parsed))
    return week


def _closures(raw: Any, where: str) -> tuple[Closure, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise _Skip(f"{where}: closures must be a list")
    result = []
    for i, item in enumerate(raw):
        if not isinstance(item, Mapping) or not isinstance(item.get("from"), str):
            raise _Skip(f"{where}[{i}]: a closure needs 'from' (a date)")
        try:
            first = date.fromisoformat(item["from"])
            last = date.fromisoformat(item["to"]) if isinstance(item.get("to"), str) else first
        except ValueError:
            raise _Skip(f"{where}[{i}]: dates must look like 2026-03-02") from None
        modalities = item.get("modalities") or []
        result.append(Closure(first, last, frozenset(str(m) for m in modalities)))
    return tuple(result)


def _positive_int(value: Any, default: int, where: str) -> int:
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise _Skip(f"{where}: expected a whole number of at least 1")
    return value


def _site_templates(
    provider: str, site: Mapping[str, Any], slot_minutes: Mapping[str, int], where: str
) -> list[SlotTemplate]:
    site_id = site.get("id")
    if not isinstance(site_id, str) or not site_id:
        raise _Skip(f"{where}: a site needs an 'id'")
    hours = _week(site.get("opening_hours"), f"{where}.opening_hours") or DEFAULT_HOURS
    closures = _closures(site.get("closures"), f"{where}.closures")
    on_holidays = bool(site.get("closed_on_bank_holidays", False))
    modalities = site.get("modalities")
    if isinstance(modalities, list):  # a plain list of modality codes: one room each
        modalities = {str(m): {} for m in modalities}
    if not isinstance(modalities, Mapping) or not modalities:
        raise _Skip(f"{where}: a site needs 'modalities'")
    templates = []
    for code, spec in modalities.items():
        at = f"{where}.modalities.{code}"
        if code not in slot_minutes:
            raise _Skip(f"{at}: unknown modality (expected one of {', '.join(slot_minutes)})")
        spec = spec if isinstance(spec, Mapping) else {}
        templates.append(
            SlotTemplate(
                provider=provider,
                site=site_id,
                modality=code,
                rooms=_positive_int(spec.get("rooms"), 1, f"{at}.rooms"),
                slot_minutes=_positive_int(
                    spec.get("slot_minutes"), slot_minutes[code], f"{at}.slot_minutes"
                ),
                hours=_week(spec.get("opening_hours"), f"{at}.opening_hours") or hours,
                closures=closures,
                closed_on_bank_holidays=on_holidays,
            )
        )
    return templates


def parse_providers(raw: Any) -> ProviderConfig:
    """Everything usable in a decoded providers file; what is not usable goes to `problems`."""
    if not isinstance(raw, Mapping) or not isinstance(raw.get("providers"), list):
        return ProviderConfig(problems=("the file has no 'providers' list",))
    slot_minutes = dict(DEFAULT_SLOT_MINUTES)
    overrides = raw.get("slot_minutes")
    if isinstance(overrides, Mapping):
        slot_minutes.update(
            {str(k): v for k, v in overrides.items() if isinstance(v, int) and v > 0}
        )
    nation = raw.get("bank_holiday_nation")
    names: dict[str, str] = {}
    templates: list[SlotTemplate] = []
    problems: list[str] = []
    for i, provider in enumerate(raw["providers"]):
        where = f"providers[{i}]"
        if not isinstance(provider, Mapping) or not isinstance(provider.get("ods"), str):
            problems.append(f"{where}: a provider needs an 'ods' code")
            continue
        ods = provider["ods"].strip().upper()
        names[ods] = str(provider.get("name") or ods)
        if provider.get("active", True) is False:
            continue  # suspended: it offers no slots, as in the scheduling service
        sites = provider.get("sites") or []
        if not isinstance(sites, list):
            problems.append(f"{where}.sites: expected a list")
            continue
        for j, site in enumerate(sites):
            try:
                if not isinstance(site, Mapping):
                    raise _Skip(f"{where}.sites[{j}]: expected an object")
                templates.extend(_site_templates(ods, site, slot_minutes, f"{where}.sites[{j}]"))
            except _Skip as skip:
                problems.append(str(skip))
    return ProviderConfig(
        names=names,
        templates=tuple(templates),
        problems=tuple(problems),
        bank_holiday_nation=nation if nation in {"ENG", "WLS", "SCT", "NIR"} else "ENG",
    )


def load_providers(path: Path) -> ProviderConfig:
    """Read the providers file; a missing or broken file is a problem reported, not a crash."""
    try:
        raw = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return ProviderConfig(problems=(f"{path} does not exist",))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return ProviderConfig(problems=(f"{path} could not be read: {error}",))
    return parse_providers(raw)
