"""The slot engine: slots only inside opening hours (across the clock changes), and the search."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pathway_schemas.values import Modality
from services.common.clock import LONDON, WorkingCalendar
from services.scheduling.registry import OpeningHours, Provider
from services.scheduling.settings import DEFAULT_SLOT_MINUTES
from services.scheduling.slots import (
    Slot,
    Template,
    choose_offers,
    earliest,
    find_free,
    parse_slot_id,
    templates,
)
from tests.unit.scheduling.builders import FALL_BACK, SPRING_FORWARD, hours, provider, site

CALENDAR = WorkingCalendar("ENG")
# The week around each clock change, in several years.
DST_DAYS = [
    change + timedelta(days=offset)
    for year in (2025, 2026, 2027, 2028)
    for change in (
        max(date(year, 3, d) for d in range(25, 32) if date(year, 3, d).weekday() == 6),
        max(date(year, 10, d) for d in range(25, 32) if date(year, 10, d).weekday() == 6),
    )
    for offset in range(-3, 4)
]


def template(p: Provider, modality: Modality = Modality.XR, site_index: int = 0) -> Template:
    s = p.sites[site_index]
    minutes = s.modalities[modality].slot_minutes or DEFAULT_SLOT_MINUTES[modality]
    return Template(provider=p, site=s, modality=modality, minutes=minutes, calendar=CALENDAR)


def local(moment: datetime) -> datetime:
    return moment.astimezone(LONDON)


def inside_opening_hours(slot: Slot, opening: OpeningHours) -> bool:
    start, end = local(slot.start), local(slot.end)
    day = start.date()
    return any(
        session.open <= start.time() and end.date() == day and end.time() <= session.close
        for session in opening.on(day)
    )


# Times around 01:00-02:00, the hour the clocks skip (spring) or repeat (autumn), come up often.
wall_times = st.one_of(
    st.integers(min_value=0, max_value=23 * 60 + 58).map(lambda m: time(m // 60, m % 60)),
    st.integers(min_value=30, max_value=150).map(lambda m: time(m // 60, m % 60)),
)


@st.composite
def sessions(draw: st.DrawFn) -> dict[str, Any]:
    """Any day's hours, including ones that open or close inside the hour the clocks skip or repeat."""
    opens = draw(wall_times)
    first = opens.hour * 60 + opens.minute + 1
    later = st.one_of(
        st.integers(min_value=first, max_value=23 * 60 + 59),
        st.integers(min_value=first, max_value=max(first, 150)),
    )
    closes = draw(later.map(lambda m: time(m // 60, m % 60)))
    return {"open": opens.strftime("%H:%M"), "close": closes.strftime("%H:%M")}


@settings(max_examples=300, deadline=None)
@given(
    day=st.one_of(
        st.sampled_from(DST_DAYS), st.sampled_from(DST_DAYS[3::7])
    ),  # [3::7]: the change days
    span_days=st.integers(min_value=1, max_value=3),
    session=sessions(),
    use_defaults=st.booleans(),
    minutes=st.sampled_from([5, 10, 15, 20, 30, 45, 60]),
    rooms=st.integers(min_value=1, max_value=3),
)
def test_no_slot_falls_outside_opening_hours_even_in_the_weeks_the_clocks_change(
    day: date, span_days: int, session: dict[str, Any], use_defaults: bool, minutes: int, rooms: int
) -> None:
    extra: dict[str, Any] = (
        {}
        if use_defaults
        else {
            "opening_hours": {
                d: [session] for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
            }
        }
    )
    p = provider("RXA01", site("S1", {"XR": {"rooms": rooms, "slot_minutes": minutes}}, **extra))
    t = template(p)
    start = datetime.combine(day, time(0, 0), tzinfo=LONDON).astimezone(UTC)
    slots = list(t.slots(start, start + timedelta(days=span_days)))

    opening = p.sites[0].opening_hours
    for slot in slots:
        assert inside_opening_hours(slot, opening), (
            f"{slot.id} is outside {opening.on(local(slot.start).date())}"
        )
        assert slot.end - slot.start == timedelta(minutes=minutes)  # real elapsed minutes
        assert t.holds(parse_slot_id(slot.id))
    assert slots == sorted(slots)
    assert len({s.id for s in slots}) == len(slots)
    if use_defaults:  # default hours are long enough that every day has slots
        assert {local(s.start).date() for s in slots} >= {
            day + timedelta(days=i) for i in range(span_days)
        }


def test_default_hours_are_weekdays_8_to_20_and_weekends_9_to_17_london_time_across_the_spring_change() -> (
    None
):
    t = template(provider("RXA01", site("S1")))
    saturday = datetime.combine(SPRING_FORWARD - timedelta(days=1), time(0, 0), tzinfo=LONDON)
    slots = list(t.slots(saturday.astimezone(UTC), (saturday + timedelta(days=3)).astimezone(UTC)))
    by_day: dict[date, list[Slot]] = {}
    for slot in slots:
        by_day.setdefault(local(slot.start).date(), []).append(slot)

    saturday_slots, sunday_slots, monday_slots = (
        by_day[saturday.date() + timedelta(days=i)] for i in range(3)
    )
    # Saturday is still GMT; Sunday and Monday are BST: the same wall times, an hour earlier in UTC.
    assert saturday_slots[0].start == datetime(2026, 3, 28, 9, 0, tzinfo=UTC)
    assert sunday_slots[0].start == datetime(2026, 3, 29, 8, 0, tzinfo=UTC)
    assert sunday_slots[-1].end == datetime(2026, 3, 29, 16, 0, tzinfo=UTC)
    assert monday_slots[0].start == datetime(2026, 3, 30, 7, 0, tzinfo=UTC)
    assert monday_slots[-1].end == datetime(2026, 3, 30, 19, 0, tzinfo=UTC)
    assert len(saturday_slots) == len(sunday_slots) == 8 * 6
    assert len(monday_slots) == 12 * 6


def test_the_autumn_change_day_keeps_wall_clock_hours_and_real_slot_lengths() -> None:
    t = template(provider("RXA01", site("S1", {"MR": {"rooms": 1}})), Modality.MR)
    sunday = datetime.combine(FALL_BACK, time(0, 0), tzinfo=LONDON).astimezone(UTC)
    slots = list(t.slots(sunday, sunday + timedelta(days=1)))
    assert local(slots[0].start).time() == time(9, 0)
    assert slots[0].start == datetime(2026, 10, 25, 9, 0, tzinfo=UTC)
    assert local(slots[-1].end).time() == time(17, 0)
    assert len(slots) == 16  # 8 hours of 30-minute MR slots


def test_closures_bank_holidays_and_closed_days_have_no_slots() -> None:
    good_friday, easter_monday = date(2026, 4, 3), date(2026, 4, 6)
    p = provider(
        "RXA01",
        site(
            "S1",
            {"XR": {"rooms": 1}, "US": {"rooms": 1}},
            closed_on_bank_holidays=True,
            opening_hours=hours("08:00", "18:00"),
            closures=[
                {
                    "from": "2026-04-01",
                    "to": "2026-04-02",
                    "modalities": ["US"],
                    "reason": "scanner upgrade",
                },
            ],
        ),
    )
    start = datetime(2026, 3, 30, tzinfo=LONDON).astimezone(UTC)
    xr_days = {
        local(s.start).date()
        for s in template(p, Modality.XR).slots(start, start + timedelta(days=14))
    }
    us_days = {
        local(s.start).date()
        for s in template(p, Modality.US).slots(start, start + timedelta(days=14))
    }

    assert good_friday not in xr_days
    assert easter_monday not in xr_days
    assert all(d.weekday() < 5 for d in xr_days)  # weekends closed by these hours
    assert date(2026, 4, 1) in xr_days
    assert date(2026, 4, 1) not in us_days
    assert date(2026, 4, 2) not in us_days
    assert date(2026, 3, 31) in us_days


def test_a_modality_may_keep_its_own_hours_and_slot_length() -> None:
    p = provider(
        "RXA01",
        site(
            "S1",
            {"DEXA": {"rooms": 1, "slot_minutes": 40, "opening_hours": hours("10:00", "12:00")}},
        ),
    )
    monday = datetime(2026, 3, 23, tzinfo=LONDON).astimezone(UTC)
    slots = list(template(p, Modality.DEXA).slots(monday, monday + timedelta(days=1)))
    assert [local(s.start).strftime("%H:%M") for s in slots] == ["10:00", "10:40", "11:20"]


@given(
    room=st.integers(min_value=1, max_value=3),
    minute=st.integers(min_value=0, max_value=60 * 24 * 20),
)
def test_a_slot_id_names_exactly_one_slot_of_the_template(room: int, minute: int) -> None:
    t = template(provider("RXA01", site("S-1_a", {"XR": {"rooms": 2}})))
    start = datetime(2026, 3, 23, tzinfo=UTC) + timedelta(minutes=minute)
    candidate = Slot(start, start + t.length, "RXA01", "S-1_a", Modality.XR, room)
    ref = parse_slot_id(candidate.id)
    assert (ref.provider_ods, ref.site_id, ref.modality, ref.room, ref.start) == (
        "RXA01",
        "S-1_a",
        Modality.XR,
        room,
        start,
    )
    generated = {s.id for s in t.slots(start - timedelta(minutes=1), start + timedelta(minutes=1))}
    assert t.holds(ref) == (candidate.id in generated)


@pytest.mark.parametrize(
    "bad", ["", "RXA01.S1.XR.1", "RXA01.S1.ZZ.1.20260323T0800Z", "RXA01.S1.XR.1.20261323T0800Z"]
)
def test_a_malformed_slot_id_is_refused_with_the_expected_shape(bad: str) -> None:
    with pytest.raises(ValueError, match="slot id"):
        parse_slot_id(bad)


# ---------------------------------------------------------------------------- the search


def two_providers() -> list[Provider]:
    return [
        provider("RXA01", site("A1", {"XR": {"rooms": 1}}, opening_hours=hours("09:00", "10:00"))),
        provider(
            "NWX02",
            site("B1", {"XR": {"rooms": 2}}, opening_hours=hours("13:00", "13:30")),
            site("B2", {"US": {"rooms": 1}}),
        ),
        provider("OFF03", site("C1", {"XR": {"rooms": 5}}), active=False),
    ]


class Lookups:
    """A fake of the booked-slots query that records the windows it was asked for."""

    def __init__(self, booked: set[str]) -> None:
        self.booked = booked
        self.windows: list[tuple[datetime, datetime]] = []

    async def __call__(self, modality: Modality, start: datetime, end: datetime) -> set[str]:
        self.windows.append((start, end))
        return {i for i in self.booked if start <= parse_slot_id(i).start < end}


async def test_search_finds_the_earliest_free_slots_of_each_active_site_offering_the_modality() -> (
    None
):
    candidates = templates(two_providers(), Modality.XR, DEFAULT_SLOT_MINUTES, CALENDAR)
    assert [t.key for t in candidates] == [
        ("RXA01", "A1"),
        ("NWX02", "B1"),
    ]  # not US-only B2, not inactive OFF03
    start = datetime(2026, 3, 23, 9, 5, tzinfo=LONDON).astimezone(UTC)
    first_free = datetime(2026, 3, 23, 9, 20, tzinfo=LONDON).astimezone(UTC)
    booked = {s.id for s in candidates[0].slots(start, first_free)}
    lookups = Lookups(booked)

    found = await find_free(
        candidates,
        start,
        start + timedelta(days=14),
        per_site=2,
        chunk=timedelta(days=7),
        booked=lookups,
    )

    assert [s.start for s in found[("RXA01", "A1")]] == [
        first_free,
        first_free + timedelta(minutes=10),
    ]
    assert [(local(s.start).strftime("%H:%M"), s.room) for s in found[("NWX02", "B1")]] == [
        ("13:00", 1),
        ("13:00", 2),
    ]
    assert lookups.windows == [(start, start + timedelta(days=7))]  # enough found: one window read
    offers = choose_offers(found, 3)
    assert [(o.provider_ods, local(o.start).strftime("%H:%M")) for o in offers] == [
        ("RXA01", "09:20"),
        ("RXA01", "09:30"),
        ("NWX02", "13:00"),
    ]
    # With fewer offers than sites, each site's earliest comes first: a choice of place.
    assert {o.provider_ods for o in choose_offers(found, 2)} == {"RXA01", "NWX02"}


@settings(max_examples=150, deadline=None)
@given(
    start_minute=st.integers(min_value=0, max_value=60 * 24 * 12),
    booked_share=st.floats(min_value=0.0, max_value=1.0),
    seed=st.randoms(use_true_random=False),
    chunk_days=st.integers(min_value=1, max_value=7),
)
async def test_the_search_always_finds_the_earliest_free_slot_whatever_is_booked(
    start_minute: int, booked_share: float, seed: Any, chunk_days: int
) -> None:
    candidates = templates(two_providers(), Modality.XR, DEFAULT_SLOT_MINUTES, CALENDAR)
    start = datetime(2026, 3, 20, tzinfo=UTC) + timedelta(minutes=start_minute)
    end = start + timedelta(days=10)
    every = sorted(slot for t in candidates for slot in t.slots(start, end))
    booked = {s.id for s in every if seed.random() < booked_share}
    lookups = Lookups(booked)

    found = await find_free(
        candidates, start, end, per_site=1, chunk=timedelta(days=chunk_days), booked=lookups
    )

    expected = next((s for s in every if s.id not in booked), None)
    assert earliest(found) == expected
    # Windows are consecutive, inside the search and no longer than a chunk: the cost is the
    # window's, whatever was booked before it.
    assert lookups.windows[0][0] == start
    for (_, previous_end), (window_start, _window_end) in zip(
        lookups.windows, lookups.windows[1:], strict=False
    ):
        assert window_start == previous_end
    assert all(
        s >= start and e <= end and e - s <= timedelta(days=chunk_days) for s, e in lookups.windows
    )


async def test_bookings_before_the_window_are_never_read() -> None:
    candidates = templates(two_providers(), Modality.XR, DEFAULT_SLOT_MINUTES, CALENDAR)
    start = datetime(2026, 6, 1, tzinfo=UTC)
    history_start = start - timedelta(days=400)
    past = {s.id for t in candidates for s in t.slots(history_start, start)}
    lookups = Lookups(past)
    found = await find_free(
        candidates,
        start,
        start + timedelta(days=42),
        per_site=1,
        chunk=timedelta(days=7),
        booked=lookups,
    )
    assert earliest(found) is not None
    assert all(window_start >= start for window_start, _ in lookups.windows)
