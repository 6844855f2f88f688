"""Composition root of the request service (Ordercomms)."""

from __future__ import annotations

from fastapi import FastAPI, Request

from pathway_schemas import topics
from pathway_schemas.events import FAMILIES
from services.common.app import build_runtime, http_app
from services.common.auth import Principals
from services.common.clock import Clock
from services.request import fhir, handlers
from services.request.api import build_router
from services.request.commands import Referrals
from services.request.guidance import GuidanceRules
from services.request.metrics import RequestMetrics
from services.request.registry import PracticeRegistry
from services.request.repository import ReferralRepository
from services.request.settings import Settings

DESCRIPTION = """\
Ordercomms for primary-care imaging: a practice submits a referral (with an Idempotency-Key),
gets referral guidance and any duplicate-imaging warning at once, follows its state and
timeline, answers a vetting query, amends a returned referral, or cancels before the
examination. Send `X-API-Key` (or `Authorization: Bearer`). The shipped guidance rules are
examples written by the project, not clinical advice.
"""


def create_app(settings: Settings, *, clock: Clock | None = None) -> FastAPI:
    runtime = build_runtime("request", settings, clock=clock)
    principals = Principals.load(settings.config_dir / "principals.json")
    registry = PracticeRegistry.load(settings.config_dir / settings.practices_file)
    rules = GuidanceRules.load(settings.config_dir / settings.guidance_rules_file)
    metrics = RequestMetrics.create(runtime.metrics.registry)
    repository = ReferralRepository(runtime.store.db)
    runtime.startup.append(repository.ensure_indexes)
    referrals = Referrals(
        runtime,
        repository,
        registry,
        rules,
        metrics,
        duplicate_window_days=settings.duplicate_window_days,
    )
    handlers.register(runtime, referrals, metrics)
    runtime.consumer.subscribe(*handlers.TOPICS)
    runtime.emits(topics.REFERRAL, *FAMILIES[topics.REFERRAL])
    runtime.emits(topics.REFERRAL_INTAKE_REPLIES, *FAMILIES[topics.REFERRAL_INTAKE_REPLIES])

    def count_schema_rejection(request: Request) -> None:
        if request.method == "POST" and request.url.path == "/referrals":
            metrics.rejected("api", "schema")

    return http_app(
        runtime,
        title="Request service (Ordercomms)",
        description=DESCRIPTION,
        routers=[build_router(referrals), fhir.build_router(referrals)],
        principals=principals,
        on_invalid_request=count_schema_rejection,
    )
