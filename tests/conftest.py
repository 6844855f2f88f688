"""Session fixtures: one embedded broker and one embedded store for the whole test run.

Both run as real network servers on free loopback ports (the same processes `pathway up`
starts); each test isolates itself with its own database names and topics
(`isolated_names`). Services run as subprocesses through `service_process`.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from pathway_cli.stack import (
    EmbeddedBroker,
    EmbeddedStore,
    ManagedProcess,
    ServiceProcess,
    free_port,
    service_env,
    stop_all,
)

pytest_plugins = ["tests.fixtures"]

READY_TIMEOUT = 60.0


@pytest.fixture(scope="session")
def stack_log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the logs of every process started by the tests go (printed on failure)."""
    return tmp_path_factory.mktemp("stack-logs")


@pytest.fixture(scope="session")
async def embedded_broker(stack_log_dir: Path) -> AsyncIterator[EmbeddedBroker]:
    broker = EmbeddedBroker(free_port(), stack_log_dir / "broker.log")
    broker.start()
    try:
        await broker.wait_ready(READY_TIMEOUT)
        yield broker
    finally:
        broker.stop(grace=5)


@pytest.fixture(scope="session")
async def embedded_store(stack_log_dir: Path) -> AsyncIterator[EmbeddedStore]:
    store = EmbeddedStore(free_port(), None, stack_log_dir / "store.log")
    store.start()
    try:
        await store.wait_ready(READY_TIMEOUT)
        yield store
    finally:
        store.stop(grace=5)


@pytest.fixture(scope="session")
def kafka_bootstrap(embedded_broker: EmbeddedBroker) -> str:
    return embedded_broker.bootstrap


@pytest.fixture(scope="session")
def mongo_url(embedded_store: EmbeddedStore) -> str:
    return embedded_store.url


@dataclass(frozen=True)
class IsolatedNames:
    """A unique suffix per test, so tests sharing the session broker and store never meet."""

    suffix: str

    def database(self, base: str) -> str:
        """e.g. `imaging_request_3f9a1c2b` (MongoDB database names: no dots, max 63 bytes)."""
        return f"{base}_{self.suffix}"

    def topic(self, base: str) -> str:
        """e.g. `imaging.referral.v1.3f9a1c2b`."""
        return f"{base}.{self.suffix}"

    def group(self, base: str) -> str:
        """A consumer group id of this test's own."""
        return f"{base}-{self.suffix}"


@pytest.fixture
def isolated_names() -> IsolatedNames:
    return IsolatedNames(uuid.uuid4().hex[:10])


#: start(name, env=None, *, database=None, module=None, timeout=60) -> a ready ServiceProcess
ServiceStarter = Callable[..., Awaitable[ServiceProcess]]


@pytest.fixture
async def service_process(
    kafka_bootstrap: str,
    mongo_url: str,
    isolated_names: IsolatedNames,
    stack_log_dir: Path,
) -> AsyncIterator[ServiceStarter]:
    """Factory: start a service as a subprocess on the session broker and store.

    `await service_process("vetting")` starts `python -m services.vetting` on a free port with
    its own database (`imaging_vetting_<suffix>`), waits for /readyz and returns the
    ServiceProcess (`.base_url`, `.kill()`, `.restart()`, ...). `env` adds or overrides
    settings. Every service started is stopped after the test.
    """
    started: list[ServiceProcess] = []

    async def start(
        name: str,
        env: Mapping[str, str] | None = None,
        *,
        database: str | None = None,
        module: str | None = None,
        timeout: float = READY_TIMEOUT,
    ) -> ServiceProcess:
        port = free_port()
        settings = service_env(
            name,
            bootstrap=kafka_bootstrap,
            mongo_url=mongo_url,
            port=port,
            database=database or isolated_names.database(f"imaging_{name}"),
        )
        log = stack_log_dir / f"{name}-{isolated_names.suffix}-{len(started)}.log"
        proc = ServiceProcess(name, port, {**settings, **(env or {})}, log, module=module)
        started.append(proc)
        proc.start()
        await proc.wait_ready(timeout)
        return proc

    try:
        yield start
    finally:
        stop_all(list(reversed(started)), grace=10)


@pytest.fixture
def process_reaper() -> Iterator[list[ManagedProcess]]:
    """Append processes a test starts by hand; they are killed after it whatever happens."""
    procs: list[ManagedProcess] = []
    yield procs
    for proc in procs:
        proc.kill()
