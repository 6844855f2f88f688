"""The whole system for end-to-end tests: five services as processes on the embedded stack.

One system per test module (starting it costs seconds); each test drives its own referrals,
so tests in a module do not meet. Time is simulated: a clock file every service reads,
which a test moves forward with `system.advance(...)`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from pathway_cli.actors import BookingClerk, Practice, Reporter, VettingClinician
from pathway_cli.system import System, running_system

# A Monday morning in March (GMT), away from bank holidays and the clock change.
START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
async def system(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[System]:
    work = tmp_path_factory.mktemp("system")
    async with running_system(work, start_time=START) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30.0) as client:
        yield client


@pytest.fixture
def practice(system: System, http: httpx.AsyncClient) -> Practice:
    return Practice(http, system.urls, "A81001")


@pytest.fixture
def clinician(system: System, http: httpx.AsyncClient) -> VettingClinician:
    return VettingClinician(http, system.urls)


@pytest.fixture
def clerk(system: System, http: httpx.AsyncClient) -> BookingClerk:
    return BookingClerk(http, system.urls)


@pytest.fixture
def reporter(system: System, http: httpx.AsyncClient) -> Reporter:
    return Reporter(http, system.urls)


def log_dir(system: System) -> Path:
    return Path(system.stack.config.log_dir)
