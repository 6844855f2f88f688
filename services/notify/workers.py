"""Background workers: deliveries, channel messages, and alert escalation.

Each runs as a `runtime.background` job in every replica and keeps no state of its own:
- the delivery and message workers claim a due job atomically with a lease
  (`find_one_and_update`), attempt it, then commit the outcome and its event in one unit of
  work, or put the job back with its next attempt time (exponential backoff). A crash
  mid-attempt leaves a lease that runs out, and another replica takes the job;
- the escalation worker sweeps alerts whose next escalation time (on the pathway clock) has
  passed, and moves each one rung up with a conditional update on its current rung and a
  cause id per (alert, level): each level happens once, whichever replica gets there first.
Slow or failing practice endpoints never hold up the Kafka consumer: the consumer only
records that a delivery is due. Each attempt and escalation is a span in the trace kept with
its job or alert, so the events it emits stay in the trace of the report that caused them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

import httpx

from services.common.app import Runtime
from services.common.jobs import repeat
from services.common.messaging import OUTAGE_ERRORS
from services.common.tracing import continued_trace
from services.notify import fhir
from services.notify.channels import Channel, ChannelError, OutgoingMessage, Recipient
from services.notify.config import NotifyConfig, PracticeDirectory
from services.notify.metrics import ALERTED_FLAGS, NotifyMetrics
from services.notify.repository import NotifyRepository
from services.notify.service import LeaseLost, NotifyService
from services.notify.transports import (
    DeliveryError,
    HttpPushTransport,
    Receipt,
    ReportPayload,
    ReportTransport,
)

log = logging.getLogger("pathway.notify.workers")

# Stopping, or the store or broker gone: hand a claimed job back rather than wait out its lease.
_GIVE_BACK: tuple[type[BaseException], ...] = (asyncio.CancelledError, *OUTAGE_ERRORS)

Document = dict[str, Any]
TRACER = "pathway.notify.workers"


def worker_id() -> str:
    """Who holds a lease: unique per process start, readable in the store."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


async def _release(release: Callable[[], Awaitable[None]]) -> None:
    # Best effort: if the store is unreachable the lease runs out and another replica retries.
    try:
        await release()
    except Exception:
        log.warning("could not release a claimed job; its lease will run out")


