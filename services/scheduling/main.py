"""Composition root of the scheduling service.

The provider registry lives in the service's database, seeded at start from
`config/providers.json` (a file entry that changed since the last seed overwrites the
stored one; providers added through the admin API are kept). The service consumes the
inbound topic of every provider in the registry at start: a provider added through the
API is offered and booked at once, but its inbound events are read only after a restart.
"""

from __future__ import annotations

from fastapi import FastAPI

from pathway_schemas import topics
from pathway_schemas.events import FAMILIES
from services.common.app import build_runtime, http_app
from services.common.auth import Principals
from services.common.clock import Clock
from services.scheduling import handlers
from services.scheduling.api import bookings_router, providers_router
from services.scheduling.jobs import deadline_job
from services.scheduling.metrics import SchedulingMetrics
from services.scheduling.registry import load_registry_file
from services.scheduling.repository import BookingRepository
from services.scheduling.service import Scheduler
from services.scheduling.settings import Settings


def create_app(settings: Settings, *, clock: Clock | None = None) -> FastAPI:
    runtime = build_runtime("scheduling", settings, clock=clock)
    # Read at start so that a bad file fails loudly before anything runs.
    seed = load_registry_file(runtime.config_path(settings.providers_file))
    principals = Principals.load(runtime.config_path(settings.principals_file))
    repository = BookingRepository(runtime.store.db)
    scheduler = Scheduler(
        commit=runtime.commit,
        clock=runtime.clock,
        policy=settings.policy,
        repository=repository,
        metrics=SchedulingMetrics(runtime.metrics.registry),
        attempts=settings.booking_attempts,
        tracer=runtime.tracer_provider.get_tracer("pathway.scheduling.jobs"),
    )
    handlers.register(runtime, scheduler)

    file_codes = {p.ods for p in seed}
    runtime.consumer.subscribe(
        topics.VETTING, topics.REFERRAL, *(topics.provider_inbound(c) for c in sorted(file_codes))
    )
    runtime.emits(topics.BOOKING, *FAMILIES[topics.BOOKING])
    for code in sorted(file_codes):
        runtime.emits(topics.provider_outbound(code), *FAMILIES["provider.outbound"])

    async def start() -> None:
        await repository.ensure_indexes()
        await repository.seed(seed, runtime.clock.now())
        # Providers added through the admin API (not in the file) are known only from the
        # database, which is reachable only now: their inbound topics get a second subscriber
        # in the same consumer group, before the broker starts.
        added = sorted({p.ods for p in await repository.all_providers()} - file_codes)
        if added:
            runtime.consumer.subscribe(*(topics.provider_inbound(c) for c in added))

    runtime.startup.append(start)
    runtime.background.append(
        deadline_job(
            scheduler,
            interval_s=settings.deadline_check_interval_s,
            at_risk_every_s=settings.at_risk_refresh_s,
        )
    )
    return http_app(
        runtime,
        title="Scheduling service",
        description="Providers and capacity, appointment offers, choose and book, did-not-attend, walk-in, wait clocks",
        routers=[bookings_router(scheduler), providers_router(repository, runtime.clock)],
        principals=principals,
    )
