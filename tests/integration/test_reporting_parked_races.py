"""Parked provider events end exactly once, applied or refused, whatever races the sweep.

A provider's event read before the referral's booking is parked; past the park timeout a
sweep refuses it (dead letter). Every replica sweeps, and a booking can arrive while a sweep
is at work, so a parked event is raced by a release (the booking's arrival) and by other
replicas' sweeps. The sweeps here are replicas on the service's database and broker, each
paused at a chosen point (an event the test sets, never a sleep) to force one interleaving.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from pathway_schemas import topics
from pathway_schemas.events import DeadLetter, VettingAccepted
from services.common.app import Runtime, build_runtime
from services.common.clock import FixedClock
from services.common.store import PROCESSED
from services.reporting.commands import Reporting
from services.reporting.intake import ProviderIntake
from services.reporting.main import create_app, turnaround_policy
from services.reporting.metrics import ReportingMetrics
from services.reporting.repository import Document, ReportingRepository
from services.reporting.settings import Settings
from tests.harness import RunningService, TopicReader, publish, running_service
from tests.helpers import wait_until
from tests.unit.reporting.builders import (
    RXA01,
    T0,
    accepted,
    booked,
    canonical,
    completed,
    from_provider,
)

DEAD_LETTERS = topics.dead_letter("reporting")
PARK_TIMEOUT = timedelta(seconds=60)


class Gate:
    """Where a sweep stops: `reached` once it gets there, on again once `opened`."""

    def __init__(self) -> None:
        self.reached = asyncio.Event()
        self.opened = asyncio.Event()

    async def stop_here(self) -> None:
        self.reached.set()
        await self.opened.wait()


class PausingRepository(ReportingRepository):
    """Stops the sweep after it has read which parked events expired."""

    def __init__(self, db: Any, after_reading: Gate | None) -> None:
        super().__init__(db)
        self.after_reading = after_reading

    async def parked_before(self, moment: datetime, limit: int) -> list[Document]:
        expired = await super().parked_before(moment, limit)
        if self.after_reading is not None:
            await self.after_reading.stop_here()
        return expired


class PausingIntake(ProviderIntake):
    """Stops the sweep as it is about to dead-letter its first expired event."""

    def __init__(self, *args: Any, before_refusing: Gate | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.before_refusing = before_refusing

    async def refuse(self, *args: Any, **kwargs: Any) -> None:
        if self.before_refusing is not None:
            await self.before_refusing.stop_here()
        await super().refuse(*args, **kwargs)


@contextlib.asynccontextmanager
async def replica(
    settings: Settings,
    clock: FixedClock,
    *,
    after_reading: Gate | None = None,
    before_refusing: Gate | None = None,
    claim_lease: timedelta | None = None,
) -> AsyncIterator[tuple[ProviderIntake, Runtime]]:
    """Another replica's intake on the same database and broker, wired as create_app does."""
    runtime = build_runtime("reporting", settings, clock=clock)
    repository = PausingRepository(runtime.store.db, after_reading)
    lease = {} if claim_lease is None else {"claim_lease": claim_lease}
    intake = PausingIntake(
        runtime,
        repository,
        Reporting(repository, turnaround_policy(settings.turnaround)),
        ReportingMetrics.create(runtime.metrics.registry),
        PARK_TIMEOUT,
        before_refusing=before_refusing,
        **lease,
    )
    await runtime.broker.start()
    try:
        yield intake, runtime
    finally:
        await runtime.broker.stop()
        await runtime.store.client.close()