class DeliveryWorker:
    def __init__(
        self,
        runtime: Runtime,
        service: NotifyService,
        repository: NotifyRepository,
        practices: PracticeDirectory,
        config: NotifyConfig,
        metrics: NotifyMetrics,
        *,
        owner: str,
        lease: timedelta,
        concurrency: int,
        interval_s: float,
        transports: Mapping[str, ReportTransport] | None = None,
    ) -> None:
        self.runtime = runtime
        self.service = service
        self.repository = repository
        self.practices = practices
        self.policy = config.delivery
        self.metrics = metrics
        self.owner = owner
        self.lease = lease
        self.concurrency = concurrency
        self.interval_s = interval_s
        self.transports: Mapping[str, ReportTransport] = transports or {}
        self.tracer = runtime.tracer_provider.get_tracer(TRACER)
        self.wake = asyncio.Event()

    async def run(self, stopping: asyncio.Event) -> None:
        if self.transports:
            await repeat(
                self.step,
                interval_s=self.interval_s,
                stopping=stopping,
                name="delivery worker",
                wake=self.wake,
            )
            return
        async with httpx.AsyncClient(timeout=self.policy.timeout_s) as client:
            self.transports = {"http": HttpPushTransport(client, self.practices.secret)}
            await repeat(
                self.step,
                interval_s=self.interval_s,
                stopping=stopping,
                name="delivery worker",
                wake=self.wake,
            )

    async def step(self) -> bool:
        now = self.runtime.clock.now()
        jobs: list[Document] = []
        while len(jobs) < self.concurrency:
            job = await self.repository.deliveries.claim(now, now + self.lease, self.owner)
            if job is None:
                break
            jobs.append(job)
        results = await asyncio.gather(*(self.attempt(job) for job in jobs), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return bool(jobs)

    async def _push(self, job: Document) -> tuple[Receipt, str]:
        practice = self.practices.get(job["practice_ods"])
        if practice is None:
            raise DeliveryError("PracticeNotConfigured")
        transport = self.transports.get(practice.transport)
        if transport is None:
            raise DeliveryError("TransportUnavailable")
        report = await self.repository.report(job["report_id"])
        if report is None:
            raise DeliveryError("ReportMissing")
        referral = await self.repository.referral(job["referral_id"])
        resource = fhir.diagnostic_report(
            job["version_id"], report, referral, job.get("addendum_id")
        )
        receipt = await transport.deliver(practice, ReportPayload(job["_id"], resource))
        return receipt, transport.name

    async def attempt(self, job: Document) -> None:
        with continued_trace(
            self.tracer, "deliver report", job.get("trace"), attributes={"job.kind": "delivery"}
        ):
            await self._attempt(job)

    async def _attempt(self, job: Document) -> None:
        attempts = int(job["attempts"]) + 1
        extra = {"referral_id": job["referral_id"]}
        try:
            receipt, transport = await self._push(job)
        except DeliveryError as failure:
            error = failure.error_class
        except _GIVE_BACK:
            await _release(lambda: self.repository.deliveries.release(job["_id"], self.owner))
            raise
        except Exception as unexpected:
            log.exception("delivery attempt failed unexpectedly", extra=extra)
            error = type(unexpected).__name__
        else:
            try:
                outcome = await self.runtime.commit(
                    lambda tx: self.service.delivered(
                        tx,
                        job,
                        self.owner,
                        receipt_id=receipt.receipt_id,
                        attempts=attempts,
                        transport=transport,
                    ),
                    cause_id=f"delivered:{job['_id']}:{job['round']}",
                )
            except LeaseLost:
                return
            if not outcome.duplicate:
                self.metrics.delivery_attempts.labels("delivered").inc()
                elapsed = (self.runtime.clock.now() - job["created_at"]).total_seconds()
                self.metrics.delivery_seconds.labels(transport).observe(max(0.0, elapsed))
                log.info("report delivered", extra=extra)
            return
        if attempts >= self.policy.max_attempts:
            try:
                await self.runtime.commit(
                    lambda tx: self.service.delivery_failed(
                        tx, job, self.owner, attempts=attempts, error_class=error
                    ),
                    cause_id=f"delivery-failed:{job['_id']}:{job['round']}",
                )
            except LeaseLost:
                return
            self.metrics.delivery_attempts.labels("failed").inc()
            log.warning(
                "report delivery failed after %d attempts (%s)", attempts, error, extra=extra
            )
            return
        next_at = self.runtime.clock.now() + timedelta(seconds=self.policy.delay_after(attempts))
        await self.repository.deliveries.retry_later(
            job["_id"], self.owner, attempts=attempts, at=next_at, error=error
        )
        self.metrics.delivery_attempts.labels("retry").inc()
        log.info("report delivery attempt %d failed (%s); will retry", attempts, error, extra=extra)


class MessageWorker:
    def __init__(
        self,
        runtime: Runtime,
        service: NotifyService,
        repository: NotifyRepository,
        config: NotifyConfig,
        channels: Mapping[str, Channel],
        metrics: NotifyMetrics,
        *,
        owner: str,
        lease: timedelta,
        interval_s: float,
    ) -> None:
        self.runtime = runtime
        self.service = service
        self.repository = repository
        self.policy = config.messages
        self.alert_retry_max_s = config.alerts.retry_max_s
        self.channels = channels
        self.metrics = metrics
        self.owner = owner
        self.lease = lease
        self.interval_s = interval_s
        self.tracer = runtime.tracer_provider.get_tracer(TRACER)
        self.wake = asyncio.Event()

    async def run(self, stopping: asyncio.Event) -> None:
        await repeat(
            self.step,
            interval_s=self.interval_s,
            stopping=stopping,
            name="message worker",
            wake=self.wake,
        )

    async def step(self) -> bool:
        now = self.runtime.clock.now()
        job = await self.repository.messages.claim(now, now + self.lease, self.owner)
        if job is None:
            return False
        await self.attempt(job)
        return True

    async def _message(self, job: Document) -> OutgoingMessage:
        organisation, person, nhs_number = job.get("organisation"), job.get("person"), None
        if job.get("lookup") is not None:
            referral = await self.repository.referral(job["referral_id"])
            if referral is not None:
                organisation = organisation or referral.practice_ods
                if job["lookup"] == "referrer":
                    person = person or referral.referrer_id
                else:
                    nhs_number = referral.nhs_number
            elif job["lookup"] == "referrer" and organisation is None:
                # Its submission has not reached notify yet (topics are read side by side).
                raise ChannelError("ReferrerUnknown")
        return OutgoingMessage(
            message_id=job["_id"],
            referral_id=job["referral_id"],
            kind=job["kind"],
            recipient=Recipient(
                role=job["role"], organisation=organisation, person=person, nhs_number=nhs_number
            ),
            subject=job["subject"],
            body=job["body"],
        )

    async def attempt(self, job: Document) -> None:
        with continued_trace(
            self.tracer,
            "send message",
            job.get("trace"),
            attributes={"job.kind": "message", "message.channel": str(job["channel"])},
        ):
            await self._attempt(job)

    async def _attempt(self, job: Document) -> None:
        attempts = int(job["attempts"]) + 1
        channel_name = job["channel"]
        channel = self.channels.get(channel_name)
        try:
            if channel is None:
                raise ChannelError("ChannelNotConfigured")
            await channel.send(await self._message(job))
        except ChannelError as failure:
            error = failure.error_class
        except _GIVE_BACK:
            await _release(lambda: self.repository.messages.release(job["_id"], self.owner))
            raise
        except Exception as unexpected:
            log.exception("message failed unexpectedly", extra={"referral_id": job["referral_id"]})
            error = type(unexpected).__name__
        else:
            assert channel is not None
            sent_by = channel.name
            try:
                await self.runtime.commit(
                    lambda tx: self.service.message_sent(tx, job, self.owner, channel=sent_by),
                    cause_id=f"sent:{job['_id']}",
                )
            except LeaseLost:
                return
            self.metrics.messages.labels(channel_name, "sent").inc()
            return
        if job.get("gives_up", True) and attempts >= self.policy.max_attempts:
            try:
                await self.runtime.commit(
                    lambda tx: self.service.message_failed(tx, job, self.owner, error_class=error)
                )
            except LeaseLost:
                return
            self.metrics.messages.labels(channel_name, "failed").inc()
            log.warning(
                "%s message given up after %d attempts (%s)",
                channel_name,
                attempts,
                error,
                extra={"referral_id": job["referral_id"]},
            )
            return
        delay = self.policy.delay_after(attempts)
        if not job.get("gives_up", True):
            delay = min(delay, self.alert_retry_max_s)
        await self.repository.messages.retry_later(
            job["_id"],
            self.owner,
            attempts=attempts,
            at=self.runtime.clock.now() + timedelta(seconds=delay),
            error=error,
        )
        self.metrics.messages.labels(channel_name, "retry").inc()


class EscalationWorker:
    def __init__(
        self,
        runtime: Runtime,
        service: NotifyService,
        repository: NotifyRepository,
        metrics: NotifyMetrics,
        *,
        interval_s: float,
        gauges_interval_s: float,
        batch: int = 50,
    ) -> None:
        self.runtime = runtime
        self.service = service
        self.repository = repository
        self.metrics = metrics
        self.interval_s = interval_s
        self.gauges_interval_s = gauges_interval_s
        self.batch = batch
        self.tracer = runtime.tracer_provider.get_tracer(TRACER)
        self.sweeps = 0  # completed sweeps: tests wait on it instead of sleeping
        self._gauges_at = 0.0

    async def run(self, stopping: asyncio.Event) -> None:
        await repeat(
            self.step, interval_s=self.interval_s, stopping=stopping, name="escalation worker"
        )

    async def step(self) -> bool:
        now = self.runtime.clock.now()
        moved = 0
        for alert in await self.repository.due_alerts(now, self.batch):
            moved += await self._escalate(alert)
        if time.monotonic() - self._gauges_at >= self.gauges_interval_s:
            await self.refresh_gauges(now)
        self.sweeps += 1
        # Moved some: look again at once, so that a service that was down catches up rung by rung.
        return moved > 0

    async def _escalate(self, alert: Document) -> int:
        if int(alert["level"]) >= self.service.escalation.top:
            # The ladder was shortened since this alert was raised: it stays at its rung.
            await self.repository.alerts.update_one(
                {"_id": alert["_id"], "level": alert["level"]},
                {"$set": {"next_escalation_at": None}},
            )
            return 0
        level = int(alert["level"]) + 1
        try:
            with continued_trace(
                self.tracer,
                "escalate alert",
                alert.get("trace"),
                attributes={"job.kind": "escalation", "alert.level": level},
            ):
                outcome = await self.runtime.commit(
                    lambda tx: self.service.escalate(tx, alert),
                    cause_id=f"escalate:{alert['_id']}:{level}",
                )
        except LeaseLost:
            return 0  # acknowledged, or moved by another replica, since the sweep read it
        if outcome.duplicate:
            return 0
        log.info("alert escalated to level %d", level, extra={"referral_id": alert["referral_id"]})
        return 1

    async def refresh_gauges(self, now: datetime) -> None:
        self._gauges_at = time.monotonic()
        open_counts = {
            (flag, level): n for flag, level, n in await self.repository.open_alert_counts()
        }
        for flag in ALERTED_FLAGS:
            for level in range(self.service.escalation.top + 1):
                self.metrics.alerts_open.labels(flag, str(level)).set(
                    open_counts.get((flag, level), 0)
                )
        overdue = await self.repository.overdue_alert_counts(now)
        for flag in ALERTED_FLAGS:
            self.metrics.alerts_overdue.labels(flag).set(overdue.get(flag, 0))
        self.metrics.reports_undelivered.set(await self.repository.deliveries.count("pending"))
