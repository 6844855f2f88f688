"""The load: referrals submitted at a rate, and stand-ins for providers and practices.

Each referral is an open-access chest X-ray (the shortest path that still crosses all five
services): the practice submits it over HTTP; vetting accepts it by rule; scheduling
authorises a walk-in and orders it from a provider; the provider's RIS (a stand-in here)
answers at once with arrival, completion and a final report on its inbound topic;
reporting issues the report; notify delivers it, signed, to the practice endpoint; the
practice (a stand-in that watches the notification topic instead of polling its inbox)
acknowledges it over HTTP. A referral is done when its acknowledgement is on the topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer  # type: ignore[import-untyped,unused-ignore]
from aiokafka.structs import TopicPartition  # type: ignore[import-untyped,unused-ignore]

from pathway_cli.actors import Practice, ProviderSystem
from pathway_cli.simulate import synthetic_nhs_number
from pathway_cli.system import System
from pathway_schemas import topics
from pathway_schemas.envelope import InvalidEvent, from_record
from pathway_schemas.events import (
    ProviderExaminationCompleted,
    ProviderPatientArrived,
    ProviderReportIssued,
    ProviderWalkInAuthorised,
    ReportAcknowledged,
    ReportDelivered,
)
from pathway_schemas.values import StudyReference

PRACTICES = {"A81001": "G1234567", "B82002": "G2345678"}
#: The stand-ins' own fetch wait: short, so that they add little to the times measured.
FETCH_WAIT_MS = 20


@dataclass
class PhaseLoad:
    """What one phase of load did, timed by the benchmark's own clock (time.time())."""

    name: str
    referrals: int
    rate: float | None
    submitted_at: dict[str, float] = field(default_factory=dict)
    acknowledged_at: dict[str, float] = field(default_factory=dict)
    submit_seconds: list[float] = field(default_factory=list)
    acknowledge_seconds: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    began: float = 0.0
    ended: float = 0.0
    submissions_over: bool = False
    finished: asyncio.Event = field(default_factory=asyncio.Event)

    def check_finished(self) -> None:
        if self.submissions_over and self.done >= len(self.submitted_at):
            self.finished.set()

    @property
    def done(self) -> int:
        return len(self.acknowledged_at)

    def sustained_rate(self) -> float | None:
        """Referrals finished per second between the 10th and the 90th percentile finish."""
        finished = sorted(self.acknowledged_at.values())
        if len(finished) < 10:
            return None
        low, high = finished[len(finished) // 10], finished[(len(finished) * 9) // 10]
        count = (len(finished) * 9) // 10 - len(finished) // 10
        return count / (high - low) if high > low else None

    def overall_rate(self) -> float | None:
        if not self.acknowledged_at:
            return None
        span = max(self.acknowledged_at.values()) - min(self.submitted_at.values())
        return self.done / span if span > 0 else None


class Load:
    """Runs one phase: submissions on a schedule; providers and practices react at once."""

    def __init__(self, system: System, http: httpx.AsyncClient, seed: int = 1) -> None:
        self.system = system
        self.http = http
        self.rng = random.Random(seed)
        self.practices = {ods: Practice(http, system.urls, ods) for ods in PRACTICES}
        self.providers: dict[str, ProviderSystem] = {}
        self.phase: PhaseLoad | None = None
        self._answered: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()
        self._notifications: Any = None
        self._owner: dict[str, str] = {}  # referral id -> practice

    async def start(self, provider_codes: list[str]) -> None:
        for code in provider_codes:
            provider = ProviderSystem(
                code,
                self.system.bootstrap,
                source=f"/benchmark/{code.lower()}",
                fetch_max_wait_ms=FETCH_WAIT_MS,
            )
            await provider.start()
            self.providers[code] = provider
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.system.bootstrap,
            enable_auto_commit=False,
            fetch_max_wait_ms=FETCH_WAIT_MS,
        )
        await consumer.start()
        partitions = [TopicPartition(topics.NOTIFICATION, p) for p in range(3)]
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        self._notifications = consumer
        self._spawn(self._watch_providers())
        self._spawn(self._watch_notifications())

    async def stop(self) -> None:
        self._stop.set()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for provider in self.providers.values():
            with contextlib.suppress(Exception):
                await provider.stop()
        if self._notifications is not None:
            await self._notifications.stop()

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def run_phase(
        self,
        name: str,
        referrals: int,
        rate: float | None,
        *,
        timeout: float,
        concurrency: int = 32,
    ) -> PhaseLoad:
        """Submit `referrals` at `rate` per second (None: as fast as `concurrency` allows)."""
        phase = PhaseLoad(name, referrals, rate)
        self.phase = phase
        phase.began = time.time()
        limit = asyncio.Semaphore(concurrency)
        start = time.monotonic()
        submissions = []
        for index in range(referrals):
            if rate is not None:
                delay = start + index / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            await limit.acquire()
            submissions.append(asyncio.ensure_future(self._submit(phase, index, limit)))
        await asyncio.gather(*submissions)
        phase.submissions_over = True
        phase.check_finished()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(phase.finished.wait(), timeout)
        phase.ended = time.time()
        return phase

    async def _submit(self, phase: PhaseLoad, index: int, limit: asyncio.Semaphore) -> None:
        try:
            ods = list(PRACTICES)[index % len(PRACTICES)]
            body = {
                "nhs_number": synthetic_nhs_number(self.rng),
                "referrer_id": PRACTICES[ods],
                "examination_code": "XCHES",
                "clinical_question": "Cough for six weeks in a smoker",
                "priority": "routine",
            }
            began = time.time()
            try:
                created = await self.practices[ods].submit(
                    body, idempotency_key=f"bench-{phase.name}-{index:06d}-{uuid.uuid4().hex[:8]}"
                )
            except Exception as error:  # a benchmark reports failures, it does not stop
                phase.failures.append(f"submit: {type(error).__name__}: {str(error)[:200]}")
                return
            phase.submit_seconds.append(time.time() - began)
            referral_id = created["referral_id"]
            self._owner[referral_id] = ods
            phase.submitted_at[referral_id] = began
        finally:
            limit.release()

    async def _watch_providers(self) -> None:
        while not self._stop.is_set():
            for provider in self.providers.values():
                await provider.poll(timeout_ms=20)
                for referral_id, orders in provider.orders.items():
                    if referral_id in self._answered:
                        continue
                    if any(isinstance(o.event, ProviderWalkInAuthorised) for o in orders):
                        self._answered.add(referral_id)
                        order = next(
                            o.event for o in orders if isinstance(o.event, ProviderWalkInAuthorised)
                        )
                        self._spawn(self._examine_and_report(provider, order))
                provider.orders.clear()  # answered orders are not needed again

    async def _examine_and_report(
        self, provider: ProviderSystem, order: ProviderWalkInAuthorised
    ) -> None:
        referral_id = order.referral_id
        try:
            await provider.send(
                ProviderPatientArrived(
                    referral_id=referral_id, occurred_at=datetime.now(UTC), site_id=order.site_id
                )
            )
            study = StudyReference(
                study_instance_uid=f"1.2.826.0.1.3680043.10.9.{uuid.uuid4().int % 10**12}",
                accession_number=f"{provider.ods}{uuid.uuid4().hex[:8]}",
            )
            await provider.send(
                ProviderExaminationCompleted(
                    referral_id=referral_id,
                    occurred_at=datetime.now(UTC),
                    site_id=order.site_id,
                    study=study,
                )
            )
            await provider.send(
                ProviderReportIssued(
                    referral_id=referral_id,
                    occurred_at=datetime.now(UTC),
                    report_id=f"BENCH-{uuid.uuid4().hex[:16]}",
                    status="final",
                    text="The lungs are clear. The heart is not enlarged.",
                    conclusion="Normal chest radiograph.",
                    finding_flag="routine",
                    reported_by="GMC-7654321",
                )
            )
        except Exception as error:
            if self.phase is not None:
                self.phase.failures.append(f"provider: {type(error).__name__}: {str(error)[:200]}")

    async def _watch_notifications(self) -> None:
        while not self._stop.is_set():
            batch = await self._notifications.getmany(timeout_ms=50)
            for records in batch.values():
                for record in records:
                    try:
                        received = from_record(record.headers, record.value, topic=record.topic)
                    except InvalidEvent:
                        continue
                    event = received.event
                    if isinstance(event, ReportDelivered) and event.addendum_id is None:
                        if event.report_id not in self._answered:
                            self._answered.add(event.report_id)
                            self._spawn(self._acknowledge(event.referral_id, event.report_id))
                    elif (
                        isinstance(event, ReportAcknowledged)
                        and self.phase is not None
                        and event.referral_id in self.phase.submitted_at
                    ):
                        self.phase.acknowledged_at.setdefault(event.referral_id, time.time())
                        self.phase.check_finished()

    async def _acknowledge(self, referral_id: str, report_id: str) -> None:
        ods = self._owner.get(referral_id)
        if ods is None:
            return
        began = time.time()
        try:
            await self.practices[ods].acknowledge(report_id, by=PRACTICES[ods], action="Reviewed")
        except Exception as error:
            if self.phase is not None:
                self.phase.failures.append(
                    f"acknowledge: {type(error).__name__}: {str(error)[:200]}"
                )
            return
        if self.phase is not None:
            self.phase.acknowledge_seconds.append(time.time() - began)
