"""Two replicas of the scheduling service on one database and broker never double-book."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from pathway_schemas import topics
from services.common.clock import FixedClock
from services.common.store import make_client
from services.scheduling.main import create_app
from services.scheduling.settings import Settings
from tests.harness import publish, running_service
from tests.helpers import wait_until
from tests.unit.scheduling.builders import T0, accepted

REPO = Path(__file__).resolve().parents[2]
CLERK = {"X-API-Key": "dev-booking-clerk"}
REFERRALS = 10


async def test_two_replicas_booking_at_once_never_double_book_a_slot(
    kafka: str, service_settings: Any, tmp_path: Path
) -> None:
    # Scarce capacity: one X-ray room, three slots a weekday morning.
    config = tmp_path / "config"
    config.mkdir()
    shutil.copy(REPO / "config" / "principals.json", config / "principals.json")
    morning = [{"open": "09:00", "close": "09:30"}]
    hours = {**{d: morning for d in ("mon", "tue", "wed", "thu", "fri")}, "sat": [], "sun": []}
    site = {"id": "A1", "name": "Small", "opening_hours": hours, "modalities": {"XR": {"rooms": 1}}}
    (config / "providers.json").write_text(
        json.dumps({"providers": [{"ods": "RXA01", "name": "Small", "sites": [site]}]})
    )

    clock = FixedClock(T0 + timedelta(hours=1))
    settings: Settings = service_settings(
        Settings, "scheduling", config_dir=config, deadline_check_interval_s=0.05
    )
    events = [accepted("XCHES") for _ in range(REFERRALS)]

    async with (
        running_service(create_app(settings, clock=clock)) as one,
        running_service(create_app(settings, clock=clock)) as two,
    ):
        replicas = (one, two)
        await publish(kafka, [(e, topics.VETTING) for e in events])

        async def every_offered() -> bool:
            return await _views(one.client, events, "offered") is not None

        await wait_until(_check(every_offered), timeout=60, message="every referral offered")
        views = await _views(one.client, events, "offered")
        assert views is not None
        contested = views[0]["offers"][0]["slot_id"]

        # Every referral tries the same slot at once, half through each replica.
        responses = await asyncio.gather(
            *(
                replicas[i % 2].client.post(
                    f"/bookings/{e.referral_id}/choose", json={"slot_id": contested}, headers=CLERK
                )
                for i, e in enumerate(events)
            )
        )
        assert sorted(r.status_code for r in responses) == [200] + [409] * (REFERRALS - 1)

        # Both replicas' deadline jobs book the defaults for the rest at the same moment.
        clock.advance(timedelta(hours=48))

        async def every_booked() -> bool:
            return await _views(two.client, events, "booked") is not None

        await wait_until(_check(every_booked), timeout=60, message="every referral booked")
        booked = await _views(one.client, events, "booked")
        assert booked is not None

    slots = {view["referral_id"]: view["appointment"]["slot_id"] for view in booked}
    assert len(set(slots.values())) == REFERRALS, "two referrals hold the same slot"
    client = make_client(settings.mongo)
    try:
        held = {
            d["_id"]: d["referral_id"]
            async for d in client[settings.mongo.database]["bookings"].find({})
        }
    finally:
        await client.close()
    assert held == {slot: referral for referral, slot in slots.items()}


def _check(predicate: Callable[[], Awaitable[bool]]) -> Callable[[], bool | Awaitable[bool]]:
    return predicate


async def _views(client: Any, events: list[Any], state: str) -> list[dict[str, Any]] | None:
    """Every referral's booking view once all are in `state` (booked counts as offered too)."""
    responses = [await client.get(f"/bookings/{e.referral_id}", headers=CLERK) for e in events]
    if any(r.status_code != 200 for r in responses):
        return None
    views: list[dict[str, Any]] = [r.json() for r in responses]
    if state == "booked" and any(v["state"] != "booked" for v in views):
        return None
    return views
