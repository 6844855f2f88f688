"""OpenTelemetry tracer provider per service (exporter configurable; none by default)."""

from __future__ import annotations

import json
import os
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

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
