"""Faults on a running system: kill -9 and restart services, restart the store, and kill a
consumer while its group rebalances. The broker is never touched: it keeps its data in
memory, so a broker restart would lose the log itself, which no design can survive.

Which fault comes when is drawn from a seeded random generator, so that a failing run can
be repeated with its seed. A killed service is restarted the way an orchestrator would:
at once, and again if it exits while starting (say, because the store is down too).
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from pathway_cli.stack import (
    SERVICE_NAMES,
    ServiceProcess,
    StartFailedError,
    free_port,
    service_spec,
)
from pathway_cli.system import System

READY_TIMEOUT = 120.0


@dataclass
class Faults:
    """What was done to the system, for the printed figures."""

    kills: Counter[str] = field(default_factory=Counter)
    restarts: int = 0
    failed_starts: int = 0
    store_restarts: int = 0
    rebalance_kills: int = 0
    graceful_stops: int = 0
    events: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def note(self, what: str) -> None:
        self.events.append(f"{time.monotonic() - self.started:6.1f}s {what}")


class LogWatch:
    """Lines a process printed, to wait on one (called from the process's reader thread)."""

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, _name: str, line: str) -> None:
        with self._lock:
            self._lines.append(line)

    def saw(self, text: str) -> bool:
        with self._lock:
            return any(text in line for line in self._lines)


class Chaos:
    def __init__(self, system: System, rng: random.Random, faults: Faults, log_dir: Path) -> None:
        self.system = system
        self.rng = rng
        self.faults = faults
        self.log_dir = log_dir
        self.busy: set[str] = set()
        self.restarting: list[asyncio.Task[None]] = []

    def service(self, name: str) -> ServiceProcess:
        return self.system.stack.services[name]

    async def bring_up(self, process: ServiceProcess, attempts: int = 4) -> None:
        """Start a process and wait until it is ready; start it again if it dies starting."""
        for attempt in range(1, attempts + 1):
            if not process.is_running():
                process.start()
            try:
                await process.wait_ready(READY_TIMEOUT)
                return
            except StartFailedError:
                self.faults.failed_starts += 1
                self.faults.note(f"{process.name} exited while starting (attempt {attempt})")
                if attempt == attempts:
                    raise

    async def kill(self, name: str) -> None:
        """kill -9 a service, and restart it in the background."""
        self.busy.add(name)
        self.service(name).kill()
        self.faults.kills[name] += 1
        self.faults.note(f"kill -9 {name}")
        self.restarting.append(asyncio.create_task(self._restart(name)))

    async def _restart(self, name: str) -> None:
        try:
            await self.bring_up(self.service(name))
            self.faults.restarts += 1
            self.faults.note(f"{name} ready again")
        finally:
            self.busy.discard(name)

    async def restart_store(self) -> None:
        """Stop the store (SIGTERM), start it on the same data, wait until it answers."""
        store = self.system.stack.store
        store.stop(grace=15)
        self.faults.note("store stopped")
        store.start()
        await store.wait_ready(READY_TIMEOUT)
        self.faults.store_restarts += 1
        self.faults.note("store ready again")

    def replica(self, name: str, watch: LogWatch) -> ServiceProcess:
        """A second replica: same database and consumer group, its own HTTP port."""
        original = self.service(name)
        port = free_port()
        env = {**original.env, f"{service_spec(name).env_prefix}HTTP__PORT": str(port)}
        return ServiceProcess(
            name, port, env, self.log_dir / f"{name}-replica-{port}.log", on_line=watch
        )

    async def kill_during_rebalance(self, name: str) -> None:
        """A second replica joins the group; while the group rebalances, kill -9 the first.

        The first replica held every partition and is giving them up when it dies, so the
        group rebalances again without it, then once more when it comes back, and a last
        time when the second replica leaves (gracefully).
        """
        self.busy.add(name)
        watch = LogWatch()
        second = self.replica(name, watch)
        second.start()
        try:
            deadline = time.monotonic() + READY_TIMEOUT
            # FastStream logs this when the subscriber starts, i.e. as it joins the group.
            while not watch.saw("waiting for messages"):
                if time.monotonic() > deadline or not second.is_running():
                    raise TimeoutError(f"the second {name} replica never joined its group")
                await asyncio.sleep(0.05)
            self.faults.note(f"second {name} replica joining: rebalance")
            await asyncio.sleep(self.rng.uniform(0.0, 1.5))  # a random moment of the rebalance
            self.service(name).kill()
            self.faults.kills[name] += 1
            self.faults.rebalance_kills += 1
            self.faults.note(f"kill -9 {name} during the rebalance")
            await self.bring_up(second)
            self.faults.note(f"second {name} replica ready")
            await self.bring_up(self.service(name))
            self.faults.restarts += 1
            self.faults.note(f"{name} ready again beside the second replica")
        finally:
            second.stop(grace=20)
            self.faults.graceful_stops += 1
            self.faults.note(f"second {name} replica stopped (SIGTERM)")
            self.busy.discard(name)

    async def run(self, pause: tuple[float, float] = (1.0, 4.0), rounds: int = 1) -> None:
        """Each round: each service killed once, the store restarted once, one kill during a
        rebalance, in a seeded random order at random moments. Returns when all are up again."""
        actions: list[tuple[str, str]] = []
        for _ in range(rounds):
            round_actions = [("kill", name) for name in SERVICE_NAMES]
            round_actions.append(("store", "store"))
            round_actions.append(("rebalance", self.rng.choice(SERVICE_NAMES)))
            self.rng.shuffle(round_actions)
            actions += round_actions
        self.faults.note("faults: " + ", ".join(f"{a} {t}" for a, t in actions))
        for action, target in actions:
            # Chaos pacing (random moments between faults), not a wait for anything.
            await asyncio.sleep(self.rng.uniform(*pause))
            if target in self.busy:
                await self._settled(target)
            if action == "kill":
                await self.kill(target)
            elif action == "store":
                await self.restart_store()
            else:
                await self._settled(target)
                await self.kill_during_rebalance(target)
        await asyncio.gather(*self.restarting)

    async def _settled(self, name: str) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while name in self.busy:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} did not come back within {READY_TIMEOUT}s")
            await asyncio.sleep(0.1)
