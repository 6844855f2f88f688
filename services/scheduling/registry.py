"""The provider registry: providers, their sites, opening hours, closures and capacity.

An operator describes each qualified provider in `config/providers.json` (or through the
admin API); a new provider is configuration only. Opening hours are Europe/London wall
time; a site or modality without hours gets the pathway defaults (Mon-Fri 08:00-20:00,
Sat-Sun 09:00-17:00).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from datetime import date, time
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from pathway_schemas.values import Modality, OdsCode

SiteId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


def _no_offset(value: time) -> time:
    # An offset would make it a moment, not a wall time (and times with and without one
    # cannot even be compared).
    if value.tzinfo is not None:
        raise ValueError("a wall time is HH:MM with no UTC offset, e.g. 08:00")
    return value


# London wall time has no UTC offset, so it is not a JSON Schema "time" (RFC 3339 needs one).
WallTime = Annotated[
    time,
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9])?$",
            "description": "Europe/London wall time, HH:MM (seconds allowed), no offset",
            "examples": ["08:00"],
        }
    ),
    AfterValidator(_no_offset),
]
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class _Config(BaseModel):
    model_config = ConfigDict(
        frozen=True, extra="forbid", validate_by_name=True, validate_by_alias=True
    )


class Session(_Config):
    """One opening interval of a day, local wall time."""

    open: WallTime
    close: WallTime

    @model_validator(mode="after")
    def _ordered(self) -> Session:
        if self.open >= self.close:
            raise ValueError(
                f"opens at {self.open:%H:%M} but closes at {self.close:%H:%M}: close must be later"
            )
        return self


def _weekday(open_: str, close: str) -> tuple[Session, ...]:
    return (Session(open=time.fromisoformat(open_), close=time.fromisoformat(close)),)


class OpeningHours(_Config):
    """Sessions per weekday; an empty list closes that day."""

    mon: tuple[Session, ...] = _weekday("08:00", "20:00")
    tue: tuple[Session, ...] = _weekday("08:00", "20:00")
    wed: tuple[Session, ...] = _weekday("08:00", "20:00")
    thu: tuple[Session, ...] = _weekday("08:00", "20:00")
    fri: tuple[Session, ...] = _weekday("08:00", "20:00")
    sat: tuple[Session, ...] = _weekday("09:00", "17:00")
    sun: tuple[Session, ...] = _weekday("09:00", "17:00")

    @model_validator(mode="after")
    def _no_overlap(self) -> OpeningHours:
        for name in WEEKDAYS:
            sessions = sorted(getattr(self, name), key=lambda s: s.open)
            for earlier, later in itertools.pairwise(sessions):
                if later.open < earlier.close:
                    raise ValueError(
                        f"{name}: sessions overlap ({earlier.open:%H:%M} and {later.open:%H:%M})"
                    )
        return self

    def on(self, day: date) -> tuple[Session, ...]:
        sessions: tuple[Session, ...] = getattr(self, WEEKDAYS[day.weekday()])
        return tuple(sorted(sessions, key=lambda s: s.open))


class Closure(_Config):
    """Days a site (or some of its modalities) is closed: holidays, maintenance, staffing."""

    from_date: date = Field(alias="from")
    to_date: date | None = Field(
        default=None, alias="to", description="Inclusive; the same day when absent"
    )
    modalities: tuple[Modality, ...] = Field(
        default=(), description="Only these; empty closes the whole site"
    )
    reason: str = Field(default="", max_length=200)

    @model_validator(mode="after")
    def _ordered(self) -> Closure:
        if self.to_date is not None and self.to_date < self.from_date:
            raise ValueError("closure 'to' is before 'from'")
        return self

    def covers(self, day: date, modality: Modality) -> bool:
        last = self.to_date or self.from_date
        return self.from_date <= day <= last and (
            not self.modalities or modality in self.modalities
        )


class ModalityCapacity(_Config):
    """The slot template of one modality at one site."""

    rooms: int = Field(default=1, ge=1, le=50, description="Parallel rooms: slots per start time")
    slot_minutes: int | None = Field(
        default=None, ge=5, le=240, description="Overrides the policy length"
    )
    opening_hours: OpeningHours | None = Field(
        default=None, description="Overrides the site's hours"
    )


class Site(_Config):
    id: SiteId
    name: str = Field(min_length=1, max_length=200)
    area: str = Field(default="", max_length=200)
    modalities: dict[Modality, ModalityCapacity]
    opening_hours: OpeningHours = OpeningHours()
    closures: tuple[Closure, ...] = ()
    closed_on_bank_holidays: bool = False
    walk_in: bool = Field(default=False, description="Accepts plain X-ray walk-ins (open access)")

    @model_validator(mode="after")
    def _walk_in_needs_xr(self) -> Site:
        if not self.modalities:
            raise ValueError(f"site {self.id} offers no modality")
        if self.walk_in and Modality.XR not in self.modalities:
            raise ValueError(f"site {self.id} allows walk-ins but has no XR capacity")
        return self

    def hours_for(self, modality: Modality) -> OpeningHours:
        capacity = self.modalities[modality]
        return capacity.opening_hours or self.opening_hours

    def closed(self, day: date, modality: Modality) -> bool:
        return any(c.covers(day, modality) for c in self.closures)


class Provider(_Config):
    ods: OdsCode
    name: str = Field(min_length=1, max_length=200)
    active: bool = Field(
        default=True, description="Offered and bookable; false to suspend or stage a provider"
    )
    sites: tuple[Site, ...] = ()

    @field_validator("sites")
    @classmethod
    def _unique_sites(cls, sites: tuple[Site, ...]) -> tuple[Site, ...]:
        ids = [s.id for s in sites]
        duplicated = sorted({i for i in ids if ids.count(i) > 1})
        if duplicated:
            raise ValueError(f"site ids must be unique within a provider: {', '.join(duplicated)}")
        return sites

    def site(self, site_id: str) -> Site | None:
        return next((s for s in self.sites if s.id == site_id), None)

    def fingerprint(self) -> str:
        """Identifies this exact configuration (to tell an edited file entry from an unchanged one)."""
        canonical = json.dumps(self.model_dump(mode="json", by_alias=True), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()


class RegistryFile(BaseModel):
    model_config = ConfigDict(extra="ignore")

    providers: tuple[Provider, ...]

    @field_validator("providers")
    @classmethod
    def _unique_providers(cls, providers: tuple[Provider, ...]) -> tuple[Provider, ...]:
        codes = [p.ods for p in providers]
        duplicated = sorted({c for c in codes if codes.count(c) > 1})
        if duplicated:
            raise ValueError(f"provider ODS codes must be unique: {', '.join(duplicated)}")
        return providers


class RegistryFileError(ValueError):
    """The providers file is missing or wrong; the message names the file and the fields."""


def load_registry_file(path: Path) -> tuple[Provider, ...]:
    if not path.exists():
        raise RegistryFileError(
            f"providers file {path} is missing: copy config/providers.json or set SCHEDULING_CONFIG_DIR"
        )
    try:
        raw: Any = json.loads(path.read_text("utf-8"))
        return RegistryFile.model_validate(raw).providers
    except json.JSONDecodeError as error:
        raise RegistryFileError(f"{path} is not JSON: {error}") from None
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
            for e in error.errors(include_input=False)
        )
        raise RegistryFileError(f"{path} is not a valid provider registry: {problems}") from None
