"""The timeline is written outside transactions, guarded by the document's revision.

Timeline writes race with each other (replicas, redeliveries) and with the request service's
own commands (cancel, answer, amend: transactions on the same document). Whatever the
interleaving, every event ends on the timeline exactly once, and no command's change is lost.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import nhs_number
import pytest
from prometheus_client import CollectorRegistry

from pathway_schemas import topics
from pathway_schemas.envelope import from_record, to_record
from pathway_schemas.events import ReferralCancelled, ReferralSubmitted, VettingQueued
from services.common.clock import FixedClock
from services.common.messaging import Delivery
from services.request.commands import Referrals
from services.request.guidance import GuidanceRules
from services.request.main import create_app
from services.request.metrics import RequestMetrics
from services.request.registry import PracticeRegistry
from services.request.repository import ReferralRepository
from services.request.settings import Settings
from tests.harness import running_service

pytestmark = pytest.mark.integration

PRACTICE_A = {"X-API-Key": "dev-practice-a81001"}
START = datetime(2026, 10, 23, 9, 0, tzinfo=UTC)
EVENTS = 24


def delivery_of(event: VettingQueued) -> tuple[VettingQueued, Delivery]:
    record = to_record(event, topic=topics.VETTING, source="/imaging/vetting")
    received = from_record(record.headers, record.value, topic=record.topic, key=record.key)
    assert isinstance(received.event, VettingQueued)
    return received.event, Delivery(
        envelope=received.envelope, topic=topics.VETTING, partition=0, offset=0
    )


async def test_racing_timeline_writes_and_a_cancel_keep_every_event_once(
    kafka: str, service_settings: Any
) -> None:
    settings = service_settings(Settings, "request")
    clock = FixedClock(START)
    app = create_app(settings, clock=clock)
    async with running_service(app) as svc:
        response = await svc.client.post(
            "/referrals",
            json={
                "nhs_number": str(nhs_number.generate(for_region=nhs_number.REGION_SYNTHETIC)[0]),
                "referrer_id": "G1234567",
                "examination_code": "XCHES",
                "clinical_question": "Cough for six weeks in a smoker",
                "priority": "routine",
            },
            headers={**PRACTICE_A, "Idempotency-Key": "race-0001"},
        )
        assert response.status_code == 201, response.text
        rid = response.json()["referral_id"]

        # A second writer on the same database, as a replica would be.
        runtime = svc.runtime
        referrals = Referrals(
            runtime,
            ReferralRepository(runtime.store.db),
            PracticeRegistry.load(settings.config_dir / settings.practices_file),
            GuidanceRules.load(settings.config_dir / settings.guidance_rules_file),
            RequestMetrics.create(CollectorRegistry()),
            duplicate_window_days=settings.duplicate_window_days,
        )
        deliveries = [
            delivery_of(
                VettingQueued(
                    referral_id=rid,
                    occurred_at=START + timedelta(seconds=n),
                    priority="routine",
                    modality="XR",
                    why="needs a clinician",
                )
            )
            for n in range(EVENTS)
        ]
        cancel = svc.client.post(
            f"/referrals/{rid}/cancel",
            json={"reason": "no_longer_needed", "cancelled_by": "G1234567"},
            headers=PRACTICE_A,
        )
        # Every event twice (a redelivery racing its original), and the cancel among them.
        first = asyncio.gather(*(referrals.record(e, d) for e, d in deliveries))
        repeats = asyncio.gather(*(referrals.record(e, d) for e, d in reversed(deliveries)))
        applied, cancelled, repeated = await asyncio.gather(first, cancel, repeats)
        assert cancelled.status_code == 200, cancelled.text
        outcomes = [*applied, *repeated]
        assert sum(1 for o in outcomes if o.value) == EVENTS
        assert sum(1 for o in outcomes if o.duplicate) == EVENTS

        document = (await svc.client.get(f"/referrals/{rid}", headers=PRACTICE_A)).json()
        kinds = [e["event_type"] for e in document["timeline"]]
        assert kinds.count(VettingQueued.event_type) == EVENTS
        assert kinds.count(ReferralCancelled.event_type) == 1
        assert kinds.count(ReferralSubmitted.event_type) == 1
        ids = [e["event_id"] for e in document["timeline"]]
        assert len(set(ids)) == len(ids)
        assert {d.event_id for _, d in deliveries} <= set(ids)
        assert document["state"] == "cancelled"

        # Applied again later: nothing changes.
        again = [await referrals.record(e, d) for e, d in deliveries]
        assert all(o.duplicate for o in again)
        after = (await svc.client.get(f"/referrals/{rid}", headers=PRACTICE_A)).json()
        assert after["timeline"] == document["timeline"]
