"""The slot engine: slots from opening hours and templates, and the earliest-first search.

Sessions are read in Europe/London wall time and turned into UTC instants before slots are
cut, so a slot never falls outside opening hours on the days the clocks change, and every
slot's length is real elapsed time. Slots are not stored until booked: a slot is free
unless a booking holds its id, so a search reads only the bookings inside its window.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from pathway_schemas.events import Appointment
from pathway_schemas.values import Modality
from services.common.clock import LONDON, WorkingCalendar, london_date
from services.scheduling.registry import Provider, Site


@dataclass(frozen=True, order=True)
class Slot:
    """One bookable start time in one room; ordered earliest first."""

    start: datetime
    end: datetime
    provider_ods: str
    site_id: str
    modality: Modality
    room: int

    @property
    def id(self) -> str:
        return slot_id(self.provider_ods, self.site_id, self.modality, self.room, self.start)

    def appointment(self) -> Appointment:
        return Appointment(
            provider_ods=self.provider_ods,
            site_id=self.site_id,
            slot_id=self.id,
            start=self.start,
            end=self.end,
        )


def slot_id(provider_ods: str, site_id: str, modality: Modality, room: int, start: datetime) -> str:
    return f"{provider_ods}.{site_id}.{modality.value}.{room}.{start.astimezone(UTC):%Y%m%dT%H%MZ}"


@dataclass(frozen=True)
class SlotRef:
    provider_ods: str
    site_id: str
    modality: Modality
    room: int
    start: datetime


_SLOT_ID = re.compile(
    r"^([A-Z0-9]{3,10})\.([A-Za-z0-9_-]{1,64})\.([A-Z]{2,4})\.(\d{1,2})\.(\d{8}T\d{4}Z)$"
)


def parse_slot_id(text: str) -> SlotRef:
    """Read a slot id back; ValueError says what is wrong with it."""
    match = _SLOT_ID.match(text)
    if not match:
        raise ValueError("a slot id looks like RXA01.SITE.XR.1.20260323T0800Z")
    ods, site, modality, room, start = match.groups()
    try:
        return SlotRef(
            provider_ods=ods,
            site_id=site,
            modality=Modality(modality),
            room=int(room),
            start=datetime.strptime(start, "%Y%m%dT%H%MZ").replace(tzinfo=UTC),
        )
    except ValueError:
        raise ValueError("the slot id names an unknown modality or an impossible time") from None


@dataclass(frozen=True)
class Template:
    """The slots of one modality at one site: its hours, closures, length and rooms."""

    provider: Provider
    site: Site
    modality: Modality
    minutes: int
    calendar: WorkingCalendar

    @property
    def key(self) -> tuple[str, str]:
        return (self.provider.ods, self.site.id)

    @property
    def rooms(self) -> int:
        return self.site.modalities[self.modality].rooms

    @property
    def length(self) -> timedelta:
        return timedelta(minutes=self.minutes)

    def sessions(self, day: date) -> list[tuple[datetime, datetime]]:
        """The day's opening sessions as UTC instants; none on a closure."""
        if self.site.closed(day, self.modality):
            return []
        if self.site.closed_on_bank_holidays and self.calendar.is_bank_holiday(day):
            return []
        sessions = []
        for session in self.site.hours_for(self.modality).on(day):
            opens, closes = (
                _instant(day, session.open, latest=True),
                _instant(day, session.close, latest=False),
            )
            if opens < closes:
                sessions.append((opens, closes))
        return sessions

    def slots(self, start: datetime, end: datetime) -> Iterator[Slot]:
        """Slots starting in [start, end), earliest first, rooms in order."""
        length = self.length
        day, last = london_date(start), london_date(end)
        while day <= last:
            for opens, closes in self.sessions(day):
                skipped = 0 if start <= opens else -(-(start - opens) // length)
                moment = opens + skipped * length
                while moment + length <= closes and moment < end:
                    for room in range(1, self.rooms + 1):
                        yield Slot(
                            moment,
                            moment + length,
                            self.provider.ods,
                            self.site.id,
                            self.modality,
                            room,
                        )
                    moment += length
            day += timedelta(days=1)

    def holds(self, ref: SlotRef) -> bool:
        """Whether this template would generate the referenced slot."""
        if (ref.provider_ods, ref.site_id, ref.modality) != (
            self.provider.ods,
            self.site.id,
            self.modality,
        ):
            return False
        if not 1 <= ref.room <= self.rooms:
            return False
        return any(
            opens <= ref.start
            and ref.start + self.length <= closes
            and (ref.start - opens) % self.length == timedelta(0)
            for opens, closes in self.sessions(london_date(ref.start))
        )


def _instant(day: date, wall: time, *, latest: bool) -> datetime:
    """A London wall time as a UTC instant, the later or earlier reading where the clocks change.

    A time in the spring gap or the autumn repeat has two readings; opening at the later and
    closing at the earlier keeps every slot inside the session, whatever hours a site sets.
    """
    readings = [
        datetime.combine(day, wall.replace(fold=fold), tzinfo=LONDON).astimezone(UTC)
        for fold in (0, 1)
    ]
    return max(readings) if latest else min(readings)


def templates(
    providers: Iterable[Provider],
    modality: Modality,
    slot_minutes: dict[Modality, int],
    calendar: WorkingCalendar,
) -> list[Template]:
    """Every active provider's site that offers the modality, in registry order."""
    return [
        Template(
            provider=provider,
            site=site,
            modality=modality,
            minutes=site.modalities[modality].slot_minutes or slot_minutes[modality],
            calendar=calendar,
        )
        for provider in providers
        if provider.active
        for site in provider.sites
        if modality in site.modalities
    ]


# The ids of slots already held in a window (start inclusive, end exclusive) for a modality.
BookedLookup = Callable[[Modality, datetime, datetime], Awaitable[set[str]]]


async def find_free(
    candidates: list[Template],
    start: datetime,
    end: datetime,
    *,
    per_site: int,
    chunk: timedelta,
    booked: BookedLookup,
) -> dict[tuple[str, str], list[Slot]]:
    """Up to `per_site` earliest free slots of each site, searching forward chunk by chunk.

    Each chunk reads only the bookings inside it, so the cost depends on the window's
    capacity, never on how many bookings were made before.
    """
    found: dict[tuple[str, str], list[Slot]] = {t.key: [] for t in candidates}
    if not candidates:
        return found
    modality = candidates[0].modality
    chunk_start = start
    while chunk_start < end and any(len(found[t.key]) < per_site for t in candidates):
        chunk_end = min(chunk_start + chunk, end)
        taken = await booked(modality, chunk_start, chunk_end)
        for template in candidates:
            bucket = found[template.key]
            for slot in template.slots(chunk_start, chunk_end):
                if len(bucket) >= per_site:
                    break
                if slot.id not in taken:
                    bucket.append(slot)
        chunk_start = chunk_end
    return found


def choose_offers(found: dict[tuple[str, str], list[Slot]], count: int) -> list[Slot]:
    """Each site's earliest first (a choice of place), then the next earliest; earliest first."""
    firsts = sorted(bucket[0] for bucket in found.values() if bucket)
    rest = sorted(slot for bucket in found.values() for slot in bucket[1:])
    return sorted((firsts + rest)[:count])


def earliest(found: dict[tuple[str, str], list[Slot]]) -> Slot | None:
    return min((slot for bucket in found.values() for slot in bucket), default=None)
