"""Composition root of the vetting service."""

from __future__ import annotations

from fastapi import FastAPI

from pathway_schemas import topics
from services.common.app import build_runtime, http_app
from services.common.clock import Clock
from services.vetting import handlers
from services.vetting.repository import WorklistRepository
from services.vetting.settings import Settings


def create_app(settings: Settings, *, clock: Clock | None = None) -> FastAPI:
    runtime = build_runtime("vetting", settings, clock=clock)
    repository = WorklistRepository(runtime.store.db)
    runtime.startup.append(repository.ensure_indexes)
    handlers.register(runtime, repository)
    runtime.consumer.subscribe(topics.REFERRAL)
    return http_app(runtime, title="Vetting service", description="Justification worklist: accept, return, query")
