"""Composition root of the notify service."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from fastapi import FastAPI

from pathway_schemas import topics
from pathway_schemas.events import (
    AlertEscalated,
    AlertRaised,
    PatientNotified,
    ReferrerNotified,
    ReportAcknowledged,
    ReportDelivered,
    ReportDeliveryFailed,
)
from services.common.app import build_runtime, http_app
from services.common.auth import Principals
from services.common.clock import Clock
from services.notify import api, handlers
from services.notify.channels import Channel, FileChannel, LogChannel
from services.notify.config import ChannelKind, NotifyConfig, load_config, practice_directory
from services.notify.fhir_api import fhir_router, inbox_fhir_router
from services.notify.inbox import inbox_router
from services.notify.metrics import NotifyMetrics
from services.notify.policy import Escalation
from services.notify.repository import NotifyRepository
from services.notify.service import NotifyService
from services.notify.settings import Settings
from services.notify.transports import ReportTransport
from services.notify.workers import DeliveryWorker, EscalationWorker, MessageWorker, worker_id


@dataclass(frozen=True)
class NotifyParts:
    """The pieces a test or an operator's tool may need to look at (`app.state.notify`)."""

    config: NotifyConfig
    service: NotifyService
    repository: NotifyRepository
    metrics: NotifyMetrics
    deliveries: DeliveryWorker
    messages: MessageWorker
    escalations: EscalationWorker
    channels: Mapping[str, Channel]


def _channel(kind: ChannelKind, name: str, directory: Path) -> Channel:
    return FileChannel(directory / f"{name}.jsonl") if kind == "file" else LogChannel(name)


def default_channels(config: NotifyConfig, directory: Path) -> dict[str, Channel]:
    return {
        "patient": _channel(config.channels.patient, "patient", directory),
        "referrer": _channel(config.channels.referrer, "referrer", directory),
        "alert": _channel(config.channels.alert, "alert", directory),
    }


def create_app(
    settings: Settings,
    *,
    clock: Clock | None = None,
    transports: Mapping[str, ReportTransport] | None = None,
    channels: Mapping[str, Channel] | None = None,
) -> FastAPI:
    runtime = build_runtime("notify", settings, clock=clock)
    config = load_config(settings.notify_config_path())
    practices = practice_directory(
        config, base_dir=settings.config_dir, allow_dev=settings.allow_dev_secrets
    )
    repository = NotifyRepository(runtime.store.db)
    runtime.startup.append(repository.ensure_indexes)
    metrics = NotifyMetrics.create(runtime.metrics.registry)
    service = NotifyService(repository, config, Escalation(config.alerts))
    channels = channels or default_channels(config, settings.channel_dir)

    owner = worker_id()
    lease = timedelta(seconds=settings.lease_s)
    deliveries = DeliveryWorker(
        runtime,
        service,
        repository,
        practices,
        config,
        metrics,
        owner=owner,
        lease=lease,
        concurrency=settings.delivery_concurrency,
        interval_s=settings.worker_interval_s,
        transports=transports,
    )
    messages = MessageWorker(
        runtime,
        service,
        repository,
        config,
        channels,
        metrics,
        owner=owner,
        lease=lease,
        interval_s=settings.worker_interval_s,
    )
    escalations = EscalationWorker(
        runtime,
        service,
        repository,
        metrics,
        interval_s=settings.worker_interval_s,
        gauges_interval_s=settings.gauges_interval_s,
    )
    runtime.background.extend([deliveries.run, messages.run, escalations.run])

    def wake() -> None:
        deliveries.wake.set()
        messages.wake.set()

    handlers.register(runtime, service, wake)
    runtime.consumer.subscribe(topics.REFERRAL, topics.VETTING, topics.BOOKING, topics.REPORT)
    runtime.emits(
        topics.NOTIFICATION,
        ReportDelivered,
        ReportDeliveryFailed,
        ReportAcknowledged,
        AlertRaised,
        AlertEscalated,
        PatientNotified,
        ReferrerNotified,
    )

    desk = api.AcknowledgementDesk(runtime, service, metrics)
    routers = [api.router(desk, repository, service, wake), fhir_router(desk, repository)]
    if settings.inbox_enabled:
        routers.append(inbox_fhir_router(repository))
        routers.append(
            inbox_router(
                repository,
                practices,
                desk,
                runtime.clock,
                tolerance_s=settings.signature_tolerance_s,
            )
        )
    app = http_app(
        runtime,
        title="Notify service",
        description=(
            "Delivery of reports into GP systems with receipts, acknowledgement, alerts on "
            "critical, urgent and unexpected findings with escalation, and patient and "
            "referrer notices"
        ),
        routers=routers,
        principals=Principals.load(settings.config_dir / "principals.json"),
    )
    app.state.notify = NotifyParts(
        config=config,
        service=service,
        repository=repository,
        metrics=metrics,
        deliveries=deliveries,
        messages=messages,
        escalations=escalations,
        channels=channels,
    )
    return app
