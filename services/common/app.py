"""The composition kit: a service's runtime (broker, store, outbox, consumer) and its HTTP app.

Each service's `main.create_app(settings)` builds a Runtime, registers its handlers on
`runtime.consumer`, adds its API routers and calls `http_app(...)`. The HTTP app serves
`/healthz` (liveness: the process answers, no dependency checks), `/readyz` (broker and
store reachable, not draining), `/metrics`, and the service's own API with OpenAPI docs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar, Union

from fastapi import APIRouter, FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from faststream.kafka import KafkaBroker
from opentelemetry import propagate
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.trace import SpanKind
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from pathway_schemas.base import PathwayEvent
from services.common.auth import Principals
from services.common.clock import Clock, clock_from_settings
from services.common.errors import PathwayError
from services.common.jobs import every
from services.common.messaging import OUTAGE_ERRORS, Consumer, Outbox, Publisher, make_broker
from services.common.metrics import KitMetrics
from services.common.settings import ServiceSettings
from services.common.store import CommandCounter, Outcome, Store, Tx, make_client
from services.common.tracing import tracer_provider

log = logging.getLogger("pathway.app")
T = TypeVar("T")

Hook = Callable[[], Awaitable[None]]


@dataclass
class Runtime:
    service: str
    settings: ServiceSettings
    clock: Clock
    metrics: KitMetrics
    tracer_provider: TracerProvider
    broker: KafkaBroker
    publisher: Publisher
    store: Store
    outbox: Outbox
    consumer: Consumer
    startup: list[Hook] = field(default_factory=list)
    background: list[Callable[[asyncio.Event], Coroutine[Any, Any, None]]] = field(
        default_factory=list
    )
    draining: bool = False

    async def commit(
        self, work: Callable[[Tx], Awaitable[T]], *, cause_id: str | None = None
    ) -> Outcome[T]:
        """Run a unit of work (state and outbox in one transaction), then publish its events."""
        outcome = await self.store.transact(work, cause_id=cause_id, now=self.clock.now())
        await self.outbox.flush(outcome)
        return outcome

    def emits(self, topic: str, *events: type[PathwayEvent]) -> None:
        """Declare what this service publishes on a topic, for its AsyncAPI document.

        Publishing itself always goes through the outbox (`tx.emit`); this declaration only
        documents the channel and its message schemas.
        """
        payload: Any = events[0] if len(events) == 1 else Union[events]  # noqa: UP007
        self.broker.publisher(
            topic,
            title=f"{self.service}:{topic}:publish",
            schema=payload,
            description="; ".join(e.event_type for e in events),
        )

    def config_path(self, name: str) -> Path:
        return self.settings.config_dir / name


def build_runtime(
    service: str,
    settings: ServiceSettings,
    *,
    clock: Clock | None = None,
    span_processors: list[SpanProcessor] | None = None,
) -> Runtime:
    metrics = KitMetrics.create(service)
    provider = tracer_provider(service, settings.otel, span_processors)
    broker = make_broker(service, settings.kafka, metrics, provider)
    publisher = Publisher(broker, service, metrics)
    commands = CommandCounter(service, metrics.registry)
    store = Store(
        make_client(settings.mongo, commands=commands),
        settings.database_name(service),
        service,
        processed_retention=timedelta(days=settings.mongo.processed_retention_days),
    )
    consumer = Consumer(
        service=service,
        group=settings.group(service),
        broker=broker,
        publisher=publisher,
        metrics=metrics,
        retry=settings.retry,
        kafka=settings.kafka,
    )
    return Runtime(
        service=service,
        settings=settings,
        clock=clock or clock_from_settings(settings.clock.mode, settings.clock.file),
        metrics=metrics,
        tracer_provider=provider,
        broker=broker,
        publisher=publisher,
        store=store,
        outbox=Outbox(store, publisher, metrics, service),
        consumer=consumer,
    )


async def _start_broker(runtime: Runtime, attempts: int = 30) -> None:
    for attempt in range(1, attempts + 1):
        try:
            await runtime.broker.start()
            return
        except OUTAGE_ERRORS:
            if attempt == attempts:
                raise RuntimeError(
                    f"Kafka at {runtime.settings.kafka.bootstrap_servers} did not answer: is the broker running?"
                ) from None
            await asyncio.sleep(min(2.0, 0.2 * attempt))


def http_app(
    runtime: Runtime,
    *,
    title: str,
    description: str,
    routers: Sequence[APIRouter] = (),
    principals: Principals | None = None,
    on_invalid_request: Callable[[Request], None] | None = None,
) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stopping = asyncio.Event()
        runtime.consumer.stopping = stopping
        await runtime.store.ensure_kit_indexes()
        for hook in runtime.startup:
            await hook()
        await _start_broker(runtime)
        relay = every(runtime.settings.outbox_relay_interval_s, runtime.outbox.step, "outbox relay")
        tasks = [asyncio.create_task(relay(stopping))]
        tasks += [asyncio.create_task(job(stopping)) for job in runtime.background]
        log.info("started")
        try:
            yield
        finally:
            runtime.draining = True
            stopping.set()
            # broker.stop() lets in-flight handlers finish within the graceful timeout;
            # nothing unfinished is committed (NACK_ON_ERROR, commit after handling).
            await runtime.broker.stop()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(*OUTAGE_ERRORS):
                # Else the relay publishes them again after a restart (harmless repeats).
                await runtime.outbox.sweep()
            await runtime.store.client.close()
            runtime.tracer_provider.shutdown()
            log.info("stopped")

    app = FastAPI(title=title, description=description, version="1.0.0", lifespan=lifespan)
    app.state.runtime = runtime
    app.state.service = runtime.service
    app.state.kit_metrics = runtime.metrics
    app.state.principals = principals or Principals([])

    tracer = runtime.tracer_provider.get_tracer("pathway.http")

    @app.middleware("http")
    async def trace_request(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        # A server span per call, continuing the caller's trace (W3C headers), so the events
        # an API call causes carry its trace onwards through Kafka.
        if request.url.path in {"/healthz", "/readyz", "/metrics"}:
            return await call_next(request)
        parent = propagate.extract(dict(request.headers))
        with tracer.start_as_current_span(
            f"HTTP {request.method}", context=parent, kind=SpanKind.SERVER
        ) as span:
            response = await call_next(request)
            route = request.scope.get("route")
            # The route template only: paths and queries are never put in spans.
            span.set_attribute("http.route", getattr(route, "path", "unmatched"))
            span.set_attribute("http.request.method", request.method)
            span.set_attribute("http.response.status_code", response.status_code)
            span.set_attribute("service.component", runtime.service)
            return response

    @app.exception_handler(PathwayError)
    async def pathway_error(_: Request, error: PathwayError) -> JSONResponse:
        return JSONResponse(
            status_code=error.http_status,
            content={"detail": error.message, "errors": [e.model_dump() for e in error.errors]},
        )

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        if on_invalid_request is not None:
            on_invalid_request(request)
        errors = [
            {
                "field": _field(e.get("loc", ())),
                "message": str(e.get("msg", "")).removeprefix("Value error, "),
            }
            for e in error.errors()
        ]
        # The input is not echoed: it may hold an NHS number, and the caller has it already.
        return JSONResponse(
            status_code=422, content={"detail": "the request has invalid fields", "errors": errors}
        )

    async def dependency_down(_: Request, error: Exception) -> JSONResponse:
        return JSONResponse(
            status_code=503,
            headers={"Retry-After": "5"},
            content={
                "detail": f"a dependency is unavailable ({type(error).__name__}); retry shortly",
                "errors": [],
            },
        )

    for outage in OUTAGE_ERRORS:
        if issubclass(outage, Exception):
            app.add_exception_handler(outage, dependency_down)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> Response:
        if error.status_code == 405:
            # Starlette names only the first route on a path; list every method it serves.
            allowed = {
                method
                for route in app.router.routes
                if route.matches(request.scope)[0] is not Match.NONE
                for method in getattr(route, "methods", None) or ()
            }
            error.headers = {**(error.headers or {}), "Allow": ", ".join(sorted(allowed))}
        return await http_exception_handler(request, error)

    @app.get("/healthz", tags=["operations"], summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "service": runtime.service}

    @app.get(
        "/readyz",
        tags=["operations"],
        summary="Readiness: broker and store reachable, not draining",
    )
    async def readyz() -> Response:
        checks: dict[str, Any] = {"draining": runtime.draining}
        try:
            await asyncio.wait_for(runtime.store.ping(), timeout=2.0)
            checks["store"] = "ok"
        except Exception as error:
            checks["store"] = type(error).__name__
        try:
            checks["broker"] = "ok" if await runtime.broker.ping(timeout=2.0) else "unreachable"
        except Exception as error:
            checks["broker"] = type(error).__name__
        ready = checks["store"] == "ok" and checks["broker"] == "ok" and not runtime.draining
        return JSONResponse(status_code=200 if ready else 503, content={"ready": ready, **checks})

    @app.get(
        "/metrics",
        tags=["operations"],
        summary="Prometheus metrics",
        response_class=PlainTextResponse,
    )
    async def metrics() -> Response:
        return PlainTextResponse(
            generate_latest(runtime.metrics.registry), media_type=CONTENT_TYPE_LATEST
        )

    for router in routers:
        app.include_router(router)
    _document_invalid_input(app)
    return app


# What `invalid_request` answers with a 422; FastAPI documents its own body (`detail` as a
# list of errors) under this name for every route with parameters, so the kit's replaces it.
INVALID_INPUT_SCHEMA: dict[str, Any] = {
    "title": "HTTPValidationError",
    "description": "Invalid input: `errors` names each bad field (the input is not echoed)",
    "type": "object",
    "required": ["detail", "errors"],
    "properties": {
        "detail": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["field", "message"],
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
}


def _document_invalid_input(app: FastAPI) -> None:
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = generate()
            schemas = document.get("components", {}).get("schemas", {})
            if "HTTPValidationError" in schemas:
                schemas["HTTPValidationError"] = INVALID_INPUT_SCHEMA
                schemas.pop("ValidationError", None)
        return app.openapi_schema or generate()

    app.openapi = openapi  # type: ignore[method-assign]


def _field(location: object) -> str:
    """`body.nhs_number` → `nhs_number`; header, query and path fields keep their place."""
    parts = [str(p) for p in location] if isinstance(location, (list, tuple)) else [str(location)]
    if not parts:
        return "(request)"
    if parts[0] == "body":
        return ".".join(parts[1:]) or "(body)"
    return f"{parts[0]}:{'.'.join(parts[1:])}" if len(parts) > 1 else parts[0]
