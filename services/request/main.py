"""Composition root of the request service (Ordercomms)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from services.common.app import build_runtime, http_app
from services.common.auth import Principals
from services.common.clock import Clock
from services.common.messaging import OUTAGE_ERRORS
from services.request import handlers
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
    app = http_app(
        runtime,
        title="Request service (Ordercomms)",
        description=DESCRIPTION,
        routers=[build_router(referrals)],
        principals=principals,
    )

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        errors = [
            {
                "field": _field(e.get("loc", ())),
                "message": str(e.get("msg", "")).removeprefix("Value error, "),
            }
            for e in error.errors()
        ]
        if request.method == "POST" and request.url.path == "/referrals":
            metrics.rejected("api", "schema")
        # The input is not echoed: it may hold an NHS number, and the caller has it already.
        return JSONResponse(
            status_code=422, content={"detail": "the request has invalid fields", "errors": errors}
        )

    async def store_or_broker_down(_: Request, error: Exception) -> JSONResponse:
        return JSONResponse(
            status_code=503,
            headers={"Retry-After": "5"},
            content={
                "detail": f"a dependency is unavailable ({type(error).__name__}); retry shortly",
                "errors": [],
            },
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> Response:
        if error.status_code == 405:
            # Starlette names only the first route on the path; GET and POST /referrals are two.
            allowed = {
                method
                for route in app.router.routes
                if route.matches(request.scope)[0] is not Match.NONE
                for method in getattr(route, "methods", None) or ()
            }
            error.headers = {**(error.headers or {}), "Allow": ", ".join(sorted(allowed))}
        return await http_exception_handler(request, error)

    for outage in OUTAGE_ERRORS:
        if issubclass(outage, Exception):
            app.add_exception_handler(outage, store_or_broker_down)
    return app


def _field(location: object) -> str:
    """`body.nhs_number` → `nhs_number`; header, query and path fields keep their place."""
    parts = [str(p) for p in location] if isinstance(location, (list, tuple)) else [str(location)]
    if not parts:
        return "(request)"
    if parts[0] == "body":
        return ".".join(parts[1:]) or "(body)"
    return f"{parts[0]}:{'.'.join(parts[1:])}" if len(parts) > 1 else parts[0]
