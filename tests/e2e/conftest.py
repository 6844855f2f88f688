"""The whole system for end-to-end tests: five services as processes on the embedded stack.

One system per test module (starting it costs seconds); each test drives its own referrals,
so tests in a module do not meet. Time is simulated: a clock file every service reads,
which a test moves forward with `system.advance(...)`.

A module may set `SYSTEM_OPTIONS` (keyword arguments of `running_system`, e.g.
`practice_endpoints`) to run its system differently.

Every service prints its spans to its log (the OpenTelemetry console exporter), so that the
scan for patient data covers spans as well as log lines.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from pathway_cli.actors import BookingClerk, Practice, ProviderNetwork, Reporter, VettingClinician
from pathway_cli.stack import SERVICE_NAMES, service_spec
from pathway_cli.system import System, running_system
from tests.e2e.support import Pathway

# A Monday morning in March (GMT), away from bank holidays and the clock change.
START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def e2e_env() -> dict[str, str]:
    env = {f"{service_spec(name).env_prefix}OTEL__EXPORTER": "console" for name in SERVICE_NAMES}
    # The background jobs look for due work this often in real time; the clock they compare
    # against is the simulated one, so a short pace only makes scenarios quicker.
    env["SCHEDULING_DEADLINE_CHECK_INTERVAL_S"] = "0.5"
    env["NOTIFY_WORKER_INTERVAL_S"] = "0.5"
    env["REPORTING_PARK_SWEEP_INTERVAL_S"] = "1"
    return env


@pytest.fixture(scope="module")
async def system(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[System]:
    work = tmp_path_factory.mktemp("system")
    options: dict[str, Any] = dict(getattr(request.module, "SYSTEM_OPTIONS", {}))
    env = {**e2e_env(), **options.pop("env", {})}
    async with running_system(work, start_time=START, env=env, **options) as running:
        yield running


@pytest.fixture(scope="module")
async def providers(system: System) -> AsyncIterator[ProviderNetwork]:
    network = ProviderNetwork.of(system.bootstrap)
    await network.start()
    try:
        yield network
    finally:
        await network.stop()


@pytest.fixture(scope="module")
async def pathway(system: System, providers: ProviderNetwork) -> AsyncIterator[Pathway]:
    async with httpx.AsyncClient(timeout=30.0) as client:
        yield Pathway(system, client, providers)


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
