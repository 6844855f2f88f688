"""Alerts climb the ladder on an injected clock, once per level, across a restart; an
acknowledgement stops them; an addendum is delivered as a change and reopens acknowledgement.

Reports go to the local practice inbox mounted on the notify service itself (as in the
embedded run), so the service is served on a port chosen before its config is written.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from pathway_schemas import new_referral_id, topics
from pathway_schemas.events import (
    AlertEscalated,
    AlertRaised,
    ReportAcknowledged,
    ReportDelivered,
)
from services.common.clock import LONDON, FixedClock
from services.notify.main import create_app
from services.notify.settings import Settings
from tests.harness import TopicReader, free_port, publish
from tests.helpers import wait_until
from tests.unit.notify.builders import (
    notify_config,
    referral_submitted,
    report_addended,
    report_issued,
)

pytestmark = pytest.mark.integration

PRACTICE_A = {"X-API-Key": "dev-practice-a81001"}
PRACTICE_B = {"X-API-Key": "dev-practice-b82002"}
# Monday 2 March 2026, 10:00 GMT.
T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


@contextlib.asynccontextmanager
async def serve(app: FastAPI, port: int) -> AsyncIterator[httpx.AsyncClient]:
    """Serve on a given port (the inbox endpoints in the config point at it) until done."""
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:

        async def ready() -> bool:
            if task.done():
                task.result()
            try:
                return (await client.get("/readyz")).status_code == 200
            except httpx.TransportError:
                return False

        check: Callable[[], bool | Awaitable[bool]] = ready
        try:
            await wait_until(check, timeout=60, message="notify ready")
            yield client
        finally:
            server.should_exit = True
            await task


def of_type(reader: TopicReader, kind: type[Any]) -> list[Any]:
    return [r.event for r in reader.events() if isinstance(r.event, kind)]


async def sweeps_pass(app: FastAPI, reader: TopicReader, count: int = 2) -> None:
    """Let the escalation worker sweep `count` more times at the current clock."""
    worker = app.state.notify.escalations
    target = worker.sweeps + count
    await wait_until(lambda: worker.sweeps >= target, timeout=10, message="escalation sweeps")
    await reader.poll()


def traced(reader: TopicReader, kind: type[Any]) -> list[tuple[Any, str | None]]:
    """Events of a type, each with the trace id of its `traceparent` header."""
    found = []
    for received in reader.events():
        if isinstance(received.event, kind):
            parts = received.envelope.trace.get("traceparent", "").split("-")
            found.append((received.event, parts[1] if len(parts) == 4 else None))
    return found


def escalations(reader: TopicReader) -> list[tuple[str, int, str]]:
    return [(e.alert_id, e.level, e.recipient_role) for e in of_type(reader, AlertEscalated)]


async def test_critical_alert_escalates_each_level_once_at_its_time_across_a_restart(
    kafka: str, service_settings: Any, tmp_path: Path
) -> None:
    port = free_port()
    inbox = f"http://127.0.0.1:{port}/inbox"
    config = notify_config(
        tmp_path / "notify.json",
        {"A81001": f"{inbox}/A81001/reports", "B82002": f"{inbox}/B82002/reports"},
        delivery={"max_attempts": 3, "initial_s": 0.05, "max_s": 0.1},
    )
    settings = service_settings(
        Settings,
        "notify",
        config_file=config,
        channel_dir=tmp_path / "channels",
        worker_interval_s=0.05,
        gauges_interval_s=0.05,
    )
    clock = FixedClock(T0)
    referral, other, third_referral = new_referral_id(), new_referral_id(), new_referral_id()
    critical = report_issued(
        referral_id=referral, report_id="RPT-1", finding_flag="critical", occurred_at=T0
    )
    urgent = report_issued(
        referral_id=other, report_id="RPT-2", finding_flag="urgent", occurred_at=T0
    )
    unexpected = report_issued(
        referral_id=third_referral,
        report_id="RPT-3",
        finding_flag="unexpected_significant",
        occurred_at=T0,
    )

    async with TopicReader(kafka, topics.NOTIFICATION) as reader:
        first = create_app(settings, clock=clock)
        async with serve(first, port) as client:
            await publish(kafka, [(referral_submitted(referral), topics.REFERRAL)])
            await wait_until(lambda: first.state.notify.repository.referral(referral), timeout=30)
            await publish(
                kafka,
                [(critical, topics.REPORT), (urgent, topics.REPORT), (unexpected, topics.REPORT)],
            )
            await reader.wait_for(
                lambda _: (
                    len(of_type(reader, AlertRaised)) == 3
                    and len(of_type(reader, ReportDelivered)) == 3
                ),
                what="three alerts raised and three reports delivered",
            )
            raised = {a.report_id: a for a in of_type(reader, AlertRaised)}
            assert raised["RPT-1"].recipient_role == "requesting_gp"
            assert raised["RPT-1"].acknowledge_by == T0 + timedelta(hours=1)
            assert raised["RPT-2"].acknowledge_by == T0 + timedelta(hours=24)
            critical_alert = raised["RPT-1"].alert_id

            # The practice inbox got the report, signed, with a receipt.
            received = (await client.get("/inbox/A81001", headers=PRACTICE_A)).json()
            assert {(i["report_id"], i["change"], i["finding_flag"]) for i in received} == {
                ("RPT-1", False, "critical"),
                ("RPT-2", False, "urgent"),
                ("RPT-3", False, "unexpected_significant"),
            }
            assert (await client.get("/inbox/A81001", headers=PRACTICE_B)).status_code == 403

            # The urgent alert is acknowledged in time: it must never escalate.
            ack = await client.post(
                "/reports/RPT-2/acknowledge",
                json={"acknowledged_by": "G1234567", "action": "Referred on the two-week pathway"},
                headers=PRACTICE_A,
            )
            assert ack.status_code == 200, ack.text
            assert ack.json()["already_acknowledged"] is False
            repeat = await client.post("/reports/RPT-2/acknowledge", json={}, headers=PRACTICE_A)
            assert repeat.json()["already_acknowledged"] is True
            assert repeat.json()["acknowledged_by"] == "G1234567"
            other_practice = await client.post(
                "/reports/RPT-1/acknowledge", json={}, headers=PRACTICE_B
            )
            assert other_practice.status_code == 403
            unknown = await client.post("/reports/NOPE/acknowledge", json={}, headers=PRACTICE_A)
            assert unknown.status_code == 404

            # A minute before its window closes, nothing; at the minute, the duty clinician.
            clock.advance(timedelta(minutes=59))
            await sweeps_pass(first, reader)
            assert escalations(reader) == []
            clock.advance(timedelta(minutes=1))
            await reader.wait_for(lambda _: len(escalations(reader)) == 1, what="level 1")
            assert escalations(reader) == [(critical_alert, 1, "practice_duty_clinician")]
            assert of_type(reader, AlertEscalated)[0].acknowledge_by == T0 + timedelta(hours=2)

        # A restart between levels, with level 2 falling due while the service is down: the
        # new service (same database, same clock) fires it once and repeats nothing.
        clock.advance(timedelta(hours=1))
        # Two replicas from here on: each level still happens once, whichever gets there first.
        second = create_app(settings, clock=clock)
        third = create_app(settings, clock=clock)
        async with serve(second, port) as client, serve(third, free_port()):
            await reader.wait_for(lambda _: len(escalations(reader)) == 2, what="level 2")
            assert of_type(reader, AlertEscalated)[1].acknowledge_by == T0 + timedelta(hours=3)
            # The top of the ladder is told once and stays told; the acknowledged one never moves.
            clock.advance(timedelta(hours=30))
            await sweeps_pass(second, reader, count=3)
            assert escalations(reader) == [
                (critical_alert, 1, "practice_duty_clinician"),
                (critical_alert, 2, "radiology_lead"),
            ]
            metrics = (await client.get("/metrics")).text
            assert 'pathway_alerts_open{finding_flag="critical",level="2"} 1.0' in metrics
            assert 'pathway_alerts_overdue{finding_flag="critical"} 1.0' in metrics
            assert 'pathway_alerts_open{finding_flag="urgent",level="0"} 0.0' in metrics

            # Each rung was alerted once on the alert channel, the GP by name.
            alert_channel = second.state.notify.channels["alert"]

            def sent() -> list[tuple[str, str, str | None]]:
                return [
                    (m["to"]["role"], m["to"]["organisation"], m["to"]["person"])
                    for m in alert_channel.read()
                    if "RPT-1" in m["subject"]
                ]

            await wait_until(lambda: len(sent()) >= 3, message="three alert messages")
            assert sent() == [
                ("requesting_gp", "A81001", "G1234567"),
                ("practice_duty_clinician", "A81001", None),
                ("radiology_lead", "RXA01", None),
            ]

            # The GP acknowledges from the practice inbox.
            received = (await client.get("/inbox/A81001", headers=PRACTICE_A)).json()
            receipt = next(i["receipt_id"] for i in received if i["report_id"] == "RPT-1")
            done = await client.post(
                f"/inbox/A81001/reports/{receipt}/acknowledge",
                json={"action": "Patient called in today"},
                headers=PRACTICE_A,
            )
            assert done.status_code == 200, done.text
            await reader.wait_for(
                lambda _: len(of_type(reader, ReportAcknowledged)) == 2, what="acknowledgement"
            )
            status = (await client.get("/reports/RPT-1", headers=PRACTICE_A)).json()
            assert status["open_acknowledgements"] == 0
            assert [(a["state"], a["next_escalation_at"]) for a in status["alerts"]] == [
                ("acknowledged", None)
            ]

            # An addendum after delivery: delivered as a change, owed its own acknowledgement.
            addendum = report_addended(critical, occurred_at=clock.now())
            await publish(kafka, [(addendum, topics.REPORT)])
            await reader.wait_for(
                lambda _: any(d.addendum_id == "ADD-1" for d in of_type(reader, ReportDelivered)),
                what="the addendum delivered",
            )
            received = (await client.get("/inbox/A81001", headers=PRACTICE_A)).json()
            change = next(i for i in received if i["addendum_id"] == "ADD-1")
            assert change["change"] is True
            assert change["status"] == "appended"
            assert change["texts"][0] == addendum.text
            status = (await client.get("/reports/RPT-1", headers=PRACTICE_A)).json()
            assert status["open_acknowledgements"] == 1
            await reader.wait_for(
                lambda _: len(of_type(reader, AlertRaised)) == 4, what="the addendum's alert"
            )
            addendum_alert = of_type(reader, AlertRaised)[-1]
            assert addendum_alert.finding_flag == "unexpected_significant"
            # Raised on Tuesday 3 March 18:00 GMT: five working days is Tuesday 10 March 18:00.
            assert addendum_alert.acknowledge_by == datetime(2026, 3, 10, 18, 0, tzinfo=LONDON)

            again = await client.post(
                "/reports/RPT-1/acknowledge",
                json={"addendum_id": "ADD-1", "action": "CT chest requested"},
                headers=PRACTICE_A,
            )
            assert again.status_code == 200, again.text
            await reader.wait_for(
                lambda _: len(of_type(reader, ReportAcknowledged)) == 3, what="re-acknowledgement"
            )
            assert [(a.report_id, a.addendum_id) for a in of_type(reader, ReportAcknowledged)] == [
                ("RPT-2", None),
                ("RPT-1", None),
                ("RPT-1", "ADD-1"),
            ]
            status = (await client.get("/reports/RPT-1", headers=PRACTICE_A)).json()
            assert status["open_acknowledgements"] == 0
            # Ten days on: the addendum's alert was acknowledged in time and never moves; the
            # unexpected finding of RPT-3, due on Monday 9 March 10:00 (five working days after
            # it was raised), moves one rung once, between two replicas, and waits there.
            clock.advance(timedelta(days=10))
            await sweeps_pass(second, reader, count=3)
            await sweeps_pass(third, reader, count=3)
            unexpected_alert = raised["RPT-3"].alert_id
            assert escalations(reader) == [
                (critical_alert, 1, "practice_duty_clinician"),
                (critical_alert, 2, "radiology_lead"),
                (unexpected_alert, 1, "practice_duty_clinician"),
            ]
            assert of_type(reader, AlertEscalated)[2].acknowledge_by == datetime(
                2026, 3, 16, 10, 0, tzinfo=UTC
            )
            metrics = (await client.get("/metrics")).text
            assert 'pathway_acknowledgement_seconds_count{finding_flag="critical"} 1.0' in metrics
            assert 'pathway_alerts_open{finding_flag="critical",level="2"} 0.0' in metrics

            # Each report's hops stay in the trace of the event that issued it: the delivery
            # and escalation workers (across the restart) and the practice's acknowledgements,
            # which come later in calls of their own, continue it.
            trace = {alert.alert_id: tid for alert, tid in traced(reader, AlertRaised)}
            issued = {
                ("RPT-1", None): trace[critical_alert],
                ("RPT-2", None): trace[raised["RPT-2"].alert_id],
                ("RPT-3", None): trace[unexpected_alert],
                ("RPT-1", "ADD-1"): trace[addendum_alert.alert_id],
            }
            assert None not in issued.values()
            assert len(set(issued.values())) == 4
            assert {
                (d.report_id, d.addendum_id): tid for d, tid in traced(reader, ReportDelivered)
            } == issued
            assert [(e.alert_id, tid) for e, tid in traced(reader, AlertEscalated)] == [
                (critical_alert, issued["RPT-1", None]),
                (critical_alert, issued["RPT-1", None]),
                (unexpected_alert, issued["RPT-3", None]),
            ]
            assert [
                ((a.report_id, a.addendum_id), tid) for a, tid in traced(reader, ReportAcknowledged)
            ] == [
                (key, issued[key]) for key in (("RPT-2", None), ("RPT-1", None), ("RPT-1", "ADD-1"))
            ]
