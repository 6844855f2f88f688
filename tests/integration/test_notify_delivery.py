"""Report delivery to a real HTTP receiver that fails at first; notices to patient and referrer.

The receiver is a small practice endpoint served by uvicorn on a free port: it checks the
HMAC signature of every request, refuses the first attempts with 503, then answers with a
receipt (practice A81001), or refuses everything until told otherwise (practice B82002).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from pathway_schemas import new_referral_id, topics
from pathway_schemas.envelope import KafkaRecord, to_record
from pathway_schemas.events import (
    AlertRaised,
    AppointmentBooked,
    PatientNotified,
    ReferrerNotified,
    ReportDelivered,
    ReportDeliveryFailed,
    ReportIssued,
    VettingQueried,
    VettingReturned,
)
from services.notify import fhir, signing
from services.notify.main import create_app
from services.notify.settings import Settings
from tests.harness import TopicReader, publish, running_service, send_records
from tests.helpers import wait_until
from tests.unit.notify.builders import notify_config, referral_submitted, report_issued

pytestmark = pytest.mark.integration

OPERATOR = {"X-API-Key": "dev-operator"}
SECRETS = {"A81001": b"test-secret-a81001", "B82002": b"test-secret-b82002"}
# The W3C trace of the practice system's report and of the booking, as sent on their records.
REPORT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
BOOKING_TRACE = "0af7651916cd43dd8448eb211c80319c"


def traceparent(trace_id: str) -> dict[str, str]:
    return {"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}


def trace_id(traceparent: str | None) -> str | None:
    parts = (traceparent or "").split("-")
    return parts[1] if len(parts) == 4 else None


def traced(reader: TopicReader, kind: type[Any]) -> list[tuple[Any, str | None]]:
    """Events of a type, each with the trace id of its `traceparent` header."""
    return [
        (r.event, trace_id(r.envelope.trace.get("traceparent")))
        for r in reader.events()
        if isinstance(r.event, kind)
    ]


class PracticeEndpoint:
    """A practice system's report endpoint that fails the first `fail_first` attempts."""

    def __init__(self, ods: str, fail_first: int) -> None:
        self.ods = ods
        self.fail_first = fail_first
        self.requests: list[tuple[str, dict[str, Any], bool]] = []  # delivery id, body, signed
        self.traces: list[str | None] = []
        self.receipts: dict[str, str] = {}

    async def receive(self, request: Request) -> JSONResponse:
        body = await request.body()
        try:
            signing.verify(SECRETS[self.ods], body, dict(request.headers), time.time(), 300)
            signed = True
        except signing.SignatureError:
            signed = False
        delivery = request.headers[signing.DELIVERY_HEADER]
        self.requests.append((delivery, json.loads(body), signed))
        self.traces.append(trace_id(request.headers.get("traceparent")))
        if not signed:
            return JSONResponse({"detail": "bad signature"}, status_code=401)
        if len(self.requests) <= self.fail_first:
            return JSONResponse({"detail": "try later"}, status_code=503)
        receipt = self.receipts.setdefault(delivery, f"{self.ods}-receipt-{len(self.receipts) + 1}")
        return JSONResponse({"receipt_id": receipt}, status_code=201)


async def send(kafka: str, record: KafkaRecord) -> None:
    """Publish one record exactly as built (its id and trace headers)."""
    await send_records(kafka, [record])


def receiver(*endpoints: PracticeEndpoint) -> FastAPI:
    app = FastAPI()

    @app.get("/readyz")
    async def ready() -> dict[str, bool]:
        return {"ready": True}

    for endpoint in endpoints:
        app.add_api_route(f"/{endpoint.ods}/reports", endpoint.receive, methods=["POST"])
    return app


def of_type(reader: TopicReader, kind: type[Any]) -> list[Any]:
    return [r.event for r in reader.events() if isinstance(r.event, kind)]


def handled(metrics: Any, event_type: str) -> float:
    total = 0.0
    for metric in metrics.registry.collect():
        if metric.name != "pathway_events_handled":
            continue
        for sample in metric.samples:
            if sample.name.endswith("_total") and sample.labels["event_type"] == event_type:
                total += sample.value
    return total


