"""Composition root of the scheduling service.

The provider registry lives in the service's database, seeded at start from
`config/providers.json` (a file entry that changed since the last seed overwrites the
stored one; providers added through the admin API are kept). A provider added through the
API is offered and booked at once, and plugs in without a restart: the service reads every
provider's inbound topic by pattern, so a new one is read as soon as it exists (within
`kafka.metadata_max_age_ms`). With `create_provider_topics` on (embedded stack, development)
the service creates the new provider's two topics itself; in production the operator makes
them (docs/deploy.md). Events on the inbound topic of a provider outside the registry are
refused: no referral is ever assigned to such a provider, so they are Denied.
"""

from __future__ import annotations

from fastapi import FastAPI

from pathway_schemas import topics
from pathway_schemas.events import FAMILIES
from services.common.app import build_runtime, http_app
from services.common.auth import Principals
from services.common.clock import Clock
from services.common.messaging import Consumer
from services.scheduling import handlers
from services.scheduling.api import bookings_router, providers_router
from services.scheduling.jobs import deadline_job
from services.scheduling.metrics import SchedulingMetrics
from services.scheduling.provider_topics import ProviderTopics
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
    provider_topics = ProviderTopics(
        runtime.broker,
        create=settings.create_provider_topics,
        partitions=settings.provider_topic_partitions,
        replicas=settings.provider_topic_replicas,
    )

    runtime.consumer.subscribe(topics.VETTING, topics.REFERRAL, pattern=Consumer.PROVIDER_INBOUND)
    runtime.emits(topics.BOOKING, *FAMILIES[topics.BOOKING])
    for code in sorted({p.ods for p in seed}):
        runtime.emits(topics.provider_outbound(code), *FAMILIES["provider.outbound"])

    async def start() -> None:
        await repository.ensure_indexes()
        await repository.seed(seed, runtime.clock.now())

    async def registry_codes() -> list[str]:
        return [p.ods for p in await repository.all_providers()]

    runtime.startup.append(start)
    runtime.background.append(provider_topics.at_start(registry_codes))
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
        routers=[
            bookings_router(scheduler),
            providers_router(repository, runtime.clock, provider_topics),
        ],
        principals=principals,
    )
