"""Open access on the real broker and store: plain X-ray passes, the exceptions wait for a person."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pathway_schemas import new_referral_id, topics
from pathway_schemas.events import VettingAccepted, VettingQueued
from services.common.clock import FixedClock
from services.vetting.main import create_app
from services.vetting.settings import Settings
from tests.harness import TopicReader, publish, running_service
from tests.helpers import wait_until
from tests.unit.vetting.builders import T0, submitted

CLINICIAN = {"X-API-Key": "dev-vetting-clinician"}


async def test_open_access_accepts_plain_xray_unless_guidance_or_a_duplicate_says_otherwise(
    kafka: str, service_settings: Any
) -> None:
    clock = FixedClock(T0 + timedelta(minutes=10))
    chest = submitted("XCHES", priority="urgent", occurred_at=T0)
    not_indicated = submitted(
        "XCHES", guidance={"outcome": "not_indicated", "rule_id": "EX-CHEST-1"}
    )
    specialist = submitted("XKNEL", guidance={"outcome": "specialist_only"})
    duplicate = submitted("XKNER", duplicate_of=(new_referral_id(),))
    not_listed = submitted("CCHES")
    queued = [not_indicated, specialist, duplicate, not_listed]

    app = create_app(service_settings(Settings, "vetting"), clock=clock)
    async with running_service(app) as svc, TopicReader(kafka, topics.VETTING) as reader:
        await publish(kafka, [(e, topics.REFERRAL) for e in (chest, *queued)])
        await reader.wait_for(lambda _: len(reader.events()) >= 5, what="five vetting events")

        events = {r.envelope.subject: r.event for r in reader.events()}
        accepted = events[chest.referral_id]
        assert isinstance(accepted, VettingAccepted)
        assert (accepted.automatic, accepted.walk_in_allowed, accepted.decided_by) == (
            True,
            True,
            "open-access-rule",
        )
        assert accepted.referral_received_at == chest.occurred_at
        assert accepted.occurred_at == clock.now()
        assert (accepted.priority, accepted.modality, accepted.examination_code) == (
            "urgent",
            "XR",
            "XCHES",
        )
        assert accepted.nhs_number == chest.nhs_number
        assert accepted.practice_ods == chest.practice_ods
        assert all(isinstance(events[e.referral_id], VettingQueued) for e in queued)

        response = await svc.client.get("/worklist", headers=CLINICIAN)
        assert response.status_code == 200, response.text
        page = response.json()
        listed = {item["referral_id"]: item for item in page["items"]}
        assert set(listed) == {e.referral_id for e in queued}
        assert listed[not_indicated.referral_id]["guidance"]["outcome"] == "not_indicated"
        assert listed[not_indicated.referral_id]["guidance"]["rule_id"] == "EX-CHEST-1"
        assert listed[specialist.referral_id]["why"] == "guidance: specialist only"
        assert listed[duplicate.referral_id]["duplicate"] is True
        assert listed[duplicate.referral_id]["duplicate_of"] == list(duplicate.duplicate_of)
        assert listed[not_listed.referral_id]["why"] == "not an open-access examination"

        item = (await svc.client.get(f"/worklist/{chest.referral_id}", headers=CLINICIAN)).json()
        assert item["state"] == "accepted"
        assert item["decision"]["automatic"] is True
        assert [h["kind"] for h in item["history"]] == ["submitted", "accepted"]

        registry = svc.runtime.metrics.registry
        labels = {"outcome": "accepted", "reason": "open_access"}
        assert registry.get_sample_value("pathway_vetting_decisions_total", labels) == 1
        # Ten minutes from submission to the rule's decision: the consumer's lag counts as vetting time.
        assert (
            registry.get_sample_value(
                "pathway_vetting_seconds_sum", {"priority": "urgent", "outcome": "accepted"}
            )
            == 600
        )

        # The same submission published again (under a new event id) changes nothing.
        await publish(kafka, [(chest, topics.REFERRAL)])
        await wait_until(
            lambda: (
                registry.get_sample_value(
                    "pathway_events_handled_total",
                    {"service": "vetting", "event_type": chest.event_type, "outcome": "applied"},
                )
                == 6
            ),
            message="the redelivery handled",
        )
        assert registry.get_sample_value("pathway_vetting_decisions_total", labels) == 1