async def test_delivery_retries_to_a_receipt_fails_after_the_last_attempt_and_can_be_redelivered(
    kafka: str, service_settings: Any, tmp_path: Path
) -> None:
    practice_a = PracticeEndpoint("A81001", fail_first=2)
    practice_b = PracticeEndpoint("B82002", fail_first=10_000)
    async with running_service(receiver(practice_a, practice_b)) as endpoint:
        config = notify_config(
            tmp_path / "notify.json",
            {
                "A81001": f"{endpoint.base_url}/A81001/reports",
                "B82002": f"{endpoint.base_url}/B82002/reports",
            },
            delivery={"max_attempts": 4, "initial_s": 0.05, "max_s": 0.2, "timeout_s": 5},
            messages={"max_attempts": 50, "initial_s": 0.05, "max_s": 0.2},
        )
        settings = service_settings(
            Settings,
            "notify",
            config_file=config,
            channel_dir=tmp_path / "channels",
            worker_interval_s=0.1,
            gauges_interval_s=0.1,
        )
        app = create_app(settings)
        parts = app.state.notify
        ref_a, ref_b, ref_c = new_referral_id(), new_referral_id(), new_referral_id()
        routine_a = report_issued(referral_id=ref_a, report_id="RPT-A")
        critical_b = report_issued(
            referral_id=ref_b, report_id="RPT-B", practice_ods="B82002", finding_flag="critical"
        )
        repeat_a = to_record(routine_a, topic=topics.REPORT, source="/tests")
        traced_a = to_record(
            routine_a, topic=topics.REPORT, source="/tests", trace=traceparent(REPORT_TRACE)
        )
        submitted_a = referral_submitted(ref_a)
        async with (
            running_service(app) as notify,
            TopicReader(kafka, topics.NOTIFICATION) as reader,
        ):
            # Known first, so that the delivery names the patient (topics are read side by side).
            await publish(kafka, [(submitted_a, topics.REFERRAL)])
            await wait_until(lambda: parts.repository.referral(ref_a), timeout=30)
            await send(kafka, traced_a)
            await publish(kafka, [(critical_b, topics.REPORT)])
            # The same report again: once under the same event id, once under a new one.
            await publish(kafka, [(routine_a, topics.REPORT)])
            await send(kafka, repeat_a)

            await reader.wait_for(
                lambda _: bool(
                    of_type(reader, ReportDelivered) and of_type(reader, ReportDeliveryFailed)
                ),
                what="a delivery receipt and a delivery failure",
            )
            # Every copy of the report has been consumed before counting deliveries.
            await wait_until(
                lambda: handled(notify.runtime.metrics, ReportIssued.event_type) >= 4,
                timeout=30,
                message="all ReportIssued copies handled",
            )

            delivered = of_type(reader, ReportDelivered)
            assert [(d.report_id, d.attempts, d.transport) for d in delivered] == [
                ("RPT-A", 3, "http")
            ]
            assert delivered[0].receipt_id == practice_a.receipts[practice_a.requests[0][0]]
            # Three attempts of one delivery, all signed with A's secret, all the same resource.
            assert len(practice_a.requests) == 3
            assert len({delivery for delivery, _, _ in practice_a.requests}) == 1
            assert all(signed for _, _, signed in practice_a.requests)
            resource = practice_a.requests[-1][1]
            assert resource["resourceType"] == "DiagnosticReport"
            assert resource["subject"]["identifier"]["system"] == fhir.NHS_NUMBER_SYSTEM
            assert fhir.identifiers_of(resource) == ("RPT-A", None, ref_a)
            # The worker delivered in the trace of the report: every attempt told the practice
            # system, and the receipt went on in it.
            assert practice_a.traces == [REPORT_TRACE] * 3
            assert [tid for _, tid in traced(reader, ReportDelivered)] == [REPORT_TRACE]

            failed = of_type(reader, ReportDeliveryFailed)
            assert [(f.report_id, f.attempts, f.error_class) for f in failed] == [
                ("RPT-B", 4, "HTTP503")
            ]
            assert len(practice_b.requests) == 4
            assert [a.report_id for a in of_type(reader, AlertRaised)] == ["RPT-B"]
            stored = await parts.repository.deliveries.items.find_one({"report_id": "RPT-B"})
            assert stored["state"] == "failed"

            # The failure went out on the alert channel, beside the clinical alert.
            alerts = parts.channels["alert"]
            await wait_until(
                lambda: {m["kind"] for m in alerts.read()} == {"alert", "delivery_failed"},
                message="alert channel has the finding alert and the delivery failure",
            )

            metrics = await notify.client.get("/metrics")
            assert 'pathway_delivery_attempts_total{outcome="retry"} 5.0' in metrics.text
            assert 'pathway_delivery_attempts_total{outcome="delivered"} 1.0' in metrics.text
            assert 'pathway_delivery_attempts_total{outcome="failed"} 1.0' in metrics.text
            assert 'pathway_delivery_seconds_count{transport="http"} 1.0' in metrics.text

            # An operator lists the failure, the practice endpoint recovers, the report goes again.
            listed = await notify.client.get("/deliveries?state=failed", headers=OPERATOR)
            assert [d["report_id"] for d in listed.json()] == ["RPT-B"]
            practice_b.fail_first = 0
            again = await notify.client.post(
                f"/deliveries/{stored['_id']}/redeliver", headers=OPERATOR
            )
            assert again.status_code == 200, again.text
            await reader.wait_for(
                lambda _: len(of_type(reader, ReportDelivered)) == 2, what="the redelivery"
            )
            redelivered = of_type(reader, ReportDelivered)[-1]
            assert (redelivered.report_id, redelivered.attempts) == ("RPT-B", 1)
            # Given up and sent again, the report stays in the trace that issued it.
            [(_, trace_b)] = traced(reader, AlertRaised)
            assert trace_b not in (None, REPORT_TRACE)
            assert [tid for _, tid in traced(reader, ReportDeliveryFailed)] == [trace_b]
            assert traced(reader, ReportDelivered)[-1][1] == trace_b
            assert (
                await notify.client.post(f"/deliveries/{stored['_id']}/redeliver", headers=OPERATOR)
            ).status_code == 409

            # Notices: the patient hears of the appointment, the referrer of the return; a
            # query about a referral notify has not seen yet waits for its referrer.
            booked = AppointmentBooked.model_validate(
                {
                    "referral_id": ref_a,
                    "occurred_at": routine_a.occurred_at,
                    "appointment": {
                        "provider_ods": "RXA01",
                        "site_id": "main",
                        "slot_id": "slot-1",
                        "start": "2026-03-10T09:00:00Z",
                        "end": "2026-03-10T09:10:00Z",
                    },
                    "booked_by": "patient",
                    "priority": "routine",
                    "modality": "XR",
                    "examination_code": "XCHES",
                    "wait_seconds": 3600,
                    "within_target": True,
                }
            )
            returned = VettingReturned(
                referral_id=ref_a,
                occurred_at=routine_a.occurred_at,
                reason="not_indicated",
                advice="Try physiotherapy first.",
                decided_by="R1234",
            )
            queried = VettingQueried(
                referral_id=ref_c,
                occurred_at=routine_a.occurred_at,
                query_id="q-1",
                question="Any weight loss?",
                decided_by="R1234",
            )
            await send(
                kafka,
                to_record(
                    booked, topic=topics.BOOKING, source="/tests", trace=traceparent(BOOKING_TRACE)
                ),
            )
            await publish(kafka, [(returned, topics.VETTING), (queried, topics.VETTING)])
            await reader.wait_for(
                lambda _: (
                    bool(of_type(reader, PatientNotified))
                    and len(of_type(reader, ReferrerNotified)) == 1
                ),
                what="a patient and a referrer notice",
            )
            assert [
                (n.referral_id, n.notice, n.channel) for n in of_type(reader, PatientNotified)
            ] == [(ref_a, "appointment_booked", "file")]
            # The message worker told the patient in the trace of the booking.
            assert [tid for _, tid in traced(reader, PatientNotified)] == [BOOKING_TRACE]

            async def query_tried() -> bool:
                job = await parts.repository.messages.items.find_one(
                    {"referral_id": ref_c, "channel": "referrer"}
                )
                return bool(job and job["attempts"] >= 1 and job["last_error"] == "ReferrerUnknown")

            tried: Callable[[], bool | Awaitable[bool]] = query_tried
            await wait_until(tried, message="the query notice was tried")
            await publish(
                kafka, [(referral_submitted(ref_c, referrer_id="G7654321"), topics.REFERRAL)]
            )
            await reader.wait_for(
                lambda _: len(of_type(reader, ReferrerNotified)) == 2,
                what="the waiting query notice",
            )
            told = Counter((n.referral_id, n.notice) for n in of_type(reader, ReferrerNotified))
            assert told == Counter({(ref_a, "returned"): 1, (ref_c, "queried"): 1})
            to_referrers = parts.channels["referrer"].read()
            assert {
                (m["referral_id"], m["to"]["person"], m["to"]["organisation"]) for m in to_referrers
            } == {
                (ref_a, "G1234567", "A81001"),
                (ref_c, "G7654321", "A81001"),
            }
            # The file channels never write the patient's NHS number.
            assert ref_a in (tmp_path / "channels" / "patient.jsonl").read_text()
            for channel in ("patient", "referrer", "alert"):
                written = (tmp_path / "channels" / f"{channel}.jsonl").read_text()
                assert submitted_a.nhs_number not in written
