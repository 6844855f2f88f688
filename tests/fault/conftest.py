"""One whole system for the fault tests, on a store that keeps its data across restarts.

The kill, shutdown and replay tests share it (starting it costs seconds); each drives its
own referrals and checks those. Time is simulated (a clock file every service reads) and
only moves forward. The broker keeps its data in memory and is never restarted.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime

import httpx
import pytest

from pathway_cli.actors import ProviderNetwork
from pathway_cli.system import System, running_system
from tests.fault.load import OrderFeed

# A Monday morning in March (GMT), away from bank holidays and the clock change.
START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)

FAULT_ENV = {
    # The background jobs look for due work this often in real time (time itself is simulated).
    "SCHEDULING_DEADLINE_CHECK_INTERVAL_S": "0.5",
    "NOTIFY_WORKER_INTERVAL_S": "0.5",
    "REPORTING_PARK_SWEEP_INTERVAL_S": "1",
    # A provider event read before the booking that assigns the referral is parked, and
    # refused after this long on the pathway clock. Here booked journeys move the shared
    # clock days ahead within seconds, which would refuse events parked a moment ago; the
    # timeout is about a lagging booking topic, which these tests do not exercise.
    "REPORTING_PARK_TIMEOUT_S": str(30 * 86400),
}


@pytest.fixture(scope="package")
async def system(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[System]:
    work = tmp_path_factory.mktemp("fault-system")
    async with running_system(
        work, start_time=START, env=FAULT_ENV, durable_store=True, ready_timeout=120
    ) as running:
        yield running


@pytest.fixture(scope="package")
async def feed(system: System) -> AsyncIterator[OrderFeed]:
    async with OrderFeed(ProviderNetwork.of(system.bootstrap)) as orders:
        yield orders


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30.0) as client:
        yield client


def print_figures(
    capsys: pytest.CaptureFixture[str], title: str, figures: Mapping[str, object]
) -> None:
    """Figures on the terminal even when the test passes (CI logs keep them)."""
    width = max(len(name) for name in figures)
    with capsys.disabled():
        print(f"\n{title}")
        for name, value in figures.items():
            print(f"  {name:<{width}}  {value}")
