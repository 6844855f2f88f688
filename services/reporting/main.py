"""Composition root of the reporting service.

The service reads every provider's inbound topic by pattern, so a provider that plugs in
while it runs is read without a restart (within `kafka.metadata_max_age_ms`). Identity comes
from the topic name; an event is applied only when its referral is assigned to that provider
(`intake`), so the events of a provider outside the registry, to which scheduling never
assigns a referral, are refused as denied.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path

from fastapi import FastAPI
from pydantic import TypeAdapter

from pathway_schemas import topics
from pathway_schemas.events import FAMILIES
from pathway_schemas.values import OdsCode
from services.common.app import Runtime, build_runtime, http_app
from services.common.auth import Principals
from services.common.clock import Clock, WorkingCalendar
from services.common.jobs import every
from services.common.messaging import Consumer
from services.reporting import api, handlers
from services.reporting.commands import Reporting
from services.reporting.intake import ProviderIntake
from services.reporting.metrics import ReportingMetrics
from services.reporting.repository import ReportingRepository
from services.reporting.service import TurnaroundPolicy
from services.reporting.settings import Settings, TurnaroundSettings

log = logging.getLogger("pathway.reporting")


def load_providers(path: Path) -> tuple[str, ...]:
    """The ODS codes of the configured providers (each has its own inbound topic)."""
    if not path.exists():
        raise FileNotFoundError(
            f"providers file {path} is missing: copy config/providers.json or set REPORTING_CONFIG_DIR"
        )
    raw = json.loads(path.read_text("utf-8"))
    codes = TypeAdapter(list[OdsCode]).validate_python([p["ods"] for p in raw["providers"]])
    return tuple(dict.fromkeys(codes))


def turnaround_policy(settings: TurnaroundSettings) -> TurnaroundPolicy:
    return TurnaroundPolicy(
        calendar=WorkingCalendar(settings.nation),
        urgent=timedelta(minutes=settings.urgent_minutes),
        day_ends_at=settings.working_day_ends_at,
        mdt_working_days=settings.mdt_working_days,
    )


def overdue_refresher(
    runtime: Runtime,
    repository: ReportingRepository,
    metrics: ReportingMetrics,
    providers: tuple[str, ...],
) -> Callable[[], Awaitable[None]]:
    async def refresh() -> None:
        now = runtime.clock.now()
        # The configured providers (shown at zero) and any added at run time with referrals.
        for provider in sorted(set(providers) | await repository.assigned_providers()):
            metrics.overdue.labels(provider).set(await repository.count_overdue(provider, now))

    return refresh


def create_app(settings: Settings, *, clock: Clock | None = None) -> FastAPI:
    runtime = build_runtime("reporting", settings, clock=clock)
    providers = load_providers(runtime.config_path(settings.providers_file))
    principals = Principals.load(runtime.config_path("principals.json"))
    repository = ReportingRepository(runtime.store.db)
    reporting = Reporting(repository, turnaround_policy(settings.turnaround))
    metrics = ReportingMetrics.create(runtime.metrics.registry)
    intake = ProviderIntake(
        runtime,
        repository,
        reporting,
        metrics,
        timedelta(seconds=settings.park_timeout_s),
        claim_lease=timedelta(seconds=settings.park_claim_lease_s),
    )

    runtime.startup.append(repository.ensure_indexes)
    handlers.register(runtime, reporting, intake)
    runtime.consumer.subscribe(
        topics.REFERRAL, topics.VETTING, topics.BOOKING, pattern=Consumer.PROVIDER_INBOUND
    )
    runtime.emits(topics.EXAMINATION, *FAMILIES[topics.EXAMINATION])
    runtime.emits(topics.REPORT, *FAMILIES[topics.REPORT])
    runtime.background.append(
        every(settings.park_sweep_interval_s, intake.sweep, "parked-event sweep")
    )
    runtime.background.append(
        every(
            settings.overdue_refresh_interval_s,
            overdue_refresher(runtime, repository, metrics, providers),
            "overdue refresh",
        )
    )
    routes = api.router(
        runtime,
        repository,
        reporting,
        intake,
        providers,
        priors_limit=settings.priors_limit,
        worklist_limit=settings.worklist_limit,
    )
    return http_app(
        runtime,
        title="Reporting service",
        description="Examinations from providers, turnaround deadlines, reporting worklists with priors, reports",
        routers=[routes],
        principals=principals,
    )
