"""A whole system on the embedded stack for tests, the simulator and the benchmark.

`running_system()` starts broker, store and the five services on free loopback ports,
optionally on a shared simulated clock (a file every service reads), and yields a
`System` with the services' URLs, the broker's bootstrap and `advance()` for the clock.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import socket
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from pathway_cli.stack import (
    SERVICE_NAMES,
    LineSink,
    PortInUseError,
    Stack,
    StackConfig,
    StartFailedError,
    service_spec,
)
from services.common.clock import FileClock

REPO = Path(__file__).resolve().parent.parent


def free_port_range(count: int, start: int = 20000, end: int = 60000) -> int:
    """The first port of `count` consecutive free loopback ports."""
    port = start
    while port + count < end:
        taken = False
        for candidate in range(port, port + count):
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", candidate))
                except OSError:
                    taken = True
                    port = candidate + 1
                    break
        if not taken:
            return port
    raise RuntimeError("no range of free ports found")


@dataclass
class System:
    stack: Stack
    clock_file: Path | None
    urls: dict[str, str] = field(default_factory=dict)
    work_dir: Path | None = None

    @property
    def log_dir(self) -> Path:
        """Every process's output: one log file per process."""
        return Path(self.stack.config.log_dir)

    @property
    def channel_dir(self) -> Path | None:
        """Where notify's file channels write patient, referrer and alert messages."""
        return self.work_dir / "notify-channels" if self.work_dir is not None else None

    @property
    def config_dir(self) -> Path | None:
        """This run's copy of the operator's configuration."""
        return self.work_dir / "config" if self.work_dir is not None else None

    @property
    def bootstrap(self) -> str:
        return self.stack.broker.bootstrap

    @property
    def mongo_url(self) -> str:
        return self.stack.store.url

    def now(self) -> datetime:
        if self.clock_file is None:
            raise RuntimeError("this system runs on the system clock")
        return FileClock(self.clock_file).now()

    def set_time(self, moment: datetime) -> None:
        if self.clock_file is None:
            raise RuntimeError("this system runs on the system clock")
        FileClock.write(self.clock_file, moment)

    def advance(self, delta: timedelta) -> datetime:
        moment = self.now() + delta
        self.set_time(moment)
        return moment


def system_config(
    source: Path,
    target: Path,
    notify_url: str,
    *,
    practice_endpoints: Mapping[str, str] | None = None,
) -> Path:
    """A copy of the operator's config for this run, practice endpoints on this run's notify.

    `practice_endpoints` sends chosen practices' reports elsewhere (ODS code to URL), e.g. to
    an endpoint that refuses them.
    """
    shutil.copytree(source, target, dirs_exist_ok=True)
    notify_file = target / "notify.json"
    if notify_file.exists():
        policy = json.loads(notify_file.read_text("utf-8"))
        for practice in policy.get("practices", []):
            endpoint = str(practice.get("endpoint", ""))
            if "/inbox/" in endpoint:
                practice["endpoint"] = f"{notify_url}/inbox/{endpoint.split('/inbox/', 1)[1]}"
            override = (practice_endpoints or {}).get(str(practice.get("ods", "")))
            if override is not None:
                practice["endpoint"] = override
        notify_file.write_text(json.dumps(policy, indent=2), "utf-8")
    return target


START_ATTEMPTS = 3


def _port_taken(log_dir: Path) -> bool:
    """Whether a process of a failed start could not bind its port."""
    return any(
        "address already in use" in log.read_text("utf-8", errors="replace")
        for log in log_dir.glob("*.log")
    )


def system_env(
    clock_file: Path | None, config_dir: Path | None = None, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Settings for every service: the shared clock, the run's config, fast timers."""
    env: dict[str, str] = {}
    for name in SERVICE_NAMES:
        prefix = service_spec(name).env_prefix
        if config_dir is not None:
            env[f"{prefix}CONFIG_DIR"] = str(config_dir)
        if clock_file is not None:
            env[f"{prefix}CLOCK__MODE"] = "file"
            env[f"{prefix}CLOCK__FILE"] = str(clock_file)
        env[f"{prefix}OUTBOX_RELAY_INTERVAL_S"] = "0.5"
        if name == "notify" and config_dir is not None:
            env[f"{prefix}CHANNEL_DIR"] = str(config_dir.parent / "notify-channels")
        env[f"{prefix}KAFKA__SESSION_TIMEOUT_MS"] = "6000"
    env.update(extra or {})
    return env


@contextlib.asynccontextmanager
async def running_system(
    work_dir: Path,
    *,
    start_time: datetime | None = None,
    env: Mapping[str, str] | None = None,
    on_line: LineSink | None = None,
    ready_timeout: float = 90.0,
    practice_endpoints: Mapping[str, str] | None = None,
    durable_store: bool = False,
) -> AsyncIterator[System]:
    """Start the whole system in `work_dir` (logs, clock file); stop it all afterwards.

    `durable_store` keeps the store's data in `work_dir/store`, so that a store restart
    (fault tests) finds it again; otherwise the store is ephemeral (`:memory:`).
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    clock_file = None
    if start_time is not None:
        clock_file = work_dir / "clock"
        FileClock.write(clock_file, start_time)
    for attempt in range(1, START_ATTEMPTS + 1):
        # A random place to look from, below the kernel's ephemeral ports (outgoing
        # connections take those): several runs start at once on a shared machine, and a
        # port found free is bound only later, by its process.
        base = free_port_range(len(SERVICE_NAMES) + 2, start=random.randrange(20000, 32000))
        notify_port = base + 2 + SERVICE_NAMES.index("notify")
        config_dir = system_config(
            REPO / "config",
            work_dir / "config",
            f"http://127.0.0.1:{notify_port}",
            practice_endpoints=practice_endpoints,
        )
        config = StackConfig(
            broker_port=base,
            store_port=base + 1,
            base_port=base + 2,
            data_dir=work_dir / "store" if durable_store else None,
            log_dir=work_dir / "log",
            ready_timeout=ready_timeout,
            service_env=system_env(clock_file, config_dir, env),
            providers_file=config_dir / "providers.json",
            grace=15,
        )
        stack = Stack(config, on_line=on_line)
        try:
            await stack.start()
            break
        except (StartFailedError, PortInUseError):
            # Someone else bound one of the ports meanwhile: try again elsewhere.
            if attempt == START_ATTEMPTS or not _port_taken(config.log_dir):
                raise
            config.log_dir.rename(work_dir / f"log-failed-start-{attempt}")
    try:
        yield System(
            stack=stack,
            clock_file=clock_file,
            urls={name: proc.base_url for name, proc in stack.services.items()},
            work_dir=work_dir,
        )
    finally:
        stack.stop()