class Ledger:
    """How each parked event ended: applied (its release committed), and dead letters."""

    def __init__(self, svc: RunningService, reader: TopicReader) -> None:
        self.svc = svc
        self.reader = reader
        self.registries = [svc.runtime.metrics.registry]

    def counted(self) -> int:
        labels = {
            "service": "reporting",
            "topic": topics.provider_inbound(RXA01),
            "reason": "denied",
        }
        return int(
            sum(
                r.get_sample_value("pathway_dead_letters_total", labels) or 0
                for r in self.registries
            )
        )

    def letters(self) -> list[DeadLetter]:
        return [
            DeadLetter.model_validate(json.loads(r.value))
            for r in self.reader.records
            if r.topic == DEAD_LETTERS
        ]

    async def endings(self, event_ids: list[str]) -> dict[str, tuple[bool, int]]:
        """Per parked event: (applied, dead letters), once every letter counted is read."""
        await self.reader.wait_for(
            lambda _: len(self.letters()) >= self.counted(), what="every dead letter counted"
        )
        db = self.svc.runtime.store.db
        applied = {
            d["_id"].removeprefix("unpark:")
            async for d in db[PROCESSED].find({"_id": {"$in": [f"unpark:{e}" for e in event_ids]}})
        }
        letters = [letter.event_id for letter in self.letters()]
        return {e: (e in applied, letters.count(e)) for e in event_ids}


async def park(
    kafka: str, svc: RunningService, clock: FixedClock, count: int
) -> tuple[list[VettingAccepted], list[str]]:
    """Referrals known here but not yet booked, each with a completion from RXA01 parked,
    then the clock moved past the park timeout."""
    referrals = [accepted() for _ in range(count)]
    await publish(kafka, canonical(*referrals))
    completions = [completed(r.referral_id, clock.now() - timedelta(minutes=30)) for r in referrals]
    event_ids = await publish(kafka, from_provider(RXA01, *completions))
    await wait_until(
        parked_count_is(svc, event_ids, count),
        timeout=30,
        message=f"{count} completions parked",
    )
    clock.advance(PARK_TIMEOUT + timedelta(seconds=1))
    return referrals, event_ids


Check = Callable[[], bool | Awaitable[bool]]


def parked_count_is(svc: RunningService, event_ids: list[str], expected: int) -> Check:
    async def check() -> bool:
        query = {"_id": {"$in": event_ids}}
        return bool(await svc.runtime.store.db["parked"].count_documents(query) == expected)

    return check


def applied_at_least(svc: RunningService, event_ids: list[str], expected: int) -> Check:
    """At least `expected` of these parked events applied (their release committed)."""

    async def check() -> bool:
        query = {"_id": {"$in": [f"unpark:{e}" for e in event_ids]}}
        return bool(await svc.runtime.store.db[PROCESSED].count_documents(query) >= expected)

    return check


async def book(kafka: str, referrals: list[VettingAccepted]) -> None:
    await publish(kafka, canonical(*(booked(r, RXA01) for r in referrals)))


@contextlib.asynccontextmanager
async def reporting_service(
    kafka: str, service_settings: Any, clock: FixedClock
) -> AsyncIterator[tuple[Settings, RunningService, Ledger]]:
    # The service's own sweep runs once at start, before anything is parked: the replicas'
    # sweeps below are the only ones.
    settings: Settings = service_settings(
        Settings,
        "reporting",
        park_timeout_s=PARK_TIMEOUT.total_seconds(),
        park_sweep_interval_s=3600,
    )
    async with (
        running_service(create_app(settings, clock=clock)) as svc,
        TopicReader(kafka, DEAD_LETTERS) as reader,
    ):
        yield settings, svc, Ledger(svc, reader)


