"""A practice's later command on a referral (answer, amend, cancel) continues the trace of the
referral's submission, whichever channel submitted it; the command's HTTP call is linked."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import nhs_number
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from pathway_schemas import topics
from pathway_schemas.envelope import to_record
from pathway_schemas.events import (
    ReferralAmended,
    ReferralCancelled,
    ReferralQueryAnswered,
    ReferralRequested,
    ReferralSubmitted,
    VettingQueried,
    VettingReturned,
)
from services.common.clock import FixedClock
from services.request.main import create_app
from services.request.repository import REVISION, TRACE
from services.request.settings import Settings
from tests.harness import TopicReader, publish, running_service, send_records, trace_hex
from tests.helpers import wait_until
from tests.unit.interop.samples import service_request

pytestmark = pytest.mark.integration

PRACTICE_A = {"X-API-Key": "dev-practice-a81001"}
START = datetime(2026, 3, 27, 9, 0, tzinfo=UTC)
# The practice system's trace of each submission.
QUERIED_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
RETURNED_TRACE = "0af7651916cd43dd8448eb211c80319c"
CANCELLED_TRACE = "5d8e2b1c9f0a4e6b8c7d3a2f1e0b9c8d"
KEPT_NONE_TRACE = "7e1c4a9b2d3f4e5a8b6c0d1e2f3a4b5c"
INTAKE_TRACE = "2b3c4d5e6f708192a3b4c5d6e7f8091a"
FHIR_TRACE = "3c4d5e6f708192a3b4c5d6e7f8091a2b"
# The practice system's own trace on its later calls.
CLIENT_TRACE = "1a2b3c4d5e6f708192a3b4c5d6e7f809"


def traceparent(trace_id: str) -> dict[str, str]:
    return {"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}


def synthetic_nhs_number() -> str:
    return str(nhs_number.generate(for_region=nhs_number.REGION_SYNTHETIC)[0])


def referral(nhs: str, examination_code: str) -> dict[str, Any]:
    return {
        "nhs_number": nhs,
        "referrer_id": "G1234567",
        "examination_code": examination_code,
        "clinical_question": "Cough for six weeks in a smoker",
        "priority": "routine",
    }


def fhir_referral(nhs: str) -> dict[str, Any]:
    resource = service_request(
        identifier=[{"system": "https://gp-system.example/Id/order", "value": "GP-TRACE-0001"}]
    )
    patient = next(c for c in resource["contained"] if c["resourceType"] == "Patient")
    patient["identifier"][0]["value"] = nhs
    return resource


async def submit(client: httpx.AsyncClient, key: str, body: dict[str, Any], trace: str) -> str:
    response = await client.post(
        "/referrals",
        json=body,
        headers={
            **PRACTICE_A,
            **traceparent(trace),
            "tracestate": "gp=referral",
            # A caller's baggage is never kept with the referral.
            "baggage": "client=gp-system",
            "Idempotency-Key": key,
        },
    )
    assert response.status_code == 201, response.text
    return str(response.json()["referral_id"])


async def send_intake(kafka: str, event: ReferralRequested, trace: str) -> None:
    """Publish a referral request as a practice system would, in its own trace."""
    record = to_record(
        event, topic=topics.REFERRAL_INTAKE, source="/tests", trace=traceparent(trace)
    )
    await send_records(kafka, [record])


async def timeline_traces(client: httpx.AsyncClient, referral_id: str) -> dict[str, str | None]:
    response = await client.get(f"/referrals/{referral_id}", headers=PRACTICE_A)
    assert response.status_code == 200, response.text
    return {e["event_type"]: e["trace_id"] for e in response.json()["timeline"]}


async def state_is(client: httpx.AsyncClient, referral_id: str, state: str) -> Any:
    response = await client.get(f"/referrals/{referral_id}", headers=PRACTICE_A)
    return response.json()["state"] == state


async def test_commands_continue_the_submissions_trace_and_link_the_call(
    kafka: str, service_settings: Any
) -> None:
    clock = FixedClock(START)
    app = create_app(service_settings(Settings, "request"), clock=clock)
    patient = synthetic_nhs_number()
    intake_patient = synthetic_nhs_number()
    fhir_patient = synthetic_nhs_number()
    patients = (patient, intake_patient, fhir_patient)
    async with running_service(app) as svc, TopicReader(kafka, topics.REFERRAL) as reader:
        spans = InMemorySpanExporter()
        svc.runtime.tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
        c = svc.client
        referrals = svc.runtime.store.db["referrals"]

        queried = await submit(c, "trace-queried-01", referral(patient, "XCHES"), QUERIED_TRACE)
        returned = await submit(c, "trace-returned-01", referral(patient, "XHANL"), RETURNED_TRACE)
        cancelled = await submit(
            c, "trace-cancelled-01", referral(patient, "XKNEL"), CANCELLED_TRACE
        )
        kept_none = await submit(
            c, "trace-kept-none-01", referral(patient, "UABDO"), KEPT_NONE_TRACE
        )
        fhir = await c.post(
            "/fhir/ServiceRequest",
            json=fhir_referral(fhir_patient),
            headers={**PRACTICE_A, **traceparent(FHIR_TRACE)},
        )
        assert fhir.status_code == 201, fhir.text
        [fhir_id] = [i["value"] for i in fhir.json()["identifier"] if i["value"].startswith("ref_")]
        intake = ReferralRequested(
            request_id="practice-system:trace-0001",
            occurred_at=START,
            nhs_number=intake_patient,
            practice_ods="A81001",
            referrer_id="G1234567",
            examination_code="XCHES",
            clinical_question="Breathlessness on exertion",
            priority="urgent",
        )
        await send_intake(kafka, intake, INTAKE_TRACE)
        await reader.wait_for(
            lambda _: any(
                isinstance(r.event, ReferralSubmitted) and r.event.channel == "kafka"
                for r in reader.events()
            ),
            what="the intake request submitted",
        )
        [from_intake] = [
            r.event.referral_id
            for r in reader.events()
            if isinstance(r.event, ReferralSubmitted) and r.event.channel == "kafka"
        ]

        # Only the trace headers are kept: the caller's baggage is not.
        stored = await referrals.find_one({"_id": queried})
        assert stored is not None
        assert stored[TRACE] == {
            "traceparent": stored[TRACE]["traceparent"],
            "tracestate": "gp=referral",
        }
        assert stored[TRACE]["traceparent"].split("-")[1] == QUERIED_TRACE
        # A referral recorded before traces were kept.
        await referrals.update_one(
            {"_id": kept_none}, {"$unset": {TRACE: ""}, "$inc": {REVISION: 1}}
        )

        # Vetting queries one and returns another, in traces of its own.
        await publish(
            kafka,
            [
                (
                    VettingQueried(
                        referral_id=queried,
                        occurred_at=START + timedelta(hours=1),
                        query_id="q-1",
                        question="Any previous imaging?",
                        decided_by="R1234",
                    ),
                    topics.VETTING,
                ),
                (
                    VettingReturned(
                        referral_id=returned,
                        occurred_at=START + timedelta(hours=1),
                        reason="insufficient_information",
                        advice="Please say what the hand X-ray should show",
                        decided_by="R1234",
                    ),
                    topics.VETTING,
                ),
            ],
            source="/imaging/vetting",
        )
        await wait_until(
            lambda: state_is(c, queried, "queried"), timeout=20, message="query recorded"
        )
        await wait_until(
            lambda: state_is(c, returned, "returned"), timeout=20, message="return recorded"
        )
        clock.set(START + timedelta(hours=2))

        # Each later call comes in the practice system's own trace.
        call = {**PRACTICE_A, **traceparent(CLIENT_TRACE)}
        answered = await c.post(
            f"/referrals/{queried}/answer",
            json={"query_id": "q-1", "answer": "No previous imaging", "answered_by": "G1234567"},
            headers=call,
        )
        assert answered.status_code == 200, answered.text
        amended = await c.post(
            f"/referrals/{returned}/amend",
            json={
                "clinical_question": "Swelling over the fifth metacarpal",
                "amended_by": "G1234567",
            },
            headers=call,
        )
        assert amended.status_code == 200, amended.text
        cancel = {"reason": "no_longer_needed", "cancelled_by": "G1234567"}
        for referral_id in (cancelled, kept_none, fhir_id, from_intake):
            response = await c.post(f"/referrals/{referral_id}/cancel", json=cancel, headers=call)
            assert response.status_code == 200, response.text

        await reader.wait_for(
            lambda _: (
                len([r for r in reader.events() if isinstance(r.event, ReferralCancelled)]) == 4
                and bool(reader.trace_ids(ReferralQueryAnswered, queried))
                and bool(reader.trace_ids(ReferralAmended, returned))
            ),
            what="the answer, the amendment and four cancellations",
        )
        assert reader.trace_ids(ReferralQueryAnswered, queried) == [QUERIED_TRACE]
        assert reader.trace_ids(ReferralAmended, returned) == [RETURNED_TRACE]
        assert reader.trace_ids(ReferralCancelled, cancelled) == [CANCELLED_TRACE]
        assert reader.trace_ids(ReferralCancelled, fhir_id) == [FHIR_TRACE]
        assert reader.trace_ids(ReferralCancelled, from_intake) == [INTAKE_TRACE]
        # Nothing kept: the command stays in the call's trace.
        assert reader.trace_ids(ReferralCancelled, kept_none) == [CLIENT_TRACE]

        # The timeline records the same trace for each entry.
        answer_type, amend_type = ReferralQueryAnswered.event_type, ReferralAmended.event_type
        cancel_type, submit_type = ReferralCancelled.event_type, ReferralSubmitted.event_type
        on_queried = await timeline_traces(c, queried)
        assert (on_queried[submit_type], on_queried[answer_type]) == (QUERIED_TRACE, QUERIED_TRACE)
        on_returned = await timeline_traces(c, returned)
        assert (on_returned[submit_type], on_returned[amend_type]) == (
            RETURNED_TRACE,
            RETURNED_TRACE,
        )
        for referral_id, trace in (
            (cancelled, CANCELLED_TRACE),
            (fhir_id, FHIR_TRACE),
            (from_intake, INTAKE_TRACE),
        ):
            on_timeline = await timeline_traces(c, referral_id)
            assert (on_timeline[submit_type], on_timeline[cancel_type]) == (trace, trace)
        on_kept_none = await timeline_traces(c, kept_none)
        assert on_kept_none[cancel_type] == CLIENT_TRACE

        # Spans are exported as they end: each command's span and its call's span.
        def command_spans() -> list[ReadableSpan]:
            return [s for s in spans.get_finished_spans() if s.name == "referral command"]

        def call_spans() -> dict[int, ReadableSpan]:
            return {
                s.context.span_id: s
                for s in spans.get_finished_spans()
                if s.name == "HTTP POST" and s.context is not None
            }

        # Eleven POSTs: five submissions, the answer, the amendment and four cancellations.
        await wait_until(
            lambda: len(command_spans()) == 6 and len(call_spans()) == 11,
            message="six command spans and their calls' spans",
        )
        servers = call_spans()
        linked: set[tuple[str, Any, Any]] = set()
        for span in command_spans():
            command = (span.attributes or {}).get("referral.command")
            if trace_hex(span) == CLIENT_TRACE:
                # Without a kept trace the command is a child of its call, not linked to it.
                assert command == "cancel"
                assert not span.links
                assert span.parent is not None
                assert span.parent.span_id in servers
                continue
            [link] = span.links
            call_span = servers[link.context.span_id]
            assert trace_hex(call_span) == CLIENT_TRACE
            linked.add((trace_hex(span), command, (call_span.attributes or {})["http.route"]))
        assert linked == {
            (QUERIED_TRACE, "answer", "/referrals/{referral_id}/answer"),
            (RETURNED_TRACE, "amend", "/referrals/{referral_id}/amend"),
            (CANCELLED_TRACE, "cancel", "/referrals/{referral_id}/cancel"),
            (FHIR_TRACE, "cancel", "/referrals/{referral_id}/cancel"),
            (INTAKE_TRACE, "cancel", "/referrals/{referral_id}/cancel"),
        }
        # No patient identifier in any span of the service.
        for span in spans.get_finished_spans():
            attributes = str(dict(span.attributes or {}))
            assert not any(nhs in attributes for nhs in patients), span.name
