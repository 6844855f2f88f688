"""OpenTelemetry tracer provider per service (exporter configurable; none by default), and
traces kept with queued work so that background jobs continue them."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import propagate
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.trace import Link, Span, SpanKind, Tracer, get_current_span
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from services.common.settings import OtelSettings


def _plain(value: Any) -> Any:
    # FastStream records the Kafka message key as bytes, which the SDK's own JSON refuses.
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def span_line(span: ReadableSpan) -> str:
    """One finished span as one JSON line, so that a service's output stays a JSON line log."""
    context = span.get_span_context()
    entry = {
        "span": span.name,
        "service": span.resource.attributes.get("service.name"),
        "trace_id": format(context.trace_id, "032x") if context else None,
        "span_id": format(context.span_id, "016x") if context else None,
        "parent_id": format(span.parent.span_id, "016x") if span.parent else None,
        "kind": span.kind.name,
        "start_time": span.start_time,
        "end_time": span.end_time,
        "status": span.status.status_code.name,
        "attributes": {k: _plain(v) for k, v in (span.attributes or {}).items()},
        "events": [
            {"name": e.name, "attributes": {k: _plain(v) for k, v in (e.attributes or {}).items()}}
            for e in span.events
        ],
    }
    return json.dumps(entry) + os.linesep


def tracer_provider(
    service: str, settings: OtelSettings, extra_processors: list[SpanProcessor] | None = None
) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": f"imaging-{service}"}))
    if settings.exporter == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter(formatter=span_line)))
    elif settings.exporter == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found]
                OTLPSpanExporter,
            )
        except ImportError as error:  # pragma: no cover - depends on the deployment image
            raise RuntimeError(
                "OTEL exporter 'otlp' needs opentelemetry-exporter-otlp-proto-http installed"
            ) from error
        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.endpoint))
        )
    for processor in extra_processors or []:
        provider.add_span_processor(processor)
    return provider


_TRACE_CONTEXT = TraceContextTextMapPropagator()


def current_trace() -> dict[str, str]:
    """The W3C trace context of the current span, to keep with work that is done later.

    A job queued by a unit of work (a delivery, a deadline) stores it, so that the worker
    doing the job continues the trace of the event that caused it (`continued_trace`).
    Empty outside any span. Only `traceparent` and `tracestate`: never the caller's W3C
    baggage, which is free text a caller could fill with anything (a patient's details).
    """
    carrier: dict[str, str] = {}
    _TRACE_CONTEXT.inject(carrier)
    return carrier


@contextmanager
def continued_trace(
    tracer: Tracer,
    name: str,
    carrier: Mapping[str, str] | None,
    *,
    attributes: Mapping[str, str | int] | None = None,
) -> Iterator[Span]:
    """A span for work done later, in the trace kept by `current_trace` when it was queued.

    Events emitted inside it (`tx.emit`) carry that trace on. The span current when the work
    starts (an HTTP call acting on the job, say) is linked rather than lost. Without a kept
    trace the span continues whatever is current (a new trace in a background job).
    """
    kept = propagate.extract(dict(carrier or {}))
    parent = kept if get_current_span(kept).get_span_context().is_valid else None
    here = get_current_span().get_span_context()
    links = [Link(here)] if parent is not None and here.is_valid else []
    with tracer.start_as_current_span(
        name, context=parent, kind=SpanKind.INTERNAL, attributes=attributes, links=links
    ) as span:
        yield span
