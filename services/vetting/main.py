"""Composition root of the vetting service."""

from __future__ import annotations

from fastapi import FastAPI

from pathway_schemas import topics
from pathway_schemas.events import FAMILIES
from services.common.app import build_runtime, http_app
from services.common.auth import Principals
from services.common.clock import Clock
from services.vetting import handlers
from services.vetting.api import worklist_router
from services.vetting.metrics import VettingMetrics, worklist_gauges_job
from services.vetting.repository import WorklistRepository
from services.vetting.service import load_policy
from services.vetting.settings import Settings


def create_app(settings: Settings, *, clock: Clock | None = None) -> FastAPI:
    runtime = build_runtime("vetting", settings, clock=clock)
    policy = load_policy(settings.config_dir / settings.policy_file)
    principals = Principals.load(settings.config_dir / settings.principals_file)
    repository = WorklistRepository(runtime.store.db)
    metrics = VettingMetrics.create(runtime.metrics.registry)
    runtime.startup.append(repository.ensure_indexes)
    handlers.register(runtime, repository, policy, metrics)
    runtime.consumer.subscribe(topics.REFERRAL)
    runtime.emits(topics.VETTING, *FAMILIES[topics.VETTING])
    runtime.background.append(
        worklist_gauges_job(metrics, repository, runtime.clock, settings.worklist_gauges_interval_s)
    )
    return http_app(
        runtime,
        title="Vetting service",
        description="Justification worklist (IR(ME)R): open access for plain X-ray, accept, return, query",
        routers=[worklist_router(runtime, repository, policy, metrics)],
        principals=principals,
    )
