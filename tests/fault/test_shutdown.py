"""Graceful shutdown under load: SIGTERM drains in-flight work and commits nothing unfinished.

Each service in turn gets SIGTERM while referrals flow through it. It must exit by itself
within its grace period (not be killed), and at that moment every record its consumer group
has committed on a topic must have been applied (its event id is in the service's
processed marks, or on the request service's timeline) unless the service does not handle
that event type. After a restart the
referrals all finish, with nothing lost and nothing applied twice.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from pathlib import Path

import httpx
import pytest
from aiokafka.structs import TopicPartition
from pymongo import AsyncMongoClient

from pathway_cli.actors import Json
from pathway_cli.stack import SERVICE_NAMES
from pathway_cli.system import System
from pathway_schemas import topics
from services.common.store import PROCESSED
from tests.fault.audit import (
    audit,
    committed_offsets,
    dead_letter_summary,
    provider_topics,
    read_topics,
    republish,
    since,
    subscriptions,
)
from tests.fault.chaos import Chaos, Faults
from tests.fault.conftest import print_figures
from tests.fault.load import Load, OrderFeed, mixed_plan, steady_load
from tests.helpers import wait_until

pytestmark = pytest.mark.fault

GRACE = 25.0
DEAD_LETTER_TOPICS = [topics.dead_letter(name) for name in SERVICE_NAMES]


def last_run(log: Path) -> list[str]:
    """The log lines of the service's latest process (uvicorn logs its start first)."""
    lines = log.read_text("utf-8", errors="replace").splitlines() if log.exists() else []
    starts = [i for i, line in enumerate(lines) if "Started server process" in line]
    return lines[starts[-1] :] if starts else lines


def count(lines: list[str], message: str) -> int:
    return sum(f'"message": "{message}"' in line for line in lines)


async def busy(system: System, service: str) -> None:
    """Put work in flight: the service's latest events again (repeats, harmless), and wait
    until it is handling them."""
    names, _ = subscriptions()[service]
    recent = [r for r in await read_topics(system.bootstrap, names) if r.topic in topics.CANONICAL]
    log = system.stack.services[service].log_path
    before = count(last_run(log), "Received")
    await republish(system.bootstrap, recent[-150:])
    await wait_until(
        lambda: count(last_run(log), "Received") >= before + 10,
        timeout=60,
        message=f"{service} handling the burst",
    )


async def unfinished_commits(system: System, service: str) -> list[str]:
    """Records the service's group committed that it handles but never applied."""
    names, handled = subscriptions()[service]
    offsets = await committed_offsets(system.bootstrap, service, names)
    records = await read_topics(system.bootstrap, names)
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(system.mongo_url)
    try:
        processed = client[f"imaging_{service}"][PROCESSED]
        wrong = []
        for record in records:
            committed, _ = offsets[TopicPartition(record.topic, record.partition)]
            event_type = record.header("ce_type")
            # Intake requests are applied under the request id, not the record's id.
            if record.offset >= committed or event_type not in handled:
                continue
            if record.topic == topics.REFERRAL_INTAKE:
                continue
            event_id = record.header("ce_id")
            # The request service's timeline is its own record of what it applied (one
            # document per referral, idempotent by event id, no processed marks).
            applied = (
                await client[f"imaging_{service}"]["referrals"].find_one(
                    {"timeline.event_id": event_id}
                )
                if service == "request"
                else await processed.find_one({"_id": event_id})
            )
            if applied is None:
                wrong.append(f"{record.topic}/{record.partition}@{record.offset} {event_type}")
        return wrong
    finally:
        await client.close()