async def test_a_booking_arriving_during_a_sweep_leaves_each_parked_event_applied_or_refused_once(
    kafka: str, service_settings: Any
) -> None:
    clock = FixedClock(T0)
    async with reporting_service(kafka, service_settings, clock) as (settings, svc, ledger):
        # The bookings arrive after the sweep read the expired events, before it claims any:
        # it finds them applicable on its claim, and refuses none.
        referrals, first = await park(kafka, svc, clock, 4)
        read = Gate()
        async with replica(settings, clock, after_reading=read) as (intake, runtime):
            ledger.registries.append(runtime.metrics.registry)
            sweeping = asyncio.create_task(intake.sweep())
            await asyncio.wait_for(read.reached.wait(), timeout=30)
            await book(kafka, referrals)
            await wait_until(
                applied_at_least(svc, first, 4), timeout=30, message="the bookings' releases"
            )
            read.opened.set()
            await asyncio.wait_for(sweeping, timeout=30)
        assert await ledger.endings(first) == dict.fromkeys(first, (True, 0))

        # The sweep claims the oldest and stops before dead-lettering it; the bookings arrive
        # then. The claimed one is refused (the decision was taken), the others applied.
        referrals, second = await park(kafka, svc, clock, 4)
        refusing = Gate()
        async with replica(settings, clock, before_refusing=refusing) as (intake, runtime):
            ledger.registries.append(runtime.metrics.registry)
            sweeping = asyncio.create_task(intake.sweep())
            await asyncio.wait_for(refusing.reached.wait(), timeout=30)
            await book(kafka, referrals)
            await wait_until(
                applied_at_least(svc, second, 3), timeout=30, message="the others' releases"
            )
            refusing.opened.set()
            await asyncio.wait_for(sweeping, timeout=30)
        endings = await ledger.endings(second)
        assert sorted(endings.values()) == [(False, 1)] + [(True, 0)] * 3
        assert await svc.runtime.store.db["parked"].count_documents({}) == 0


async def test_replicas_sweeping_at_once_refuse_each_expired_event_once_and_lose_none(
    kafka: str, service_settings: Any
) -> None:
    clock = FixedClock(T0)
    async with reporting_service(kafka, service_settings, clock) as (settings, svc, ledger):
        # One replica claims the oldest and stops before dead-lettering it; another sweeps
        # everything meanwhile and leaves that one to the replica holding its claim.
        _, first = await park(kafka, svc, clock, 4)
        refusing = Gate()
        async with (
            replica(settings, clock, before_refusing=refusing) as (slow, slow_runtime),
            replica(settings, clock) as (fast, fast_runtime),
        ):
            ledger.registries += [slow_runtime.metrics.registry, fast_runtime.metrics.registry]
            sweeping = asyncio.create_task(slow.sweep())
            await asyncio.wait_for(refusing.reached.wait(), timeout=30)
            await fast.sweep()
            refusing.opened.set()
            await asyncio.wait_for(sweeping, timeout=30)
        assert await ledger.endings(first) == dict.fromkeys(first, (False, 1))

        # Three replicas sweeping freely at the same moment.
        _, second = await park(kafka, svc, clock, 12)
        async with (
            replica(settings, clock) as (one, one_runtime),
            replica(settings, clock) as (two, two_runtime),
            replica(settings, clock) as (three, three_runtime),
        ):
            ledger.registries += [
                r.metrics.registry for r in (one_runtime, two_runtime, three_runtime)
            ]
            await asyncio.gather(one.sweep(), two.sweep(), three.sweep())
        assert await ledger.endings(second) == dict.fromkeys(second, (False, 1))

        # A replica dies holding a claim: the event is neither applied nor lost. Within the
        # lease another sweep leaves it; past the lease a sweep takes the claim over.
        _, third = await park(kafka, svc, clock, 2)
        refusing = Gate()
        async with replica(settings, clock, before_refusing=refusing) as (dying, dying_runtime):
            ledger.registries.append(dying_runtime.metrics.registry)
            sweeping = asyncio.create_task(dying.sweep())
            await asyncio.wait_for(refusing.reached.wait(), timeout=30)
            sweeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeping
        async with replica(settings, clock) as (within, within_runtime):
            ledger.registries.append(within_runtime.metrics.registry)
            await within.sweep()
        endings = await ledger.endings(third)
        assert sorted(endings.values()) == [(False, 0), (False, 1)]
        [claimed] = [e for e, ending in endings.items() if ending == (False, 0)]
        assert await svc.runtime.store.db["parked"].count_documents({"_id": claimed}) == 1
        async with replica(settings, clock, claim_lease=timedelta(0)) as (later, later_runtime):
            ledger.registries.append(later_runtime.metrics.registry)
            await later.sweep()
        assert await ledger.endings(third) == dict.fromkeys(third, (False, 1))
        assert await svc.runtime.store.db["parked"].count_documents({}) == 0
