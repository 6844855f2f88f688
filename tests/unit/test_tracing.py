"""Traces kept with queued work: a background job continues the trace that queued it."""

from __future__ import annotations

from datetime import UTC, datetime

from opentelemetry import context as otel_context
from opentelemetry import propagate
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from pathway_schemas.events import ReferralCancelled
from pathway_schemas.examples import example
from services.common.store import Tx
from services.common.tracing import continued_trace, current_trace


def provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    return tracer_provider, exporter


def trace_of(carrier: dict[str, str]) -> int:
    return int(carrier["traceparent"].split("-")[1], 16)


def test_outside_any_span_there_is_no_trace_to_keep() -> None:
    assert "traceparent" not in current_trace()


def test_a_job_continues_the_kept_trace_and_links_the_span_current_when_it_runs() -> None:
    tracer_provider, exporter = provider()
    tracer = tracer_provider.get_tracer("test")
    with tracer.start_as_current_span("consume report issued") as queuing:
        kept = current_trace()
    assert trace_of(kept) == queuing.get_span_context().trace_id

    with (
        tracer.start_as_current_span("acknowledge call") as call,
        continued_trace(tracer, "acknowledge report", kept, attributes={"job.kind": "ack"}) as job,
    ):
        # Events emitted here (`tx.emit` injects the current context) carry the kept trace.
        assert trace_of(current_trace()) == queuing.get_span_context().trace_id
    assert call.get_span_context().trace_id != queuing.get_span_context().trace_id

    [finished] = [s for s in exporter.get_finished_spans() if s.name == "acknowledge report"]
    assert finished.context is not None
    assert finished.parent is not None
    assert finished.context.span_id == job.get_span_context().span_id
    assert finished.context.trace_id == queuing.get_span_context().trace_id
    assert finished.parent.span_id == queuing.get_span_context().span_id
    assert [link.context.span_id for link in finished.links] == [call.get_span_context().span_id]
    assert dict(finished.attributes or {}) == {"job.kind": "ack"}


def test_without_a_kept_trace_a_job_continues_whatever_is_current() -> None:
    tracer_provider, exporter = provider()
    tracer = tracer_provider.get_tracer("test")
    with continued_trace(tracer, "old job", {}) as root:
        assert trace_of(current_trace()) == root.get_span_context().trace_id
    with (
        tracer.start_as_current_span("call") as call,
        continued_trace(tracer, "job", None) as child,
    ):
        assert child.get_span_context().trace_id == call.get_span_context().trace_id
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert spans["old job"].parent is None
    assert spans["job"].links == ()
    parent = spans["job"].parent
    assert parent is not None
    assert parent.span_id == call.get_span_context().span_id


def test_a_callers_baggage_is_never_kept_nor_put_on_emitted_events() -> None:
    tracer_provider, _ = provider()
    tracer = tracer_provider.get_tracer("test")
    incoming = {
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "baggage": "nhs_number=9434765919",
    }
    token = otel_context.attach(propagate.extract(incoming))
    try:
        with tracer.start_as_current_span("HTTP POST"):
            kept = current_trace()
            tx = Tx(
                session=None,  # type: ignore[arg-type]  # emit never touches the store
                db=None,  # type: ignore[arg-type]
                service="request",
                cause_id=None,
                now=datetime(2026, 11, 27, tzinfo=UTC),
            )
            tx.emit(example(ReferralCancelled))
    finally:
        otel_context.detach(token)
    assert set(kept) == {"traceparent"}
    assert trace_of(kept) == 0x4BF92F3577B34DA6A3CE929D0E0E4736
    headers = {name: value.decode() for name, value in tx.records[0].headers}
    assert "9434765919" not in "".join(headers.values())
    assert not any("baggage" in name for name in headers)
