"""A clinician's decision, made later over HTTP, continues the trace of the referral it decides."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from pathway_schemas import topics
from pathway_schemas.base import PathwayEvent
from pathway_schemas.envelope import to_record
from pathway_schemas.events import VettingAccepted, VettingQueried, VettingQueued, VettingReturned
from services.common.clock import FixedClock
from services.vetting.main import create_app
from services.vetting.settings import Settings
from tests.harness import TopicReader, running_service, send_records, trace_hex
from tests.helpers import wait_until
from tests.unit.vetting.builders import T0, amended, submitted

CLINICIAN = {"X-API-Key": "dev-vetting-clinician"}
ACCEPT = {"protocol": "CT chest with contrast", "justified_by": "RAD0001"}
# The practice system's trace of each submission, and of the amendment, as sent on the records.
ACCEPTED_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
RETURNED_TRACE = "0af7651916cd43dd8448eb211c80319c"
QUERIED_TRACE = "5d8e2b1c9f0a4e6b8c7d3a2f1e0b9c8d"
AMENDMENT_TRACE = "7e1c4a9b2d3f4e5a8b6c0d1e2f3a4b5c"
# The clinician's own client trace on the accept call.
CLIENT_TRACE = "1a2b3c4d5e6f708192a3b4c5d6e7f809"


def traceparent(trace_id: str) -> dict[str, str]:
    return {"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}


async def send_traced(kafka: str, *sent: tuple[PathwayEvent, str]) -> None:
    """Publish referral events as a practice system would, each in its own trace."""
    await send_records(
        kafka,
        [
            to_record(event, topic=topics.REFERRAL, source="/tests", trace=traceparent(trace_id))
            for event, trace_id in sent
        ],
    )


async def test_http_decisions_continue_the_trace_of_the_submission_and_link_the_call(
    kafka: str, service_settings: Any
) -> None:
    clock = FixedClock(T0 + timedelta(hours=1))
    to_accept = submitted("CCHES", occurred_at=T0)
    to_return = submitted("CCHES", occurred_at=T0)
    to_query = submitted("UABDO", occurred_at=T0)

    app = create_app(service_settings(Settings, "vetting"), clock=clock)
    async with running_service(app) as svc, TopicReader(kafka, topics.VETTING) as reader:
        spans = InMemorySpanExporter()
        svc.runtime.tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
        client = svc.client
        await send_traced(
            kafka,
            (to_accept, ACCEPTED_TRACE),
            (to_return, RETURNED_TRACE),
            (to_query, QUERIED_TRACE),
        )
        await reader.wait_for(
            lambda _: len([r for r in reader.events() if isinstance(r.event, VettingQueued)]) == 3,
            what="three referrals queued",
        )

        # The clinician's client sends its own trace: the decision stays in the referral's,
        # and the call's server span (in the client's trace) is linked to it.
        accepted = await client.post(
            f"/worklist/{to_accept.referral_id}/accept",
            json=ACCEPT,
            headers={**CLINICIAN, **traceparent(CLIENT_TRACE)},
        )
        assert accepted.status_code == 200, accepted.text
        returned = await client.post(
            f"/worklist/{to_return.referral_id}/return",
            json={"reason": "insufficient_information", "advice": "Add the smoking history"},
            headers=CLINICIAN,
        )
        assert returned.status_code == 200, returned.text
        queried = await client.post(
            f"/worklist/{to_query.referral_id}/query",
            json={"question": "Any weight loss?"},
            headers=CLINICIAN,
        )
        assert queried.status_code == 200, queried.text

        # An amendment arrives in a trace of its own; the next decision keeps the referral's.
        await send_traced(kafka, (amended(to_return, occurred_at=clock.now()), AMENDMENT_TRACE))
        await reader.wait_for(
            lambda _: len(reader.trace_ids(VettingQueued, to_return.referral_id)) == 2,
            what="the amended referral queued again",
        )
        again = await client.post(
            f"/worklist/{to_return.referral_id}/accept", json=ACCEPT, headers=CLINICIAN
        )
        assert again.status_code == 200, again.text

        await reader.wait_for(
            lambda _: bool(reader.trace_ids(VettingAccepted, to_return.referral_id)),
            what="the amended referral accepted",
        )
        assert reader.trace_ids(VettingAccepted, to_accept.referral_id) == [ACCEPTED_TRACE]
        assert reader.trace_ids(VettingReturned, to_return.referral_id) == [RETURNED_TRACE]
        assert reader.trace_ids(VettingQueried, to_query.referral_id) == [QUERIED_TRACE]
        assert reader.trace_ids(VettingQueued, to_return.referral_id) == [
            RETURNED_TRACE,
            AMENDMENT_TRACE,
        ]
        assert reader.trace_ids(VettingAccepted, to_return.referral_id) == [RETURNED_TRACE]

        # Spans are exported as they end: the four decisions' spans and their calls' spans.
        def decision_spans() -> list[ReadableSpan]:
            return [s for s in spans.get_finished_spans() if s.name == "vetting decision"]

        await wait_until(lambda: len(decision_spans()) == 4, message="four decision spans")
        by_outcome = {
            (trace_hex(s), (s.attributes or {}).get("vetting.outcome")) for s in decision_spans()
        }
        assert by_outcome == {
            (ACCEPTED_TRACE, "accepted"),
            (RETURNED_TRACE, "returned"),
            (QUERIED_TRACE, "queried"),
            (RETURNED_TRACE, "accepted"),
        }
        [first] = [s for s in decision_spans() if trace_hex(s) == ACCEPTED_TRACE]
        [link] = first.links
        servers = {
            s.context.span_id: s
            for s in spans.get_finished_spans()
            if s.name == "HTTP POST" and s.context is not None
        }
        call = servers[link.context.span_id]
        assert trace_hex(call) == CLIENT_TRACE
        assert (call.attributes or {})["http.route"] == "/worklist/{referral_id}/accept"
        # No patient identifier in any span of the service.
        assert all(
            to_accept.nhs_number not in str(dict(s.attributes or {}))
            for s in spans.get_finished_spans()
        )