async def test_sigterm_under_load_drains_and_commits_nothing_unfinished(
    system: System, feed: OrderFeed, http: httpx.AsyncClient, capsys: pytest.CaptureFixture[str]
) -> None:
    faults = Faults()
    chaos = Chaos(system, random.Random(7), faults, system.log_dir)
    load = Load(system, http, feed)
    letters_before = await read_topics(system.bootstrap, DEAD_LETTER_TOPICS)
    started = time.monotonic()
    load_started = asyncio.Event()
    driving = asyncio.create_task(
        steady_load(
            load, mixed_plan(15, booked_every=5), spacing=1.0, started=load_started, deadline=150
        )
    )
    await load_started.wait()
    stopped_in: dict[str, float] = {}
    unfinished: dict[str, list[str]] = {}
    exit_codes: dict[str, int | None] = {}
    clean: dict[str, bool] = {}
    abandoned: dict[str, int] = {}
    try:
        for name in ("request", "reporting", "notify", "scheduling", "vetting"):
            process = system.stack.services[name]
            await busy(system, name)
            began = time.monotonic()
            process.stop(grace=GRACE)  # SIGTERM, then SIGKILL only after the grace period
            stopped_in[name] = time.monotonic() - began
            exit_codes[name] = process.returncode
            lines = last_run(process.log_path)
            # Drained: it finished its shutdown, and every record it began it also finished.
            clean[name] = count(lines, "stopped") == 1
            abandoned[name] = count(lines, "Received") - count(lines, "Processed")
            faults.graceful_stops += 1
            faults.note(f"SIGTERM {name}: exited {process.returncode} in {stopped_in[name]:.1f}s")
            unfinished[name] = await unfinished_commits(system, name)
            await chaos.bring_up(process)
            faults.restarts += 1
            faults.note(f"{name} ready again")
    finally:
        journeys = await driving
    elapsed = time.monotonic() - started

    referrals: dict[str, Json] = {}
    bookings: dict[str, Json] = {}
    for journey in journeys:
        if journey.referral_id:
            referrals[journey.referral_id] = await load.referral(journey.referral_id)
            if journey.kind == "booked":
                bookings[journey.referral_id] = await load.booking(journey.referral_id)
    canonical = await read_topics(system.bootstrap, topics.CANONICAL)
    orders = await read_topics(system.bootstrap, provider_topics(feed.providers.systems))
    letters = since(letters_before, await read_topics(system.bootstrap, DEAD_LETTER_TOPICS))
    findings = audit(journeys, referrals, canonical, bookings, orders)

    print_figures(
        capsys,
        "fault test: graceful shutdown under load",
        {
            "referrals": len(journeys),
            "acknowledged": sum(r["state"] == "acknowledged" for r in referrals.values()),
            "SIGTERMs": faults.graceful_stops,
            "seconds to stop": {n: round(s, 1) for n, s in stopped_in.items()},
            "exit codes": exit_codes,
            "records begun, not finished": abandoned,
            "committed but not applied": sum(len(w) for w in unfinished.values()),
            "lost": len(findings.lost),
            "duplicated": len(findings.duplicated),
            "dead letters": len(letters),
            "seconds": f"{elapsed:.0f}",
        },
    )
    with capsys.disabled():
        for problem in findings.lost + findings.duplicated + findings.out_of_order:
            print(f"  ! {problem}")
        for letter in letters:
            print(f"  ! dead letter: {dead_letter_summary(letter)}")

    for name, seconds in stopped_in.items():
        # uvicorn re-raises the signal once it has shut down: -SIGTERM, never -SIGKILL.
        assert exit_codes[name] in (0, -signal.SIGTERM), f"{name} exited {exit_codes[name]}"
        assert clean[name], f"{name} did not finish its shutdown (no 'stopped' in its log)"
        assert abandoned[name] == 0, f"{name} stopped with {abandoned[name]} records in flight"
        assert seconds < GRACE, f"{name} had to be killed after {seconds:.0f}s"
    assert unfinished == {name: [] for name in unfinished}
    assert findings.lost == [], findings.lost
    assert findings.duplicated == [], findings.duplicated
    assert findings.out_of_order == [], findings.out_of_order
    assert letters == []
