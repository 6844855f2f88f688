"""OpenTelemetry tracer provider per service (exporter configurable; none by default)."""

from __future__ import annotations

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

from services.common.settings import OtelSettings


def tracer_provider(
    service: str, settings: OtelSettings, extra_processors: list[SpanProcessor] | None = None
) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": f"imaging-{service}"}))
    if settings.exporter == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
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
